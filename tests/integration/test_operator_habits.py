"""Issue 12's bandwidth limit and operator habits, with the installed programs: mirror-init
--bwlimit bounds a job's rate, --connect reaches a mirror server on a UNIX socket, and the
mirror server's log has no "Starting factory" lines per content connection."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.daemons import Daemon, content_server, mirror_init, mirror_server
from tests.integration.waiting import poll

BIG = 384 * 1024
RATE = 128 * 1024


class Rig:
    def __init__(self, base: Path) -> None:
        self.src = base / "src"
        (self.src / "small").mkdir(parents=True)
        for i in range(5):
            (self.src / "small" / f"f{i}").write_bytes(os.urandom(1000 + i))
        (self.src / "big").write_bytes(os.urandom(BIG))
        self.mirror = base / "mirror"
        # Short: a UNIX socket path is at most 107 bytes.
        self.sock_dir = tempfile.mkdtemp(prefix="mirror-sock-")
        self.sock = os.path.join(self.sock_dir, "m.sock")
        self.content: Daemon = content_server(self.src, base / "logs")
        self.mirror_server: Daemon = mirror_server(self.mirror, base / "logs",
                                                   "--listen", f"unix:{self.sock}")

    def spec(self, path: str) -> str:
        return f"127.0.0.1:{self.content.port}:{path}"

    def stop(self) -> None:
        self.mirror_server.stop()
        self.content.stop()
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        os.rmdir(self.sock_dir)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    rig = Rig(tmp_path_factory.mktemp("habits"))
    yield rig
    rig.stop()


def factory_lines(log: str) -> list[str]:
    return [line for line in log.splitlines()
            if "Starting factory" in line or "Stopping factory" in line]


def test_connect_unix_socket_and_a_quiet_log(rig: Rig) -> None:
    before = factory_lines(rig.mirror_server.log_text())
    done = rig.mirror_server.log_text().count(" done: ")
    result = mirror_init("--connect", f"unix:{rig.sock}", "--json", "-s", rig.spec("small"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["totals"]["files"] == 5
    for i in range(5):
        got = (rig.mirror / f"127.0.0.1_{rig.content.port}" / "small" / f"f{i}").read_bytes()
        assert got == (rig.src / "small" / f"f{i}").read_bytes()
    poll(lambda: rig.mirror_server.log_text().count(" done: ") > done, 10, "the job's end")
    log = rig.mirror_server.log_text()
    # The listening ports' own lines at start-up only; none per content connection.
    assert factory_lines(log) == before, log
    assert "job 1: 1 source(s)" in log


def test_bwlimit_bounds_the_rate(rig: Rig) -> None:
    result = mirror_init("-n", "127.0.0.1", "-p", str(rig.mirror_server.port), "--json",
                         "--bwlimit", "128K", "-s", rig.spec("big"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["totals"]["bytes"] == BIG
    # The server's own measure of the source. Every byte it handed on was paid for first
    # (burst: one 16 KiB read), so a slow machine only adds to this: it cannot fail for it.
    elapsed = report["sources"][0]["elapsed"]
    assert elapsed >= (BIG - 16 * 1024) / RATE, report
