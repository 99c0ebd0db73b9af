"""The mirror service end to end in memory: real content server protocols (or a fake one) wired
to the mirror service's content clients by `mirror.testing.MemoryNetwork`, a fake clock, and
inline disk work."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from mirror.hashing import digest_of
from mirror.mirror_server.service import MirrorService, MirrorSettings
from mirror.testing import InlineThreads, MemoryNetwork
from mirror.wire import frames
from mirror.wire.control import SourceRequest
from tests.trees import assert_same_tree, make_sample_tree
from tests.unit.helpers import make_factory


@dataclass
class Observer:
    """Records what a JobObserver hears."""

    started: list = field(default_factory=list)
    errors: list[tuple[int, str | None, str]] = field(default_factory=list)
    done: dict[int, Any] = field(default_factory=dict)
    progress_events: list[tuple] = field(default_factory=list)
    finished: list = field(default_factory=list)
    links_skipped: list[tuple[int, str | None, str]] = field(default_factory=list)

    def link_skipped(self, index: int, path: str | None, message: str) -> None:
        self.links_skipped.append((index, path, message))

    def job_started(self, job) -> None:
        self.started.append(job.id)

    def progress(self, job) -> None:
        self.progress_events.append((job.files_done, job.bytes_done, job.files_total,
                                     job.bytes_total, job.listing_done))

    def source_error(self, index: int, path: str | None, message: str) -> None:
        self.errors.append((index, path, message))

    def source_done(self, run) -> None:
        self.done[run.index] = run

    def job_done(self, job) -> None:
        self.finished.append(job.ok)


class JobTestCase(SynchronousTestCase):
    settings: dict[str, Any] = {"workers": 2, "queue_size": 2}

    def setUp(self) -> None:
        self.base = Path(os.path.abspath(self.mktemp()))
        self.mirror = self.base / "mirror"
        self.mirror.mkdir(parents=True)
        self.clock = MemoryReactorClock()
        self.network = MemoryNetwork(self.clock)
        # No fsync unless a test asks: about 5 ms a file on this kind of disk, and what
        # durable commits do is tested with a recording fsync (test_durable.py).
        settings = {"fsync": False, **self.settings}
        self.service = MirrorService(str(self.mirror), MirrorSettings(**settings),
                                     reactor=self.clock, threads=InlineThreads(),
                                     endpoints=self.network.endpoint)
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def serve(self, root: Path, host: str = "10.0.0.1", port: int = 7000, **settings) -> None:
        factory = make_factory(str(root), self.clock, **settings)
        self.addCleanup(os.close, factory.root_fd)
        self.network.listen(host, port, factory)

    def run_job(self, *sources: SourceRequest) -> Observer:
        observer = Observer()
        job = self.service.submit(list(sources), observer)
        self.network.run_until(job.finished)
        self.assertEqual(len(observer.finished), 1)
        return observer


def source(path: str = "", host: str = "10.0.0.1", port: int = 7000) -> SourceRequest:
    return SourceRequest(host, port, path, 0.0)


class MirrorWholeTree(JobTestCase):
    def test_sample_tree(self) -> None:
        src = make_sample_tree(self.base / "src", big_size=700 * 1024)
        self.serve(src)
        queue = self.service.queue
        put_many, full = queue.put_many, []

        def watching_put(items, on_wait=None):
            def waited():
                full.append(True)
                if on_wait is not None:
                    on_wait()
            return put_many(items, waited)

        self.patch(queue, "put_many", watching_put)
        observer = self.run_job(source())
        self.assertTrue(any(full), "the queue never filled: back-pressure not exercised")
        self.assertEqual(observer.errors, [])
        self.assertEqual(observer.finished, [True])
        assert_same_tree(src, self.mirror / "10.0.0.1_7000")
        run = observer.done[0]
        files = [p for p in src.rglob("*") if p.is_file()]
        dirs = [p for p in src.rglob("*") if p.is_dir()]
        self.assertGreater(len(files), self.settings["queue_size"] * 5)  # back-pressure path
        self.assertTrue(run.ok)
        self.assertEqual(run.stats.count, len(files))
        self.assertEqual(run.stats.total, sum(p.stat().st_size for p in files))
        self.assertEqual(run.stats.sum_sq, sum(p.stat().st_size ** 2 for p in files))
        self.assertEqual(run.dirs, len(dirs))
        self.assertEqual((run.skipped, run.failed), (0, 0))
        last = observer.progress_events[-1]
        self.assertEqual(last[0], len(files))
        self.assertEqual(last[2], len(files))
        self.assertEqual(last[1], last[3])
        self.assertTrue(last[4])
        self.assertEqual(len(self.service.queue), 0)
        # No temporary file anywhere.
        self.assertEqual([p for p in self.mirror.rglob(".mirror-tmp-*")], [])

    def test_second_run_skips_current_files(self) -> None:
        src = make_sample_tree(self.base / "src", big_size=300 * 1024)
        self.serve(src)
        self.run_job(source())
        (src / "docs" / "a.txt").write_text("changed\n")
        observer = self.run_job(source())
        run = observer.done[0]
        files = [p for p in src.rglob("*") if p.is_file()]
        self.assertEqual((run.stats.count, run.skipped), (1, len(files) - 1))
        assert_same_tree(src, self.mirror / "10.0.0.1_7000")

    def test_quick_check_only_where_the_mirror_had_the_directory(self) -> None:
        # A directory this job made was empty: its files are fetched without a stat each.
        # One that was there (here: docs, kept from an earlier run, with a current file and
        # a stale one) has its files checked, and the current one skipped.
        from mirror.mirror_server.store import MirrorStore

        src = make_sample_tree(self.base / "src", big_size=300 * 1024)
        self.serve(src)
        checked: list[tuple[str, ...]] = []
        lstat = MirrorStore.lstat

        def recording(store: MirrorStore, parts: tuple[str, ...]) -> Any:
            checked.append(parts)
            return lstat(store, parts)

        self.patch(MirrorStore, "lstat", recording)
        self.run_job(source())
        files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
        # (The files at the top are checked: HOST_PORT is not a listed directory.)
        self.assertEqual(sorted(checked), [f.parts for f in files if len(f.parts) == 1])
        checked.clear()
        top = self.mirror / "10.0.0.1_7000"
        assert_same_tree(src, top)
        for d in [p for p in top.iterdir() if p.is_dir() and p.name != "docs"]:
            for p in sorted(d.rglob("*"), reverse=True):
                p.unlink() if p.is_file() else p.rmdir()
            d.rmdir()
        (top / "docs" / "a.txt").write_text("stale\n")
        observer = self.run_job(source())
        in_docs = [f for f in files if len(f.parts) == 1 or f.parts[0] == "docs"]
        self.assertEqual(sorted(checked), sorted(f.parts for f in in_docs))
        run = observer.done[0]
        self.assertEqual((run.stats.count, run.skipped),
                         (len(files) - len(in_docs) + 1, len(in_docs) - 1))
        assert_same_tree(src, top)

    def test_subdirectory(self) -> None:
        src = make_sample_tree(self.base / "src", big_size=300 * 1024)
        self.serve(src)
        observer = self.run_job(source("docs/sub/deeper"))
        self.assertEqual(observer.errors, [])
        assert_same_tree(src / "docs" / "sub" / "deeper",
                         self.mirror / "10.0.0.1_7000" / "docs" / "sub" / "deeper")
        self.assertEqual(sorted(os.listdir(self.mirror / "10.0.0.1_7000")), ["docs"])

    def test_more_workers_than_files_and_a_queue_of_one(self) -> None:
        self.service.stopService()
        self.service = MirrorService(str(self.mirror), MirrorSettings(workers=5, queue_size=1),
                                     reactor=self.clock, threads=InlineThreads(),
                                     endpoints=self.network.endpoint)
        self.service.startService()
        src = make_sample_tree(self.base / "src", big_size=300 * 1024)
        self.serve(src)
        observer = self.run_job(source())
        self.assertEqual(observer.finished, [True])
        assert_same_tree(src, self.mirror / "10.0.0.1_7000")

    def test_stores_count_against_the_service_budget(self) -> None:
        src = make_sample_tree(self.base / "src", big_size=300 * 1024)
        self.serve(src)
        self.serve(src, port=7001)
        observer = self.run_job(source(), source(port=7001))
        self.assertEqual(observer.finished, [True])
        for run in observer.done.values():
            self.assertIs(run.store.budget, self.service.dir_budget)
        self.assertEqual(self.service.dir_budget.used, 0)  # given back when the job ended

    def test_unreachable_source_fails_alone(self) -> None:
        src = make_sample_tree(self.base / "src", big_size=300 * 1024)
        self.serve(src)
        observer = self.run_job(source(port=9), source())
        self.assertEqual(observer.finished, [False])
        self.assertFalse(observer.done[0].ok)
        self.assertTrue(observer.done[1].ok)
        (index, path, message), = observer.errors
        self.assertEqual((index, path), (0, None))
        self.assertIn("connection refused", message)
        self.assertFalse((self.mirror / "10.0.0.1_9").exists())
        assert_same_tree(src, self.mirror / "10.0.0.1_7000")


class PausedListing(JobTestCase):
    """A listing held while the work queue is full is closed after ``list_hold`` and resumed
    from its cursor once the queue is half empty (issue 7): the content server holds nothing
    for it meanwhile, and the mirror is complete, nothing listed twice."""

    settings: dict[str, Any] = {"workers": 1, "queue_size": 4, "list_hold": 0.5}

    def test_closed_and_resumed_from_the_cursor(self) -> None:
        from mirror.content_server.listing import TreeWalker
        from mirror.content_server.protocol import ContentServerProtocol

        src = self.base / "src"
        for d in ("a", "b/c", "d"):
            (src / d).mkdir(parents=True)
            for i in range(6):
                (src / d / f"f{i}").write_bytes(f"{d}{i}".encode())
        small = TreeWalker.next_batch
        self.patch(TreeWalker, "next_batch", lambda w, max_bytes=0: small(w, 120))
        cursors: list = []
        parse = ContentServerProtocol._parse_cursor

        def record(proto, raw, parts):
            cursors.append(raw.decode())
            return parse(proto, raw, parts)

        self.patch(ContentServerProtocol, "_parse_cursor", record)
        self.serve(src)
        observer = self.run_job(SourceRequest("10.0.0.1", 7000, "", 1.0))
        self.assertEqual(observer.errors, [])
        self.assertEqual(observer.finished, [True])
        assert_same_tree(src, self.mirror / "10.0.0.1_7000")
        self.assertGreaterEqual(len(cursors), 2)
        self.assertEqual(cursors, sorted(cursors))
        self.assertEqual(len(set(cursors)), len(cursors))
        run = observer.done[0]
        self.assertEqual((run.stats.count, run.dirs, run.failed), (18, 4, 0))


    def test_cursor_never_moves_back(self) -> None:
        """An error entry may name a directory again after its contents (the walker could not
        climb back into it): a listing closed right after one resumes after the furthest name
        received, never from that directory (which would list its contents again)."""
        from mirror.content_server.listing import TreeWalker
        from mirror.content_server.protocol import ContentServerProtocol

        src = self.base / "src"
        for d in ("a", "b/c", "d"):
            (src / d).mkdir(parents=True)
            for i in range(6):
                (src / d / f"f{i}").write_bytes(f"{d}{i}".encode())
        small = TreeWalker.next_batch
        failed: list[str] = []

        def batch_ending_in_an_error(w, max_bytes=0):
            batch = small(w, 120)
            if batch is None:
                return None
            last = frames.decode_entries(batch)[-1].name.decode()
            parent = last.rpartition("/")[0]
            if not parent:
                return batch
            failed.append(parent)
            return batch + frames.encode_error_entry(frames.E_IO, parent.encode(), "no climb")

        self.patch(TreeWalker, "next_batch", batch_ending_in_an_error)
        resumed = []
        parse = ContentServerProtocol._parse_cursor

        def record(proto, raw, parts):
            resumed.append(raw.decode())
            return parse(proto, raw, parts)

        self.patch(ContentServerProtocol, "_parse_cursor", record)
        self.serve(src)
        observer = self.run_job(SourceRequest("10.0.0.1", 7000, "", 1.0))
        self.assertGreaterEqual(len(resumed), 2)
        self.assertNotIn("b/c", resumed)
        self.assertNotIn("d", resumed)
        # Only the injected errors (not every batch is sent: some are made, then dropped
        # with the closed connection, and made again on resumption).
        self.assertTrue(observer.errors)
        for _, path, message in observer.errors:
            self.assertEqual(message, "no climb")
            self.assertIn(path, failed)
        assert_same_tree(src, self.mirror / "10.0.0.1_7000")
        run = observer.done[0]
        self.assertEqual((run.stats.count, run.dirs, run.failed),
                         (18, 4, len(observer.errors)))


class FairSharing(JobTestCase):
    """A small job submitted behind several big ones gets its share of the workers at once
    (issue 9): it finishes after a bounded number of the others' transfers, not after their
    backlog in the queue."""

    # One file per worker turn (no bundles): the turns are what is shared.
    settings: dict[str, Any] = {"workers": 2, "queue_size": 40, "batch_files": 1,
                                "bundle_files": 0}
    BIG_JOBS, BIG_FILES, SMALL_FILES = 4, 60, 3

    def test_small_job_behind_big_ones(self) -> None:
        from mirror.mirror_server.job import SourceRun

        src = self.base / "src"
        for name, files in [(f"big{j}", self.BIG_FILES) for j in range(self.BIG_JOBS)] + [
                ("small", self.SMALL_FILES)]:
            (src / name).mkdir(parents=True)
            for i in range(files):
                (src / name / f"f{i:03d}").write_bytes(f"{name} {i}".encode())
        self.serve(src)
        turns: list[str] = []  # the job of each transfer, in the order the workers start them
        transfer = SourceRun.transfer

        def recording(run: SourceRun, parts: Any, entry: Any) -> Any:
            turns.append(run.job.id)
            return transfer(run, parts, entry)

        self.patch(SourceRun, "transfer", recording)
        queue = self.service.queue
        big = [self.service.submit([source(f"big{j}")], Observer())
               for j in range(self.BIG_JOBS)]
        # Until the big jobs fill the queue and each has a producer waiting for room.
        for _ in range(20000):
            if len(queue) == queue.size and all(j.files_total > queue.size // self.BIG_JOBS
                                                for j in big):
                break
            if not self.network.pump():
                self.clock.advance(0.1)
        self.assertEqual(len(queue), queue.size)
        before = len(turns)
        small = self.service.submit([source("small")], Observer())
        self.network.run_until(small.finished)
        self.assertTrue(small.ok)
        assert_same_tree(src / "small", self.mirror / "10.0.0.1_7000" / "small")
        after = turns[before:]
        big_turns = sum(1 for t in after if t != small.id)
        # Its listing takes a few turns, then each of its files waits at most a round of the
        # big jobs' turns; with one FIFO it waited behind the 40 items queued before it.
        self.assertLessEqual(big_turns, (self.SMALL_FILES + 2) * self.BIG_JOBS)
        self.assertFalse(any(j.finished.called for j in big))
        for job in big:
            self.network.run_until(job.finished)
            self.assertTrue(job.ok)
        self.assertEqual(len(turns), self.BIG_JOBS * self.BIG_FILES + self.SMALL_FILES)


class IncompleteSource(JobTestCase):
    """What the source did not export is reported as ``not_exported``; what it could not
    list fails the job with the path and the reason (issue 7)."""

    def make_src(self) -> Path:
        src = self.base / "src"
        for name in ("a/x", "b/secret", "c"):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(name.encode())
        os.symlink("/etc/passwd", src / "link")
        os.mkfifo(src / "a" / "fifo")
        return src

    def test_not_exported_counted_apart_from_skipped(self) -> None:
        src = self.make_src()
        self.serve(src)
        observer = self.run_job(source())
        self.assertEqual(observer.finished, [True])
        run = observer.done[0]
        # The FIFO is not exported; the link to /etc/passwd is listed, and skipped as unsafe.
        self.assertEqual((run.not_exported, run.skipped, run.stats.count), (1, 0, 3))
        self.assertEqual(run.links.skipped, 1)
        observer = self.run_job(source())
        run = observer.done[0]
        self.assertEqual((run.not_exported, run.skipped, run.stats.count), (1, 3, 0))
        self.assertEqual(run.links.skipped, 1)

    def test_unreadable_directory_fails_the_job(self) -> None:
        from mirror.content_server import listing

        src = self.make_src()
        real_open = listing._open_child

        def fake_open(name, dir_fd):
            if name == "b":
                raise PermissionError(13, "Permission denied")
            return real_open(name, dir_fd)

        self.patch(listing, "_open_child", fake_open)
        self.serve(src)
        observer = self.run_job(source())
        self.assertEqual(observer.finished, [False])
        ((_, path, message),) = observer.errors
        self.assertEqual(path, "b")
        self.assertIn("cannot list b: Permission denied", message)
        run = observer.done[0]
        self.assertEqual((run.ok, run.failed, run.stats.count), (False, 1, 2))
        top = self.mirror / "10.0.0.1_7000"
        self.assertEqual((top / "a" / "x").read_bytes(), b"a/x")
        self.assertEqual(os.listdir(top / "b"), [])


class FakeContentServer(Protocol):
    """Answers LIST with crafted entries and FETCH with the given files' bytes."""

    def __init__(self, entries: list[tuple[int, bytes, int]], files: dict[bytes, bytes],
                 seen: list[tuple[int, list[bytes]]] | None = None) -> None:
        self.entries = entries
        self.files = files
        self.receiver = _Frames(self._request)
        #: (opcode, names) of each FETCH or FETCH_MANY received, shared by its connections.
        self.seen = [] if seen is None else seen

    def dataReceived(self, data: bytes) -> None:
        self.receiver.dataReceived(data)

    #: name -> how to spoil the answers to its FETCHes, one per attempt ("" = answer well).
    spoil: dict[bytes, list[str]] = {}

    def _request(self, opcode: int, rid: int, payload: bytes) -> None:
        if opcode == frames.FETCH:
            self.seen.append((opcode, [frames.decode_fetch(payload)[3]]))
        elif opcode == frames.FETCH_MANY:
            self.seen.append((opcode, [n for _, n in frames.decode_fetch_many(payload)[1]]))
        if opcode == frames.FETCH:
            name = frames.decode_fetch(payload)[3]
            plan = self.spoil.get(name)
            how = plan.pop(0) if plan else ""
            if how:
                self._spoiled(how, rid, name)
                return
        if opcode == frames.FETCH_MANY:
            self._bundle(rid, payload)
            return
        if opcode == frames.LIST:
            body = b"".join(frames.encode_entry(kind, 0o644 if kind == frames.KIND_FILE else 0o755,
                                                size, 1_000_000_000, name)
                            for kind, name, size in self.entries)
            self.transport.write(frames.frame(frames.ENTRIES, rid, body))
            self.transport.write(frames.frame(frames.LIST_END, rid,
                                              frames.encode_list_end(len(self.entries), 0)))
        elif opcode == frames.FETCH:
            _, _, _, name = frames.decode_fetch(payload)
            data = self.files.get(name)
            if data is None:
                self.transport.write(frames.frame(frames.ERROR, rid, frames.encode_error(
                    frames.E_NOT_FOUND, f"{name!r}: not here")))
                return
            header = frames.FileHeader(len(data), len(data), 1_000_000_000, 0o644)
            self.transport.write(frames.frame(frames.FILE, rid, frames.encode_file(header))
                                 + frames.data_header(rid, len(data)) + data
                                 + frames.frame(frames.FILE_END, rid,
                                                digest_of(data)))


    def _bundle(self, rid: int, payload: bytes) -> None:
        """A FETCH_MANY, answered in one BUNDLE frame; ``spoil`` applies per file."""
        _delay, wants = frames.decode_fetch_many(payload)
        items = []
        for index, (_size, name) in enumerate(wants):
            plan = self.spoil.get(name)
            how = plan.pop(0) if plan else ""
            data = self.files.get(name)
            if data is None or how == "error":
                items.append(frames.encode_bundle_error(index, frames.E_IO,
                                                        f"{name.decode()}: I/O error"))
                continue
            digest = b"\x00" * 32 if how == "digest" else digest_of(data)
            if how in ("short", "range"):
                data = data[:1]
                digest = digest_of(data)
            header = frames.FileHeader(len(data), len(data), 1_000_000_000, 0o644)
            items.append(frames.encode_bundle_file(index, header, digest, data))
        self.transport.write(frames.frame(frames.BUNDLE, rid, b"".join(items)))

    def _spoiled(self, how: str, rid: int, name: bytes) -> None:
        data = self.files[name]
        header = frames.FileHeader(len(data), len(data), 1_000_000_000, 0o644)
        out = frames.frame(frames.FILE, rid, frames.encode_file(header))
        if how == "error":
            out = frames.frame(frames.ERROR, rid, frames.encode_error(
                frames.E_IO, f"{name.decode()}: I/O error"))
        elif how == "digest":
            out += frames.data_header(rid, len(data)) + data
            out += frames.frame(frames.FILE_END, rid, b"\x00" * 32)
        elif how == "short":
            out += frames.data_header(rid, len(data) - 1) + data[:-1]
            out += frames.frame(frames.FILE_END, rid, digest_of(data[:-1]))
        elif how == "range":
            header = frames.FileHeader(1, len(data), 1_000_000_000, 0o644)
            out = frames.frame(frames.FILE, rid, frames.encode_file(header))
            out += frames.data_header(rid, 1) + data[:1]
            out += frames.frame(frames.FILE_END, rid, digest_of(data[:1]))
        self.transport.write(out)


