"""Serving mirrors and multi-source download with the installed daemons (issue 10).

An origin content server and three serving mirrors (``--serve``) hold a big file, the
mirrors having pulled it from the origin; one mirror's copy is then corrupted on disk, and a
fourth mirror fetches the file from all four at once. One holder is SIGKILLed while the
transfer runs. The file still arrives verified, and mirror-init's report says how many
bytes each holder served.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

from tests.integration.conftest import free_port
from tests.integration.daemons import MIRROR_INIT, Daemon, content_server, mirror_init
from tests.integration.waiting import poll

MiB = 1 << 20
SIZE = 12 * MiB + 4321


def serving_mirror(mirror_dir: Path, logs: Path, *extra: str) -> tuple[Daemon, int]:
    """A mirror server whose control port and --serve port are both known."""
    mirror_dir.mkdir(parents=True, exist_ok=True)
    control, serve = free_port(), free_port()
    daemon = Daemon("mirror-server", ["--mirror-dir", str(mirror_dir), "--no-fsync",
                                      "--serve", f"tcp:{serve}:interface=127.0.0.1", *extra],
                    logs).start(port=control)
    daemon.port = control  # the log also names the --serve port
    return daemon, serve


def pull(control: int, spec: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([MIRROR_INIT, "-n", "127.0.0.1", "-p", str(control), "-s", spec,
                             "--json", *extra], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen[str]) -> dict:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)
    return json.loads(out)


def test_big_file_from_every_holder_one_killed_one_lying(tmp_path: Path, daemons) -> None:
    logs = tmp_path / "logs"
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(10).randbytes(SIZE)
    (src / "big").write_bytes(data)
    origin = daemons(content_server, src, logs)
    top = f"127.0.0.1_{origin.port}"
    spec = f"127.0.0.1:{origin.port}:."
    tier1 = [serving_mirror(tmp_path / name, logs, "--max-rate", rate)
             for name, rate in (("a", "4M"), ("b", "1M"), ("c", "0"))]
    for daemon, _ in tier1:
        daemons(lambda d: d, daemon)
    # The tier-1 mirrors pull from the origin like any mirror.
    for proc in [pull(daemon.port, spec) for daemon, _ in tier1]:
        assert finished(proc)["ok"]
    # Another mirror can mirror from a serving mirror like from a content server.
    (a, a_serve), (b, b_serve), (c, c_serve) = tier1
    copy = mirror_init("-n", "127.0.0.1", "-p", str(b.port), "-s",
                       f"127.0.0.1:{a_serve}:{top}", "--json")
    assert json.loads(copy.stdout)["totals"]["files"] == 1, copy.stderr
    assert (tmp_path / "b" / f"127.0.0.1_{a_serve}" / top / "big").read_bytes() == data
    # C's copy rots on disk (same size and mtime): every chunk it serves is bad.
    rotten = tmp_path / "c" / top / "big"
    st = rotten.stat()
    with open(rotten, "r+b") as f:
        for offset in range(0, SIZE, MiB):
            f.seek(offset + 99)
            f.write(b"\xff\xee")
    os.utime(rotten, ns=(st.st_atime_ns, st.st_mtime_ns))
    # The origin now sends at most 4 MiB/s (restarted on its port, the same files).
    origin.stop()
    daemons(lambda d: d, Daemon("content-server", ["--root", str(src), "--max-rate", "4M"],
                                logs).start(port=origin.port))
    d, _ = serving_mirror(tmp_path / "d", logs, "--multi-source-threshold", "1M",
                          *[arg for serve in (a_serve, b_serve, c_serve)
                            for arg in ("--holder", f"127.0.0.1:{serve}")])
    daemons(lambda x: x, d)
    job = pull(d.port, spec)
    try:
        # Once the file's chunks are being fetched (its temporary file exists), B dies.
        poll(lambda: any(n.startswith(".mirror-tmp-") for n in
                         os.listdir(tmp_path / "d" / top)) if (tmp_path / "d" / top).exists()
             else False, 30, "the multi-source transfer to start")
        b.kill()
        report = finished(job)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert report["ok"], report
    assert (tmp_path / "d" / top / "big").read_bytes() == data
    holders = {h["holder"]: h["bytes"] for h in report["sources"][0]["holders"]}
    assert sum(holders.values()) == SIZE, holders
    assert holders[f"127.0.0.1:{origin.port}"] > 0, holders
    assert holders[f"127.0.0.1:{a_serve}"] > 0, holders
    assert f"127.0.0.1:{c_serve}" not in holders, holders  # every chunk it sent was bad
    log = d.log_text()
    assert f"holder 127.0.0.1:{c_serve} sent a bad chunk" in log
    assert f"holder 127.0.0.1:{b_serve} dropped" in log
