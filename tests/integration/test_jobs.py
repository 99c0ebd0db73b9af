"""Jobs that survive a restart, and that mirror-init can leave, find, follow and cancel
(issue 12), from the installed programs: ``twistd mirror-server`` killed with SIGKILL and
started again, ``mirror-init --detach/--attach/--jobs/--cancel``, Ctrl-C."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from tests.integration.conftest import both_transports
from tests.integration.daemons import (
    Daemon,
    content_server,
    interruptible,
    mirror_init,
    mirror_init_command,
    mirror_server,
)
from tests.integration.waiting import poll

#: Big files (above the 256 KiB of a small file): one FETCH each, one at a time with one
#: worker, each after the SPEC's delay, so that a job is mid-way for a while.
SIZE = 300 * 1024
COUNT = 16
DELAY = 0.15


def make_tree(root: Path) -> None:
    tree = root / "tree"
    tree.mkdir(parents=True)
    for i in range(COUNT):
        (tree / f"f{i:02d}.bin").write_bytes(bytes([i]) * SIZE)


def placed(mirror: Path, port: int) -> list[Path]:
    d = mirror / f"127.0.0.1_{port}" / "tree"
    return sorted(p for p in d.iterdir() if p.name.startswith("f")) if d.is_dir() else []


def temporaries(mirror: Path) -> list[Path]:
    return [p for p in mirror.rglob("*") if p.name.startswith(".mirror-tmp-")]


def init(mirror: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return mirror_init("-n", "127.0.0.1", "-p", str(mirror.port), *args, timeout=60)


def start_slow_job_setup(tmp_path: Path, daemons: Callable[..., Daemon], workers: int
                         ) -> tuple[Daemon, Path, Daemon, str]:
    """A content server of `make_tree`, a mirror server with ``workers`` workers, and the
    SPEC of the tree with the `DELAY` that keeps a job mid-way for a while."""
    make_tree(tmp_path / "src")
    content = daemons(content_server, tmp_path / "src", tmp_path / "logs")
    mirror_dir = tmp_path / "mirror"
    server = daemons(mirror_server, mirror_dir, tmp_path / "logs", "--workers", str(workers))
    return content, mirror_dir, server, f"127.0.0.1:{content.port}:tree:{DELAY}"


def interrupt_when(condition: Callable[[], object], mirror: Daemon, *args: str
                   ) -> tuple[int, str, str]:
    """Run mirror-init with ``args``, Ctrl-C it once ``condition`` holds; its status and
    output."""
    proc = subprocess.Popen(mirror_init_command("-n", "127.0.0.1", "-p", str(mirror.port), *args),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    try:
        # Its first line (progress) says it follows the job: a signal before that could
        # come before Python even handles SIGINT.
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "mirror-init printed nothing"
        first = proc.stdout.readline()
        poll(condition, 30, "progress")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        out = first + out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def check_complete(mirror: Path, port: int) -> None:
    for p in placed(mirror, port):
        i = int(p.name[1:3])
        assert p.read_bytes() == bytes([i]) * SIZE, f"{p} is not the complete file"


@both_transports
def test_sigkill_restart_resumes_and_attach_reports(tmp_path: Path, daemons) -> None:
    content, mirror_dir, server, spec = start_slow_job_setup(tmp_path, daemons, workers=1)
    submitted = init(server, "--detach", "-s", spec)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id.isdigit(), submitted.stdout
    # Mid-way, and a journal commit (every 0.5 s at most) after some files were placed.
    poll(lambda: len(placed(mirror_dir, content.port)) >= 4, 30, "files to arrive")
    before = len(placed(mirror_dir, content.port))
    poll(lambda: len(placed(mirror_dir, content.port)) >= before + 4, 30, "a commit")
    server.kill(signal.SIGKILL)
    assert len(placed(mirror_dir, content.port)) < COUNT, "the job was not mid-way"

    restarted = daemons(mirror_server, mirror_dir, tmp_path / "logs", "--workers", "1")
    followed = init(restarted, "--attach", job_id, "--json")
    assert followed.returncode == 0, followed.stderr
    report = json.loads(followed.stdout)
    assert report["job_id"] == job_id and report["ok"] and report["resumed"] == 1
    totals = report["totals"]
    # Every file counted once: transferred before the kill (committed) or after the
    # restart, or skipped (placed after the last commit before the kill).
    assert totals["files"] + totals["skipped"] == COUNT, totals
    assert totals["files"] >= 4, "transfers committed before the kill stay counted"
    assert totals["bytes"] == totals["files"] * SIZE
    assert totals["failed"] == 0
    check_complete(mirror_dir, content.port)
    assert len(placed(mirror_dir, content.port)) == COUNT
    assert temporaries(mirror_dir) == []
    # Once more, as text: the report says why some files count as skipped.
    again = init(restarted, "--attach", job_id)
    assert again.returncode == 0 and "resumed after 1 restart(s)" in again.stdout
    # A restart never reuses an id.
    second = init(restarted, "--detach", "-s", spec)
    assert int(second.stdout) > int(job_id)
    # The state directory is private and never mirrored into.
    state = mirror_dir / ".mirror-state"
    assert (state.stat().st_mode & 0o777) == 0o700
    assert (state / "journal.sqlite").is_file()


def test_resumed_job_keeps_its_delete_and_filters(tmp_path: Path, daemons) -> None:
    # The journal keeps a job's options: after a SIGKILL and a restart, the job still
    # excludes what it excluded and deletes what the source no longer has.
    content, mirror_dir, server, spec = start_slow_job_setup(tmp_path, daemons, workers=1)
    tree = mirror_dir / f"127.0.0.1_{content.port}" / "tree"
    tree.mkdir(parents=True)
    (tree / "old.txt").write_bytes(b"gone at the source")
    submitted = init(server, "--detach", "--delete", "--exclude", "f15.bin", "-s", spec)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    poll(lambda: len(placed(mirror_dir, content.port)) >= 4, 30, "files to arrive")
    server.kill(signal.SIGKILL)
    assert len(placed(mirror_dir, content.port)) < COUNT - 1, "the job was not mid-way"
    assert (tree / "old.txt").exists(), "deleted before the transfers were done"

    restarted = daemons(mirror_server, mirror_dir, tmp_path / "logs", "--workers", "1")
    followed = init(restarted, "--attach", job_id, "--json")
    assert followed.returncode == 0, followed.stderr
    report = json.loads(followed.stdout)
    assert report["ok"] and report["resumed"] == 1, report
    assert [p.name for p in placed(mirror_dir, content.port)] == [
        f"f{i:02d}.bin" for i in range(COUNT - 1)]
    assert not (tree / "old.txt").exists()
    check_complete(mirror_dir, content.port)


@both_transports
def test_detach_jobs_attach_cancel(tmp_path: Path, daemons) -> None:
    content, mirror_dir, server, spec = start_slow_job_setup(tmp_path, daemons, workers=1)
    job_id = init(server, "--detach", "-s", spec).stdout.strip()

    listed = init(server, "--jobs")
    assert listed.returncode == 0
    row = [line.split() for line in listed.stdout.splitlines() if line.startswith(job_id)]
    assert row and row[0][1] == "running", listed.stdout

    # Ctrl-C while attached only detaches: the job goes on.
    status, _, err = interrupt_when(lambda: len(placed(mirror_dir, content.port)) >= 2,
                                    server, "--attach", job_id)
    assert status == 130
    assert f"--attach {job_id}" in err, err
    assert "running" in init(server, "--jobs").stdout

    cancelled = init(server, "--cancel", job_id)
    assert cancelled.returncode == 0 and cancelled.stdout == f"job {job_id} cancelled\n"
    followed = init(server, "--attach", job_id, "--json")
    assert followed.returncode == 1
    report = json.loads(followed.stdout)
    assert report["sources"][0]["errors"] == [{"path": None, "message": "job cancelled"}]
    assert report["totals"]["files"] < COUNT
    assert f"{job_id}  cancelled" in init(server, "--jobs").stdout.replace("   ", "  ")
    again = init(server, "--cancel", job_id)
    assert again.returncode == 1 and "already finished (cancelled)" in again.stderr
    assert init(server, "--attach", "999999").returncode == 1
    assert temporaries(mirror_dir) == []
    check_complete(mirror_dir, content.port)


@both_transports
def test_ctrl_c_cancels_the_job_followed(tmp_path: Path, daemons) -> None:
    content, mirror_dir, server, spec = start_slow_job_setup(tmp_path, daemons, workers=2)
    status, out, err = interrupt_when(lambda: len(placed(mirror_dir, content.port)) >= 2,
                                      server, "-s", spec)
    assert status == 130, err
    assert "interrupted; job 1 cancelled" in err
    assert "job not completed: interrupted; job 1 cancelled" in out
    assert "job cancelled" in out  # the source's error, in the report
    # Nothing partial anywhere: no temporary file left, every placed file complete; and
    # the job stopped (it would otherwise place them all).
    assert temporaries(mirror_dir) == []
    check_complete(mirror_dir, content.port)
    listed = init(server, "--jobs").stdout
    assert "cancelled" in listed, listed
    assert len(placed(mirror_dir, content.port)) < COUNT
    # --timeout cancels too (exit 1): the rest needs more than a second at this delay.
    timed = init(server, "-s", spec, "--timeout", "0.3")
    assert timed.returncode == 1, timed.stderr
    assert "within 0.3 seconds; job 2 cancelled" in timed.stderr
    assert "2   cancelled" in init(server, "--jobs").stdout
    assert temporaries(mirror_dir) == []


class GatedProxy:
    """A TCP proxy to a content server that forwards its answers up to ``limit`` bytes in
    all, then holds them until `release`; it counts the bytes forwarded. (A gate, not a
    rate: the test decides when a transfer is mid-way, whatever the machine's speed.)"""

    def __init__(self, target_port: int, limit: int) -> None:
        self.target_port = target_port
        self.limit = limit
        self.forwarded = 0
        self._lock = threading.Lock()
        self._open = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def release(self) -> None:
        self._open.set()

    def stop(self) -> None:
        self._stopped = True
        self._open.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, server, False),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        try:
            while data := src.recv(65536):
                if answers:
                    with self._lock:
                        room = self.limit - self.forwarded
                    if room < len(data) and not self._open.is_set():
                        if room > 0:
                            dst.sendall(data[:room])
                            self._count(room)
                            data = data[room:]
                        self._open.wait()
                    self._count(len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _count(self, n: int) -> None:
        with self._lock:
            self.forwarded += n


def recorded_prefix(mirror_dir: Path) -> int:
    """The longest verified prefix the journal records (read as another process would)."""
    db = sqlite3.connect(f"file:{mirror_dir / '.mirror-state' / 'journal.sqlite'}?mode=ro",
                         uri=True)
    try:
        row = db.execute("SELECT max(verified) FROM partials").fetchone()
    finally:
        db.close()
    return int(row[0] or 0)


def test_half_fetched_big_file_resumes_from_its_prefix(tmp_path: Path, daemons) -> None:
    size = 12 << 20
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(size)
    (src / "big.iso").write_bytes(data)
    content = daemons(content_server, src, tmp_path / "logs")
    proxy = GatedProxy(content.port, limit=7 << 20)
    try:
        mirror_dir = tmp_path / "mirror"
        server = daemons(mirror_server, mirror_dir, tmp_path / "logs")
        job_id = init(server, "--detach", "-s", f"127.0.0.1:{proxy.port}:.").stdout.strip()
        # Held mid-way; the journal has recorded a good part of what arrived.
        poll(lambda: recorded_prefix(mirror_dir) >= 4 << 20, 30, "a recorded prefix")
        server.kill(signal.SIGKILL)
        verified = recorded_prefix(mirror_dir)
        before = proxy.forwarded
        partials = list((mirror_dir / ".mirror-state" / "partials").iterdir())
        assert len(partials) == 1 and partials[0].stat().st_size >= verified
        proxy.release()

        restarted = daemons(mirror_server, mirror_dir, tmp_path / "logs")
        followed = init(restarted, "--attach", job_id, "--json")
        assert followed.returncode == 0, followed.stderr
        totals = json.loads(followed.stdout)["totals"]
        assert (totals["files"], totals["bytes"]) == (1, size)
    finally:
        proxy.stop()
    assert (mirror_dir / f"127.0.0.1_{proxy.port}" / "big.iso").read_bytes() == data
    # Only what arrived after the last checkpoint was fetched twice (plus the listings).
    fetched_twice = proxy.forwarded - size
    assert fetched_twice <= before - verified + (64 << 10), (fetched_twice, before, verified)
    assert list((mirror_dir / ".mirror-state" / "partials").iterdir()) == []
    assert temporaries(mirror_dir) == []