class _Frames(frames.FrameReceiver):
    MAX_LENGTH = 8192

    def __init__(self, handler) -> None:
        self.handler = handler
        self.transport = cast(Any, object())  # parse without a transport of its own

    def stringReceived(self, frame: bytes) -> None:
        self.handler(*frames.split_frame(frame))


class FakeServerTestCase(JobTestCase):
    def serve_fake(self, entries, files, spoil=None, seen=None) -> None:
        def make():
            server = FakeContentServer(entries, files, seen)
            server.spoil = spoil if spoil is not None else {}
            return server

        self.network.listen("10.0.0.1", 7000, Factory.forProtocol(make))


class HostileListing(FakeServerTestCase):
    def test_bad_entries_refused_and_named(self) -> None:
        F, D = frames.KIND_FILE, frames.KIND_DIR
        entries = [  # the good ones in canonical order
            (D, b"d", 0),
            (F, b"d/inner", 3),
            (F, b"ok.txt", 2),
            (F, b"../escape", 4),
            (F, b"/etc/passwd", 4),
            (F, b"a/../../up", 4),
            (F, b"new\nline", 4),
            (F, b".mirror-tmp-0001", 4),
            (F, b"back\\slash", 4),
            (F, b"bad\xffutf8", 4),
        ]
        files = {b"ok.txt": b"ok", b"d/inner": b"abc", b"../escape": b"evil",
                 b"/etc/passwd": b"evil", b"a/../../up": b"evil"}
        self.serve_fake(entries, files)
        observer = self.run_job(source())
        self.assertEqual(observer.finished, [False])
        run = observer.done[0]
        self.assertFalse(run.ok)
        self.assertEqual(run.failed, 7)
        by_path = {path: message for _, path, message in observer.errors}
        for shown in ("../escape", "/etc/passwd", "a/../../up", "new\\nline",
                      ".mirror-tmp-0001", "back\\slash", "bad\\xffutf8"):
            self.assertIn(shown, by_path, sorted(by_path))
            self.assertIn("refused", by_path[shown])
        self.assertEqual(len(observer.errors), 7)
        top = self.mirror / "10.0.0.1_7000"
        self.assertEqual((top / "ok.txt").read_bytes(), b"ok")
        self.assertEqual((top / "d" / "inner").read_bytes(), b"abc")
        self.assertEqual(sorted(os.listdir(top)), ["d", "ok.txt"])
        self.assertEqual(sorted(os.listdir(self.mirror)), ["10.0.0.1_7000"])
        self.assertFalse((self.base / "escape").exists())
        self.assertEqual(run.stats.count, 2)

    def test_entry_outside_the_requested_path(self) -> None:
        self.serve_fake([(frames.KIND_DIR, b"want", 0), (frames.KIND_FILE, b"other.txt", 1)],
                        {b"other.txt": b"x"})
        observer = self.run_job(source("want"))
        (index, path, message), = observer.errors
        self.assertEqual(path, "other.txt")
        self.assertIn("outside the requested path", message)
        self.assertFalse((self.mirror / "10.0.0.1_7000" / "other.txt").exists())

    def test_same_name_twice(self) -> None:
        self.serve_fake([(frames.KIND_DIR, b"x", 0), (frames.KIND_FILE, b"x", 1)],
                        {b"x": b"!"})
        observer = self.run_job(source())
        self.assertEqual([path for _, path, _ in observer.errors], ["x"])
        self.assertTrue((self.mirror / "10.0.0.1_7000" / "x").is_dir())

    def test_file_over_its_own_children(self) -> None:
        self.serve_fake([(frames.KIND_FILE, b"a/b", 1), (frames.KIND_FILE, b"a", 1)],
                        {b"a/b": b"1", b"a": b"2"})
        observer = self.run_job(source())
        self.assertIn("a", [path for _, path, _ in observer.errors])
        self.assertTrue((self.mirror / "10.0.0.1_7000" / "a").is_dir())

    def test_absurd_size_in_the_listing(self) -> None:
        self.serve_fake([(frames.KIND_FILE, b"f", 2**63)], {b"f": b"small"})
        observer = self.run_job(source())
        (_, path, message), = observer.errors
        self.assertEqual(path, "f")
        self.assertIn("exceeds the limit", message)
        self.assertFalse((self.mirror / "10.0.0.1_7000" / "f").exists())


