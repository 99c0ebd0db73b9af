"""Faults (issue 4): a full disk, daemons killed mid-job, files changing while they are sent.

The outcome asked for is the same as for a hostile peer: a clear error naming the source and
the file, no partial file at a final name (an old version stays), no temporary file left
behind, and a daemon that keeps serving. Daemons killed with SIGKILL are real ``twistd``
processes; the others run in this process (pytest-twisted drives the reactor).
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorFromThreads

from mirror import paths
from mirror.content_server import fetch as content_fetch
from mirror.initiator.client import ConnectionLostBeforeDone
from mirror.mirror_server import service as mirror_service, store
from mirror.wire.control import Progress
from tests.integration.conftest import deep_scratch_dir, free_port, run_job, source
from tests.integration.hostile_server import (
    MTIME_NS,
    Fetch,
    Gate,
    HostileServer,
    d,
    f,
    stall,
)
from tests.integration.waiting import wait_for
from tests.trees import assert_same_tree, make_sample_tree

REPO = Path(__file__).resolve().parents[2]
TWISTD = str(Path(sys.executable).with_name("twistd"))
OLD = b"old version, complete\n"

pytestmark = pytest.mark.timeout(20)


# -- helpers -------------------------------------------------------------------------------


def temporaries(root: Path) -> list[Path]:
    out = subprocess.run(["find", str(root), "-name", paths.TEMP_PREFIX + "*", "-print0"],
                         check=True, capture_output=True).stdout
    return [Path(p.decode()) for p in out.split(b"\0") if p]


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Daemons:
    """Real ``twistd`` daemons, killed at the end of the test whatever happens."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    async def start(self, name: str, port: int, *args: str) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}-{port}-{len(self.procs)}.log"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", f"--logfile={log}", name, "-p", str(port), *args],
            cwd=str(REPO), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        self.procs.append(proc)
        proc.log = log  # type: ignore[attr-defined]

        def started() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited: {proc.stderr.read().decode()[-2000:]}")
            return listening(port)

        await wait_for(started, 10, f"{name} to listen on {port}")
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(5)
            if proc.stderr is not None:
                proc.stderr.close()


@pytest.fixture
def daemons(tmp_path: Path) -> Any:
    ds = Daemons(tmp_path)
    yield ds
    ds.stop_all()


def assert_clean_errors(result: Any) -> None:
    for e in result.errors:
        assert "\n" not in e.message and "Traceback" not in e.message, e.message


