"""Resumable big files (issue 12): received into the state directory, placed once verified,
a recorded leftover re-verified and resumed from its prefix, anything doubtful fetched
again, nothing left behind."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from mirror.hashing import digest_of
from mirror.mirror_server import journal as jr
from mirror.mirror_server.content_client import ContentClientProtocol
from mirror.mirror_server.partials import RESUME_MIN, PartialDir
from mirror.mirror_server.service import MirrorService, MirrorSettings
from mirror.mirror_server.store import MirrorStore
from mirror.testing import InlineThreads
from tests.unit.test_mirror_job import JobTestCase, source

SIZE = RESUME_MIN + 1234567
PREFIX = 2 << 20


def content(size: int = SIZE) -> bytes:
    return bytes(range(256)) * (size // 256) + b"x" * (size % 256)


class PartialTests(JobTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.state = self.base / "state"
        self.state.mkdir()
        self.journal = jr.open_journal(str(self.state), self.clock, InlineThreads())
        self.partial_dir = PartialDir(str(self.state))
        self.service = MirrorService(str(self.mirror), MirrorSettings(**self.settings),
                                     reactor=self.clock, threads=InlineThreads(),
                                     endpoints=self.network.endpoint, journal=self.journal,
                                     partials=self.partial_dir)
        self.registry = self.service.registry
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.src = self.base / "src"
        self.src.mkdir()
        self.big = self.src / "big.bin"
        self.big.write_bytes(content())
        self.serve(self.src)
        self.offsets: list[int] = []
        fetch = ContentClientProtocol.fetch

        def counting(proto: Any, path: str, sink: Any, offset: int = 0, *a: Any, **kw: Any):
            self.offsets.append(offset)
            return fetch(proto, path, sink, offset, *a, **kw)

        self.patch(ContentClientProtocol, "fetch", counting)

    def placed(self) -> bytes:
        return (self.mirror / "10.0.0.1_7000" / "big.bin").read_bytes()

    def leftover(self, prefix: bytes, recorded: bytes | None = None,
                 mtime_ns: int | None = None) -> jr.JobRecord:
        """A job as a killed server left it: a partial of ``prefix`` bytes recorded with the
        digest of ``recorded`` (the prefix itself by default)."""
        name = "41-0-dead-0"
        Path(self.partial_dir.path, name).write_bytes(prefix)
        st = self.big.stat()
        part = jr.PartialRecord(0, "big.bin", name, st.st_size,
                                st.st_mtime_ns if mtime_ns is None else mtime_ns,
                                len(recorded if recorded is not None else prefix),
                                digest_of(recorded if recorded is not None else prefix).hex())
        record = jr.JobRecord("41", [source()], submitted=0.0)
        self.journal.job_submitted(record)
        self.journal.partial_saved(record.id, part)
        self.clock.advance(1)
        return self.journal.db.load()[0]

    def resume(self, record: jr.JobRecord) -> Any:
        self.registry.resume([record])
        feed = self.registry.feeds[record.id]
        assert feed.job is not None
        self.network.run_until(feed.job.finished)
        self.clock.advance(1)  # the journal's last commit
        return feed.record

    def test_big_file_through_the_state_directory(self) -> None:
        observer = self.run_job(source())
        self.assertEqual(observer.finished, [True])
        self.assertEqual(self.placed(), content())
        self.assertEqual(self.offsets, [0])
        self.assertEqual(os.listdir(self.partial_dir.path), [])
        self.clock.advance(1)
        self.assertEqual([r.partials for r in self.journal.db.load()], [[]])

    def test_big_file_synced_before_and_after_its_move(self) -> None:
        # The fsync guarantee of every placed file holds for one placed from the state
        # directory: its data before the move, the target's directory after it.
        calls: list[tuple[str, bool]] = []

        def fsync(fd: int) -> None:
            calls.append((os.readlink(f"/proc/self/fd/{fd}"), self.placed_path().exists()))

        self.patch(os, "fsync", fsync)
        self.assertEqual(self.run_job(source()).finished, [True])
        top = str(self.mirror / "10.0.0.1_7000")
        partial = [c for c in calls if c[0].startswith(self.partial_dir.path + os.sep)]
        self.assertEqual([placed for _, placed in partial], [False])
        self.assertIn((top, True), calls[calls.index(partial[0]):])

    def placed_path(self) -> Path:
        return self.mirror / "10.0.0.1_7000" / "big.bin"

    def test_recorded_prefix_resumed(self) -> None:
        record = self.resume(self.leftover(content()[:PREFIX]))
        self.assertEqual(record.state, jr.OK)
        self.assertEqual(self.offsets, [PREFIX], "only the rest is fetched")
        self.assertEqual(self.placed(), content())
        figures = record.figures[0]
        self.assertEqual((figures.files, figures.bytes), (1, SIZE))
        self.assertEqual(os.listdir(self.partial_dir.path), [])
        self.assertEqual([r.partials for r in self.journal.db.load()], [[]])

    def test_longer_leftover_cut_to_its_recorded_length(self) -> None:
        data = content()
        # Written past the last checkpoint before the kill: only the recorded part counts.
        self.resume(self.leftover(data[:PREFIX + 1000], recorded=data[:PREFIX]))
        self.assertEqual(self.offsets, [PREFIX])
        self.assertEqual(self.placed(), data)

    def test_leftover_that_differs_from_its_record_is_not_trusted(self) -> None:
        data = content()
        tampered = b"\0" * 10 + data[10:PREFIX]
        record = self.resume(self.leftover(tampered, recorded=data[:PREFIX]))
        self.assertEqual(record.state, jr.OK)
        self.assertEqual(self.offsets, [0], "fetched from zero")
        self.assertEqual(self.placed(), data)
        self.assertEqual(os.listdir(self.partial_dir.path), [])

    def test_file_changed_at_the_source_is_fetched_again(self) -> None:
        data = content()
        st = self.big.stat()
        record = self.resume(self.leftover(data[:PREFIX], mtime_ns=st.st_mtime_ns - 10**9))
        self.assertEqual(record.state, jr.OK, record.errors)
        self.assertEqual(self.offsets, [PREFIX, 0], "the stale prefix is never mixed in")
        self.assertEqual(self.placed(), data)

    def test_unrecorded_partials_swept_recorded_ones_kept(self) -> None:
        Path(self.partial_dir.path, "7-0-beef-3").write_bytes(b"left by a crash")
        Path(self.partial_dir.path, "8-0-beef-4").write_bytes(b"recorded")
        self.assertEqual(self.partial_dir.sweep({"8-0-beef-4"}), 1)
        self.assertEqual(os.listdir(self.partial_dir.path), ["8-0-beef-4"])

    def test_cancelled_job_leaves_no_partial(self) -> None:
        record = self.leftover(content()[:PREFIX])
        self.registry.resume([record])
        feed = self.registry.feeds["41"]
        assert feed.job is not None
        feed.job.cancel()
        self.network.run_until(feed.job.finished)
        self.clock.advance(1)
        self.assertEqual(feed.record.state, jr.CANCELLED)
        self.assertEqual(os.listdir(self.partial_dir.path), [])
        self.assertFalse((self.mirror / "10.0.0.1_7000" / "big.bin").exists())
        self.assertEqual([r.partials for r in self.journal.db.load()], [[]])

    def test_state_directory_on_another_file_system(self) -> None:
        """No rename across file systems: the file is copied beside its target through a
        temporary file, verified again, and the partial removed."""

        def cross_device(store: Any, src_dir_fd: int, src_name: str, parts: Any) -> None:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

        self.patch(MirrorStore, "adopt", cross_device)
        record = self.resume(self.leftover(content()[:PREFIX]))
        self.assertEqual(record.state, jr.OK, record.errors)
        self.assertEqual(self.offsets, [PREFIX])
        self.assertEqual(self.placed(), content())
        self.assertEqual(os.listdir(self.partial_dir.path), [])
        self.assertEqual(list(self.mirror.rglob(".mirror-tmp-*")), [])