class FailedTransfers(FakeServerTestCase):
    """A transfer that fails is retried once, then reported with its path; nothing partial
    is ever left at a final name."""

    F = frames.KIND_FILE

    def run_spoiled(self, plan: list[str], data: bytes = b"content!") -> tuple[Observer, Path]:
        self.serve_fake([(self.F, b"f", len(data)), (self.F, b"good", 4)],
                        {b"f": data, b"good": b"good"}, spoil={b"f": list(plan)})
        observer = self.run_job(source())
        top = self.mirror / "10.0.0.1_7000"
        self.assertEqual((top / "good").read_bytes(), b"good")
        self.assertEqual(list(self.mirror.rglob(".mirror-tmp-*")), [])
        return observer, top

    def assert_failed(self, observer: Observer, top: Path, *words: str) -> None:
        (_, path, message), = observer.errors
        self.assertEqual(path, "f")
        for word in words:
            self.assertIn(word, message)
        run = observer.done[0]
        self.assertEqual((run.failed, run.stats.count, run.ok), (1, 1, False))
        self.assertFalse((top / "f").exists())

    def test_retried_once(self) -> None:
        observer, top = self.run_spoiled(["error"])
        self.assertEqual(observer.errors, [])
        self.assertEqual((top / "f").read_bytes(), b"content!")
        self.assertEqual(observer.done[0].stats.count, 2)

    def test_server_error_twice(self) -> None:
        observer, top = self.run_spoiled(["error", "error"])
        self.assert_failed(observer, top, "I/O error")

    def test_digest_mismatch_twice(self) -> None:
        observer, top = self.run_spoiled(["digest", "digest"])
        self.assert_failed(observer, top, "BLAKE3 mismatch")

    def test_short_transfer_twice(self) -> None:
        observer, top = self.run_spoiled(["short", "short"])
        self.assert_failed(observer, top)

    def test_partial_range_refused(self) -> None:
        observer, top = self.run_spoiled(["range", "range"])
        self.assert_failed(observer, top, "1 of 8 bytes")

    def test_old_file_kept_when_the_new_one_fails(self) -> None:
        top = self.mirror / "10.0.0.1_7000"
        top.mkdir()
        (top / "f").write_bytes(b"old")
        observer, top = self.run_spoiled(["digest", "digest"])
        self.assertEqual((top / "f").read_bytes(), b"old")
        self.assertEqual(len(observer.errors), 1)

    def test_progress_bytes_undone_for_failed_attempts(self) -> None:
        observer, top = self.run_spoiled(["digest", "short"])
        files_done, bytes_done, files_total, bytes_total, listing_done = \
            observer.progress_events[-1]
        self.assertEqual((files_done, files_total), (1, 2))
        self.assertEqual(bytes_done, 4)  # only the good file's bytes