# -- disk full -----------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Any:
    """A 1 MiB tmpfs mounted on a fresh directory (root only), unmounted afterwards."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the injected ENOSPC tests still run)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest_twisted.ensureDeferred
async def test_disk_full_on_a_real_small_tmpfs(tmp_path, small_tmpfs, start_content_server,
                                               start_mirror_server):
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    big = os.urandom(2 << 20)  # twice the file system
    (src / "docs" / "big.bin").write_bytes(big)
    (src / "docs" / "medium.bin").write_bytes(os.urandom(200_000))  # gathered in memory
    for i in range(5):
        (src / "docs" / f"small{i}.txt").write_bytes(f"small {i}\n".encode())
    cport, _ = start_content_server(str(src))
    mirror = small_tmpfs / "mirror"
    mport, _ = start_mirror_server(str(mirror))
    top = mirror / f"127.0.0.1_{cport}"
    (top / "docs").mkdir(parents=True)
    (top / "docs" / "big.bin").write_bytes(OLD)
    # Fill the file system, then free 120 kB: the 200 kB file does not fit either.
    filler = mirror / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - 120_000))

    result = await run_job(mport, [source(cport)], timeout=15)
    assert not result.ok
    assert_clean_errors(result)
    failed = {e.path: e.message for e in result.errors}
    assert "docs/big.bin" in failed
    assert "docs/medium.bin" in failed
    assert all(e.index == 0 for e in result.errors)
    for path, message in failed.items():
        assert message.startswith(path + ":") and "no space left on device" in message
    assert (top / "docs" / "big.bin").read_bytes() == OLD
    assert not (top / "docs" / "medium.bin").exists()
    # A small file may have been written while the big one held the last free pages: then
    # it failed too, and says so. Either way, nothing incomplete is at its name.
    for i in range(5):
        small = top / "docs" / f"small{i}.txt"
        if f"docs/small{i}.txt" in failed:
            assert not small.exists()
        else:
            assert small.read_bytes() == f"small {i}\n".encode()
    assert temporaries(small_tmpfs) == []

    # Space freed: the daemon carries on, and the same job now completes.
    filler.unlink()
    os.truncate(src / "docs" / "big.bin", 300_000)
    result = await run_job(mport, [source(cport)], timeout=15)
    assert result.ok, result.errors
    assert_same_tree(src, top)
    assert temporaries(small_tmpfs) == []


class _FailingOs:
    """``os`` as seen by the store module, with ENOSPC on ``write`` or ``close`` of chosen
    descriptors (the real call is made first for ``close``: the descriptor is gone, as with
    a real delayed write error)."""

    def __init__(self, op: str) -> None:
        self.op = op
        self.failing: set[int] = set()
        self.hits = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        if self.op == "write" and fd in self.failing:
            self.hits += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)

    def close(self, fd: int) -> None:
        # Forgotten before the real close: the number may be reused at once by another file.
        chosen = fd in self.failing
        self.failing.discard(fd)
        os.close(fd)
        if chosen and self.op == "close":
            self.hits += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("size", [100, 1_000_000], ids=["small", "big"])
@pytest.mark.parametrize("op", ["write", "close"])
@pytest_twisted.ensureDeferred
async def test_disk_full_injected(tmp_path, monkeypatch, start_content_server,
                                  start_mirror_server, op, size):
    src = make_sample_tree(tmp_path / "src", big_size=500_000)
    victim = src / "docs" / "victim.bin"
    victim.write_bytes(os.urandom(size))
    cport, _ = start_content_server(str(src))
    mport, _ = start_mirror_server(str(tmp_path / "mirror"))
    top = tmp_path / "mirror" / f"127.0.0.1_{cport}"
    (top / "docs").mkdir(parents=True)
    (top / "docs" / "victim.bin").write_bytes(OLD)

    fake = _FailingOs(op)
    monkeypatch.setattr(store, "os", fake)
    real_init = store.PartialFile.__init__

    def init(self: Any, st: Any, parts: Any, dir_fd: int, **kw: Any) -> None:
        real_init(self, st, parts, dir_fd, **kw)
        if parts == ("docs", "victim.bin"):
            fake.failing.add(self._fd)

    monkeypatch.setattr(store.PartialFile, "__init__", init)

    result = await run_job(mport, [source(cport)], timeout=15)
    assert not result.ok
    assert_clean_errors(result)
    assert [(e.index, e.path) for e in result.errors] == [(0, "docs/victim.bin")]
    message = result.errors[0].message
    assert f"{op} failed: no space left on device" in message, message
    assert fake.hits == 2  # tried twice, reported once
    assert result.source_done[0].failed == 1
    assert (top / "docs" / "victim.bin").read_bytes() == OLD
    assert temporaries(tmp_path) == []
    # Everything else arrived.
    for p in src.rglob("*"):
        if p.is_file() and p != victim:
            assert (top / p.relative_to(src)).read_bytes() == p.read_bytes()

    # The disk is fine again: the daemon carries on.
    monkeypatch.undo()
    victim.write_bytes(b"now it fits\n")
    result = await run_job(mport, [source(cport, "docs/victim.bin")], timeout=15)
    assert result.ok, result.errors
    assert (top / "docs" / "victim.bin").read_bytes() == b"now it fits\n"
    assert temporaries(tmp_path) == []


# -- too many open files --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_many_sources_with_many_directories_within_the_fd_limit(
        tmp_path, start_hostile_server, start_mirror_server):
    """Each source of a job has its own store, and each store kept up to 256 directory
    descriptors: four sources of 300 directories held 1,024, the usual ``ulimit -n``, and
    every later file failed with "Too many open files". Here the process gets 400 more
    descriptors than it has open: enough for the job, not for four full caches."""
    ports = []
    for i in range(4):
        entries = [d("d")]
        for j in range(300):
            entries += [d(f"d/{j:03d}"), f(f"d/{j:03d}/f", b"%d/%d" % (i, j))]
        ports.append(start_hostile_server(HostileServer(entries)))
    mirror = tmp_path / "mirror"
    mport, _ = start_mirror_server(str(mirror))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 400, hard))
    try:
        result = await run_job(mport, [source(p) for p in ports], timeout=15)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert [e.message for e in result.errors[:3]] == []
    assert result.ok
    for i, port in enumerate(ports):
        assert (mirror / f"127.0.0.1_{port}" / "d" / "299" / "f").read_bytes() == b"%d/299" % i


# -- a content server killed mid-job --------------------------------------------------------


@pytest.mark.timeout(30)
@pytest_twisted.ensureDeferred
async def test_content_server_killed_mid_job(tmp_path, monkeypatch, daemons,
                                             start_mirror_server):
    src = make_sample_tree(tmp_path / "src", big_size=32 << 20)
    for i in range(30):
        (src / "empty" / f"late{i:02d}.txt").write_bytes(f"late {i}\n".encode() * 100)
    cport = free_port()
    content = await daemons.start("content-server", cport, "-d", str(src))
    mport, _ = start_mirror_server(str(tmp_path / "mirror"), workers=2)
    top = tmp_path / "mirror" / f"127.0.0.1_{cport}"
    (top / "docs" / "sub").mkdir(parents=True)
    (top / "docs" / "sub" / "big.bin").write_bytes(OLD)

    # A disk that stops after 4 MiB of a file until the content server is dead, so that
    # the kill lands in the middle of the 32 MiB file however fast or slow the machine is.
    real_write = store.PartialFile.write
    written: dict[int, int] = {}
    disk_may_go_on = threading.Event()

    def gated_write(self: Any, pieces: Any) -> None:
        real_write(self, pieces)
        written[id(self)] = written.get(id(self), 0) + sum(len(p) for p in pieces)
        if written[id(self)] > (4 << 20):
            disk_may_go_on.wait(20)  # a bound: the test fails below if it is reached

    monkeypatch.setattr(store.PartialFile, "write", gated_write)
    killed: list[Any] = []

    def on_event(event: Any) -> None:
        # Progress counts bytes received: with the disk stopped, flow control holds the
        # transfer a few MiB further on, mid-file.
        if isinstance(event, Progress) and event.bytes_done > (4 << 20) and not killed:
            killed.append(time.monotonic())
            daemons.kill(content)
            disk_may_go_on.set()

    try:
        result = await run_job(mport, [source(cport)], on_event=on_event, timeout=20)
    finally:
        disk_may_go_on.set()
    assert killed, "the job ended before the content server could be killed"
    # The files still queued fail at once: not one connection attempt (0.3 s) each.
    assert time.monotonic() - killed[0] < 5
    assert not result.ok
    assert_clean_errors(result)
    done = result.source_done[0]
    assert done.failed >= 1 and done.failed == len(result.errors)
    peer = f"127.0.0.1:{cport}"
    for e in result.errors:
        assert e.index == 0 and e.path is not None
        assert e.message.startswith(e.path + ":") and peer in e.message, e.message
    assert "docs/sub/big.bin" in {e.path for e in result.errors}
    # What arrived is complete; the big file's old version is intact; nothing half-written.
    assert (top / "docs" / "sub" / "big.bin").read_bytes() == OLD
    for p in top.rglob("*"):
        if p.is_file() and p.name != "big.bin":
            assert p.read_bytes() == (src / p.relative_to(top)).read_bytes()
    assert temporaries(tmp_path) == []

    # The content server comes back: the same job completes.
    monkeypatch.undo()
    await daemons.start("content-server", cport, "-d", str(src))
    result = await run_job(mport, [source(cport)], timeout=20)
    assert result.ok, result.errors
    assert_same_tree(src, top)
    assert temporaries(tmp_path) == []


# -- the mirror server killed mid-job ---------------------------------------------------------


@pytest.mark.timeout(30)
@pytest_twisted.ensureDeferred
async def test_mirror_server_killed_mid_job(tmp_path, daemons, start_hostile_server):
    big = os.urandom(2 << 20)
    fresh = os.urandom(1 << 20)
    script = HostileServer([d("docs"), f("docs/a.txt", b"a\n"), f("docs/big.bin", big),
                            f("docs/fresh.bin", fresh)])
    # Half of each big file, then the content server waits: the mirror server is killed
    # with two temporary files half written.
    script.fetch["docs/big.bin"] = stall(big, after=1 << 20)
    script.fetch["docs/fresh.bin"] = stall(fresh, after=len(fresh) // 2)
    cport = start_hostile_server(script)
    mirror = tmp_path / "mirror"
    top = mirror / f"127.0.0.1_{cport}"
    (top / "docs").mkdir(parents=True)
    (top / "docs" / "big.bin").write_bytes(OLD)

    mport = free_port()
    mirror_args = ("-m", str(mirror), "-w", "4", "--stall-timeout", "30")
    server = await daemons.start("mirror-server", mport, *mirror_args)
    job = run_job(mport, [source(cport)], timeout=20)
    job.addErrback(lambda failure: failure.value)  # checked below

    def half_written() -> bool:
        sizes = []
        for temp in temporaries(mirror):
            try:
                sizes.append(temp.stat().st_size)
            except FileNotFoundError:
                return False  # a small file's temporary, renamed into place meanwhile
        return len(sizes) == 2 and all(size >= (1 << 19) for size in sizes)

    await wait_for(half_written, what="two half-written temporary files")
    assert (top / "docs" / "a.txt").read_bytes() == b"a\n"
    daemons.kill(server)
    outcome = await job
    assert isinstance(outcome, ConnectionLostBeforeDone), outcome
    leftovers = temporaries(mirror)
    assert len(leftovers) == 2

    # No final name holds a partial file: the old one is intact, the new one absent.
    assert (top / "docs" / "big.bin").read_bytes() == OLD
    assert not (top / "docs" / "fresh.bin").exists()

    # Restart: the leftovers are swept at start-up, before any job.
    server = await daemons.start("mirror-server", mport, *mirror_args)
    await wait_for(lambda: not temporaries(mirror), what="the start-up sweep")
    await wait_for(lambda: "removed 2 leftover temporary files" in server.log.read_text(),
                   what="the sweep's log line")
    # The killed job resumes by itself (the journal): the final name holds the old file or
    # the complete new one, never a part.
    assert (top / "docs" / "big.bin").read_bytes() in (OLD, big)

    # The content server behaves now: the job completes.
    script.fetch.clear()
    result = await run_job(mport, [source(cport)], timeout=20)
    assert result.ok, result.errors
    assert (top / "docs" / "big.bin").read_bytes() == big
    assert (top / "docs" / "fresh.bin").read_bytes() == fresh
    assert temporaries(mirror) == []


@pytest_twisted.ensureDeferred
async def test_sweep_does_not_remove_files_of_running_jobs(tmp_path, monkeypatch,
                                                           start_hostile_server,
                                                           start_mirror_server):
    """The start-up sweep runs in a thread and may take long on a big mirror: a job that
    starts meanwhile must not have its temporary file removed under it."""
    real_sweep = store.sweep_temporaries
    sweep_may_run = threading.Event()
    swept = Gate()

    def slow_sweep(base_dir: str) -> int:
        # A big mirror directory: the sweep is still going when the job below arrives.
        sweep_may_run.wait(10)  # a bound: the test fails below if it is reached
        try:
            return real_sweep(base_dir)
        finally:
            IReactorFromThreads(reactor).callFromThread(swept.open)

    monkeypatch.setattr(mirror_service, "sweep_temporaries", slow_sweep)
    big = os.urandom(1 << 20)
    script = HostileServer([f("big.bin", big)])
    # Half the file, then nothing more until the sweep is over: if a transfer ran during the
    # sweep, its temporary file would be there, half written, for the sweep to take.
    script.fetch["big.bin"] = Fetch(big, hold=swept, hold_at=len(big) // 2)
    cport = start_hostile_server(script)
    mirror = tmp_path / "mirror"
    mport, service = start_mirror_server(str(mirror))
    try:
        job = run_job(mport, [source(cport)], timeout=15)
        # The sweep goes on once the job is listed and its file queued or (if transfers
        # did not wait for the sweep) once the file's temporary file exists.
        await wait_for(lambda: len(service.queue) > 0 or temporaries(mirror),
                       what="the job to be listed during the sweep")
    finally:
        sweep_may_run.set()
    result = await job
    assert swept.opened
    assert result.ok, result.errors
    assert script.fetched() == ["big.bin"]  # not lost and fetched again
    assert (mirror / f"127.0.0.1_{cport}" / "big.bin").read_bytes() == big


@pytest_twisted.ensureDeferred
async def test_sweep_reaches_any_depth(start_mirror_server):
    """A legal 4 KiB wire path is 2,000 directories deep: the sweep must still get there
    (os.fwalk recurses once per level and keeps a descriptor open per level)."""
    base = Path(deep_scratch_dir("mirror-sweep-"))
    try:
        deep = base / "mirror" / "127.0.0.1_1"
        deep.mkdir(parents=True)
        (deep / (paths.TEMP_PREFIX + "top")).write_bytes(b"x")
        # Built with relative steps: the full path is longer than PATH_MAX.
        fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
        for _ in range(2100):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        for name in (paths.TEMP_PREFIX + "deep", "keep"):
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
        os.close(fd)
        start_mirror_server(str(base / "mirror"))
        await wait_for(lambda: not temporaries(base), timeout=10, what="the sweep")
        out = subprocess.run(["find", str(base), "-name", "keep"], capture_output=True,
                             check=True).stdout
        assert out.strip(), "a file that is not a temporary was removed"
    finally:
        # Not shutil.rmtree: it recurses once per level too.
        subprocess.run(["rm", "-rf", "--", str(base)], check=True)


# -- a file that changes while it is sent -----------------------------------------------------


def _append(p: Path) -> None:
    with p.open("ab") as out:
        out.write(b"more")


CHANGES = {
    "truncated": lambda p: os.truncate(p, p.stat().st_size // 2),
    "rewritten-same-size": lambda p: p.write_bytes(os.urandom(p.stat().st_size)),
    "appended": _append,
    "replaced-by-rename": None,  # a new file renamed over the name: one whole version lands
}


@pytest.mark.parametrize("size", [100_000, 2_000_000], ids=["small", "big"])
@pytest.mark.parametrize("change", sorted(CHANGES))
@pytest_twisted.ensureDeferred
async def test_file_changed_while_sent(tmp_path, monkeypatch, start_content_server,
                                       start_mirror_server, change, size):
    """The real content server, with the file changed on disk right after its first chunk
    was read: the transfer fails (or, for a rename, delivers the complete old version), the
    old mirrored copy stays, and no mix of two versions ever lands."""
    src = tmp_path / "src"
    src.mkdir()
    target = src / "victim.bin"
    original = os.urandom(size)
    target.write_bytes(original)
    os.utime(target, ns=(MTIME_NS, MTIME_NS))
    (src / "other.txt").write_bytes(b"other\n")
    cport, _ = start_content_server(str(src))
    mport, _ = start_mirror_server(str(tmp_path / "mirror"))
    top = tmp_path / "mirror" / f"127.0.0.1_{cport}"
    top.mkdir(parents=True)
    (top / "victim.bin").write_bytes(OLD)

    real_read = content_fetch.RangeReader.read
    changed: list[int] = []

    def read(self: Any, max_bytes: int = content_fetch.CHUNK_SIZE) -> bytes:
        data = real_read(self, max_bytes)
        first_chunk = self._pos == len(data)
        if first_chunk and self.header.file_size > 100:  # victim.bin, not other.txt
            # Changed during every attempt (the mirror server retries once), each time with
            # a new mtime, as a writer busy with the file would leave it.
            changed.append(1)
            if CHANGES[change] is None:
                if len(changed) == 1:
                    (src / "new.tmp").write_bytes(b"R" * size)
                    os.rename(src / "new.tmp", target)
            else:
                CHANGES[change](target)
                os.utime(target, ns=(MTIME_NS + len(changed), MTIME_NS + len(changed)))
        return data

    monkeypatch.setattr(content_fetch.RangeReader, "read", read)
    result = await run_job(mport, [source(cport)], timeout=15)
    assert changed
    got = (top / "victim.bin").read_bytes()
    if change == "replaced-by-rename":
        # The open descriptor still reads the old file whole; its ctime moved (it lost its
        # name), so the content server may call it changed and the retry fetches the new
        # one. Either way one complete version lands, never a mix.
        assert result.ok, result.errors
        assert got in (original, b"R" * size)
    else:
        assert not result.ok
        assert_clean_errors(result)
        [error] = result.errors
        assert error.index == 0 and error.path == "victim.bin"
        assert error.message.startswith("victim.bin:")
        # The retry (the last attempt, the one reported) may already see the new size,
        # which differs from the listed one.
        assert ("while being sent" in error.message
                or "file changed: listed with" in error.message), error.message
        assert got == OLD
    assert (top / "other.txt").read_bytes() == b"other\n"
    assert temporaries(tmp_path) == []

    # The file stands still again: the next run fetches its current version.
    monkeypatch.undo()
    result = await run_job(mport, [source(cport)], timeout=15)
    assert result.ok, result.errors
    assert (top / "victim.bin").read_bytes() == target.read_bytes()
