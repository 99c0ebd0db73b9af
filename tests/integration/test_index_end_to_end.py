"""The installed programs: ``twistd mirror-index``, ``twistd content-server --index`` and
``mirror-where``, as a user runs them."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from mirror.hashing import digest_of
from tests.integration.daemons import BIN, Daemon, content_server
from tests.integration.waiting import poll

MIRROR_WHERE = str(BIN / "mirror-where")


def where(index: Daemon, what: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MIRROR_WHERE, "-i", f"127.0.0.1:{index.port}", what, *extra],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


def holders(index: Daemon, what: str) -> list[dict]:
    done = where(index, what, "--json")
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)["holders"]


def index_daemon(workdir: Path, db: str, *extra: str, port: int = 0) -> Daemon:
    return Daemon("mirror-index", ["--db", db, *extra], workdir).start(port=port)


def test_register_query_withdraw_and_survive_a_restart(tmp_path: Path, daemons) -> None:
    export = tmp_path / "export"
    (export / "dir").mkdir(parents=True)
    (export / "dir" / "a").write_bytes(b"hello")
    (export / "big").write_bytes(b"x" * 300_000)
    other = tmp_path / "other"
    other.mkdir()
    (other / "b").write_bytes(b"b")
    db = str(tmp_path / "index.db")
    index = daemons(index_daemon, tmp_path, db, "--lease", "4")
    server = daemons(content_server, export, tmp_path, "--index", f"127.0.0.1:{index.port}",
                     "--rescan", "0.2", "--state-dir", str(tmp_path / "state"))
    digest = digest_of(b"hello").hex()
    address = f"127.0.0.1:{server.port}"

    # Path, size and mtime first; the digest follows from the background hasher.
    poll(lambda: [h["digest"] for h in holders(index, "dir/a")] == [digest], 15,
         "dir/a and its digest at the index")
    text = where(index, "dir")
    assert text.returncode == 0, text.stderr
    assert f"dir/a\t{address}\t5\t{digest}\trenewed" in text.stdout
    assert "expires in" in text.stdout
    assert [h["path"] for h in holders(index, digest)] == ["dir/a"]
    poll(lambda: holders(index, "big")[0]["digest"] == digest_of(b"x" * 300_000).hex(), 15,
         "the big file's digest")

    # A change in the export is picked up by the next walk, incrementally.
    (export / "dir" / "new").write_bytes(b"new")
    (export / "big").unlink()
    poll(lambda: [h["path"] for h in holders(index, ".")] == ["dir/a", "dir/new"], 15,
         "the change at the index")

    # A node that stops cleanly withdraws: gone at once, not after its lease.
    second = content_server(other, tmp_path, "--index", f"127.0.0.1:{index.port}",
                            "--rescan", "0.2")
    poll(lambda: holders(index, "b"), 15, "the second node's file")
    second.stop()
    assert holders(index, "b") == []

    # The index dies and comes back on the same database: it still answers for the node...
    index.kill(signal.SIGKILL)
    index = daemons(index_daemon, tmp_path, db, "--lease", "4", port=index.port)
    assert [(h["path"], h["address"]) for h in holders(index, "dir")] == [
        ("dir/a", address), ("dir/new", address)]
    # ...the node reconnects by itself and, as the index still knew it, sends only changes:
    # it made one full listing in its life.
    (export / "dir" / "after").write_bytes(b"after")
    poll(lambda: "dir/after" in [h["path"] for h in holders(index, "dir")], 15,
         "the node to reconnect and send its change")
    assert server.log_text().count(": registered ") == 1, server.log_text()

    # A node that crashes is forgotten once its lease is over.
    server.kill(signal.SIGKILL)
    poll(lambda: holders(index, ".") == [], 15, "the crashed node's lease to run out")
    assert "no node holds" in where(index, "dir/a").stderr


def test_mirror_where_errors(tmp_path: Path, unused_port: int) -> None:
    done = subprocess.run([MIRROR_WHERE, "-i", f"127.0.0.1:{unused_port}", "../x"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "bad path" in done.stderr
    refused = subprocess.run([MIRROR_WHERE, "-i", f"127.0.0.1:{unused_port}", "x"],
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1 and "refused" in refused.stderr.lower()


def test_index_daemon_refuses_bad_options(tmp_path: Path) -> None:
    twistd = str(BIN / "twistd")
    for args, message in ((["mirror-index"], "--db PATH"),
                          (["mirror-index", "--db", str(tmp_path / "no" / "x.db")],
                           "does not exist"),
                          (["content-server", "--root", str(tmp_path), "--index", "h:1",
                            "--listen", "tcp:0"], "needs --advertise")):
        done = subprocess.run([twistd, "-n", "--pidfile=", *args], capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 2 and message in done.stderr, done.stderr


def test_two_index_daemons_share_one_postgresql(tmp_path: Path, daemons,
                                                postgres_url: str) -> None:
    first = daemons(index_daemon, tmp_path, postgres_url)
    second = daemons(index_daemon, tmp_path, postgres_url)
    export = tmp_path / "export"
    export.mkdir()
    (export / "f").write_bytes(b"f")
    daemons(content_server, export, tmp_path, "--index", f"127.0.0.1:{first.port}")
    poll(lambda: [h["digest"] for h in holders(second, "f")] == [digest_of(b"f").hex()], 15,
         "the registration made at one index, seen at the other")