class Bundles(FakeServerTestCase):
    """Small files travel in FETCH_MANY bundles, one per source and worker batch; the others
    (large ones, or any file of a SPEC with a delay) one FETCH each."""

    settings = {"workers": 1, "queue_size": 100}
    F = frames.KIND_FILE

    def serve_files(self, sizes: dict[bytes, int], spoil=None) -> list[tuple[int, list[bytes]]]:
        seen: list[tuple[int, list[bytes]]] = []
        files = {name: bytes([i]) * size for i, (name, size) in enumerate(sizes.items())}
        # Listed in canonical order (names sorted by their bytes).
        self.serve_fake([(self.F, name, len(data)) for name, data in sorted(files.items())],
                        files, spoil=spoil, seen=seen)
        self.files = files
        return seen

    def assert_mirrored(self, observer: Observer) -> None:
        self.assertEqual(observer.errors, [])
        top = self.mirror / "10.0.0.1_7000"
        for name, data in self.files.items():
            self.assertEqual((top / name.decode()).read_bytes(), data)
        run = observer.done[0]
        self.assertEqual((run.stats.count, run.stats.total),
                         (len(self.files), sum(map(len, self.files.values()))))
        files_done, bytes_done, files_total, bytes_total, _ = observer.progress_events[-1]
        self.assertEqual((files_done, bytes_done), (files_total, bytes_total))
        self.assertEqual(list(self.mirror.rglob(".mirror-tmp-*")), [])

    def test_small_files_in_bundles_large_ones_alone(self) -> None:
        sizes = {f"s{i}".encode(): i * 100 for i in range(20)}
        sizes[b"edge"] = frames.BUNDLE_FILE_MAX
        sizes[b"large"] = frames.BUNDLE_FILE_MAX + 1
        seen = self.serve_files(sizes)
        self.assert_mirrored(self.run_job(source()))
        bundled = [n for op, names in seen if op == frames.FETCH_MANY for n in names]
        self.assertEqual(sorted(bundled), sorted(set(sizes) - {b"large"}))
        self.assertEqual([names for op, names in seen if op == frames.FETCH], [[b"large"]])
        self.assertLess(len(seen), 6)

    def test_failed_file_retried_alone(self) -> None:
        seen = self.serve_files({b"a": 3, b"b": 4, b"c": 5}, spoil={b"b": ["digest"]})
        self.assert_mirrored(self.run_job(source()))
        self.assertEqual(seen[-1], (frames.FETCH, [b"b"]))
        self.assertEqual({op for op, _ in seen[:-1]}, {frames.FETCH_MANY})

    def test_failed_twice_reported_once(self) -> None:
        self.serve_files({b"a": 3, b"b": 4}, spoil={b"b": ["error", "digest"]})
        observer = self.run_job(source())
        [(_, path, message)] = observer.errors
        self.assertEqual(path, "b")
        self.assertIn("BLAKE3 mismatch", message)
        run = observer.done[0]
        self.assertEqual((run.failed, run.stats.count, run.ok), (1, 1, False))
        files_done, bytes_done, files_total, _, _ = observer.progress_events[-1]
        self.assertEqual((files_done, bytes_done, files_total), (1, 3, 2))

    def test_a_spec_with_a_delay_fetches_file_by_file(self) -> None:
        seen = self.serve_files({b"a": 3, b"b": 4})
        self.assert_mirrored(self.run_job(SourceRequest("10.0.0.1", 7000, "", 0.5)))
        self.assertEqual(sorted(seen), [(frames.FETCH, [b"a"]), (frames.FETCH, [b"b"])])

    def test_unreachable_source(self) -> None:
        """No connection: every file of the bundle fails (retried alone), none is lost."""
        observer = self.run_job(source(port=7999))
        self.assertEqual(observer.finished, [False])

    def test_batch_split_per_source(self) -> None:
        calls: list[tuple[str, Any]] = []

        class Run:
            def __init__(self, name: str, delay: float = 0.0) -> None:
                self.name = name
                self.request = SourceRequest("h", 1, "", delay)

            async def transfer(self, parts, entry, attempts=2) -> None:
                calls.append(("one", (self.name, parts)))

            async def transfer_bundle(self, items) -> None:
                calls.append(("bundle", (self.name, [i.parts for i in items])))

        from mirror.mirror_server.job import WorkItem

        a, b, slow = Run("a"), Run("b"), Run("slow", delay=1.0)

        def item(run: Run, name: str, size: int = 10) -> WorkItem:
            return WorkItem(cast(Any, run), (name,), frames.Entry(self.F, 0o644, size, 0,
                                                                  name.encode()))

        batch = [item(a, "1"), item(b, "2"), item(a, "3"), item(slow, "4"),
                 item(a, "big", frames.BUNDLE_FILE_MAX + 1), item(b, "5"), item(a, "6"),
                 item(a, "7")]
        self.service.settings.bundle_files = 2
        for d in self.service._transfers(batch):
            self.successResultOf(d)
        self.assertEqual(sorted(calls), sorted([
            ("bundle", ("a", [("1",), ("3",)])), ("bundle", ("a", [("6",), ("7",)])),
            ("bundle", ("b", [("2",), ("5",)])),
            ("one", ("slow", ("4",))), ("one", ("a", ("big",))),
        ]))
        calls.clear()
        self.service.settings.bundle_files = 0  # bundles off: every file alone
        for d in self.service._transfers(batch[:2]):
            self.successResultOf(d)
        self.assertEqual(sorted(calls), [("one", ("a", ("1",))), ("one", ("b", ("2",)))])



class ListedSizeHeld(FakeServerTestCase):
    """FETCH is held to the size the listing announced (issue 7): a server that listed
    3 bytes cannot send 8, and the progress totals stay those of the listing."""

    F = frames.KIND_FILE

    def test_size_differing_from_the_listing_fails_the_file(self) -> None:
        self.serve_fake([(self.F, b"f", 3), (self.F, b"good", 4)],
                        {b"f": b"content!", b"good": b"good"})
        observer = self.run_job(source())
        (_, path, message), = observer.errors
        self.assertEqual(path, "f")
        self.assertIn("listed with 3 bytes, now 8", message)
        run = observer.done[0]
        self.assertEqual((run.failed, run.stats.count, run.ok), (1, 1, False))
        top = self.mirror / "10.0.0.1_7000"
        self.assertFalse((top / "f").exists())
        self.assertEqual(list(self.mirror.rglob(".mirror-tmp-*")), [])
        files_done, bytes_done, files_total, bytes_total, _ = observer.progress_events[-1]
        self.assertEqual((files_done, bytes_done, files_total, bytes_total), (1, 4, 2, 7))

    def test_retried_once(self) -> None:
        """A file that changed back (the listed size again) on the retry is mirrored."""
        sizes = iter([b"content!", b"abc"])

        def make():
            server = FakeContentServer([(self.F, b"f", 3)], {})
            server.files = _Changing(lambda: next(sizes))
            return server

        self.network.listen("10.0.0.1", 7000, Factory.forProtocol(make))
        observer = self.run_job(source())
        self.assertEqual(observer.errors, [])
        self.assertEqual((self.mirror / "10.0.0.1_7000" / "f").read_bytes(), b"abc")


class _Changing(dict):
    """A FakeContentServer's files whose every lookup gives the next version."""

    def __init__(self, next_version) -> None:
        super().__init__()
        self.next_version = next_version

    def get(self, name, default=None):
        return self.next_version()

    def __getitem__(self, name):
        return self.next_version()


class TransferBookkeeping(SynchronousTestCase):
    """A transfer that blows up still stops being pending: the job can never hang on it."""

    def test_unexpected_exception_still_finishes_the_file(self) -> None:
        from mirror.mirror_server.job import SourceRun

        finished = []
        run = SourceRun.__new__(SourceRun)
        run.job = SimpleNamespace(cancelled=False)  # type: ignore[assignment]
        run._finished_one = lambda: finished.append(True)

        async def boom(parts, size, attempts=2):
            raise RuntimeError("bug")

        run._attempts = boom
        entry = frames.Entry(frames.KIND_FILE, 0o644, 1, 0, b"a")
        d = Deferred.fromCoroutine(run.transfer(("a",), entry))
        self.failureResultOf(d, RuntimeError)
        self.assertEqual(finished, [True])

    def bundle_run(self, attempt) -> tuple[Any, list, list]:
        from mirror.mirror_server.job import SourceRun

        finished: list[bool] = []
        singles: list[tuple] = []
        run = SourceRun.__new__(SourceRun)
        run.job = SimpleNamespace(cancelled=False)  # type: ignore[assignment]
        run.label = "src"
        run._finished_one = lambda: finished.append(True)
        run._bundle_attempt = attempt

        async def transfer(parts, entry, attempts=2) -> None:
            singles.append((parts, attempts))

        run.transfer = transfer
        return run, finished, singles

    def items(self, run) -> list:
        from mirror.mirror_server.job import WorkItem

        entry = frames.Entry(frames.KIND_FILE, 0o644, 1, 0, b"a")
        return [WorkItem(run, ("a",), entry), WorkItem(run, ("b",), entry)]

    def test_unexpected_exception_in_a_bundle_sends_its_files_one_by_one(self) -> None:
        async def boom(items):
            raise RuntimeError("bug")

        run, finished, singles = self.bundle_run(boom)
        self.successResultOf(Deferred.fromCoroutine(run.transfer_bundle(self.items(run))))
        self.assertEqual(singles, [(("a",), 1), (("b",), 1)])  # each counted by `transfer`
        self.assertEqual(finished, [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_cancelled_bundle_still_finishes_its_files(self) -> None:
        waiting: Deferred[None] = Deferred()

        async def hang(items):
            await waiting

        run, finished, singles = self.bundle_run(hang)
        d = Deferred.fromCoroutine(run.transfer_bundle(self.items(run)))
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual((finished, singles), ([True, True], []))
