"""FileReceiver: one FETCH into the store, small files in one hop, large ones streamed."""

from __future__ import annotations

import errno
import hashlib
import os

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from mirror import paths
from mirror.mirror_server.content_client import FlowControl
from mirror.mirror_server.receiver import SMALL_FILE, FileReceiver
from mirror.mirror_server.store import MirrorStore, StoreError
from mirror.threads import InlineThreads
from mirror.wire.frames import FileHeader
from tests.unit.helpers import StepThreads

MTIME = 1_400_000_000_000_000_001


class ReceiverTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        self.mirror = os.path.join(base, "mirror")
        os.makedirs(self.mirror)
        self.store = MirrorStore(self.mirror, "h_1")
        self.addCleanup(self.store.close)
        self.top = os.path.join(self.mirror, "h_1")
        self.calls: list[str] = []
        self.flow = FlowControl(lambda: self.calls.append("pause"),
                                lambda: self.calls.append("resume"), high=1 << 20, low=1 << 18)
        self.counted = 0

    def count(self, n: int) -> None:
        self.counted += n

    def receiver(self, *parts: str, threads=None) -> FileReceiver:
        return FileReceiver(self.store, parts, threads or InlineThreads(), self.count)

    def temporaries(self) -> list[str]:
        return [os.path.join(d, n) for d, ds, fs in os.walk(self.top) for n in fs + ds
                if n.startswith(paths.TEMP_PREFIX)]

    def read(self, *parts: str) -> bytes:
        with open(os.path.join(self.top, *parts), "rb") as f:
            return f.read()

    def receive(self, r: FileReceiver, data: bytes, piece: int = 65536) -> FileHeader:
        header = FileHeader(len(data), len(data), MTIME, 0o600)
        r.head(header, self.flow)
        view = memoryview(data)
        for i in range(0, len(data), piece):
            r.data(view[i : i + piece])
        return header

    def commit(self, r: FileReceiver, header: FileHeader, data: bytes) -> Deferred:
        return Deferred.fromCoroutine(r.commit(header, hashlib.sha256(data).digest()))


class Receiving(ReceiverTestCase):
    def test_small_file(self) -> None:
        data = b"small file contents"
        r = self.receiver("d", "small")
        header = self.receive(r, data, piece=4)
        self.assertFalse(os.path.exists(os.path.join(self.top, "d", "small")))
        self.successResultOf(self.commit(r, header, data))
        self.assertEqual(self.read("d", "small"), data)
        self.assertEqual(os.stat(os.path.join(self.top, "d", "small")).st_mtime_ns, MTIME)
        self.assertEqual(self.counted, len(data))
        self.assertEqual((self.flow.pending, self.calls), (0, []))
        self.assertEqual(self.temporaries(), [])

    def test_largest_small_file(self) -> None:
        data = os.urandom(SMALL_FILE)
        r = self.receiver("s")
        self.successResultOf(self.commit(r, self.receive(r, data), data))
        self.assertEqual(self.read("s"), data)

    def test_large_file(self) -> None:
        data = os.urandom(3 * SMALL_FILE + 17)
        r = self.receiver("d", "large")
        header = self.receive(r, data)
        # Streamed to a temporary file as it came; the final name waits for the commit.
        self.assertEqual(len(self.temporaries()), 1)
        self.assertFalse(os.path.exists(os.path.join(self.top, "d", "large")))
        self.successResultOf(self.commit(r, header, data))
        self.assertEqual(self.read("d", "large"), data)
        self.assertEqual(self.counted, len(data))
        self.assertEqual(self.flow.pending, 0)
        self.assertEqual(self.temporaries(), [])

    def test_empty_file(self) -> None:
        r = self.receiver("e")
        self.successResultOf(self.commit(r, self.receive(r, b""), b""))
        self.assertEqual(self.read("e"), b"")

    def test_large_file_bad_digest(self) -> None:
        old = b"old version"
        with open(os.path.join(self.top, "f"), "wb") as f:
            f.write(old)
        data = os.urandom(SMALL_FILE + 1)
        r = self.receiver("f")
        header = self.receive(r, data)
        d = Deferred.fromCoroutine(r.commit(header, b"\x00" * 32))
        self.assertIn("SHA-256 mismatch", str(self.failureResultOf(d, StoreError).value))
        self.assertEqual(self.read("f"), old)
        self.assertEqual(self.temporaries(), [])

    def test_small_file_bad_digest(self) -> None:
        r = self.receiver("f")
        header = self.receive(r, b"abc")
        d = Deferred.fromCoroutine(r.commit(header, b"\x00" * 32))
        self.failureResultOf(d, StoreError)
        self.assertFalse(os.path.exists(os.path.join(self.top, "f")))
        self.assertEqual(self.temporaries(), [])

    def test_large_file_short(self) -> None:
        data = os.urandom(SMALL_FILE + 100)
        r = self.receiver("f")
        header = FileHeader(len(data) + 1, len(data) + 1, MTIME, 0o600)
        r.head(header, self.flow)
        r.data(memoryview(data))
        d = Deferred.fromCoroutine(r.commit(header, hashlib.sha256(data).digest()))
        self.assertIn("size mismatch", str(self.failureResultOf(d, StoreError).value))
        self.assertEqual(self.temporaries(), [])


class Discarding(ReceiverTestCase):
    def test_large_after_partial_data(self) -> None:
        data = os.urandom(2 * SMALL_FILE)
        r = self.receiver("d", "f")
        r.head(FileHeader(len(data), len(data), MTIME, 0o600), self.flow)
        r.data(memoryview(data)[:SMALL_FILE])
        self.assertEqual(len(self.temporaries()), 1)
        self.successResultOf(Deferred.fromCoroutine(r.discard()))
        self.assertEqual(self.temporaries(), [])
        self.assertEqual(os.listdir(os.path.join(self.top, "d")), [])
        self.assertEqual(self.flow.pending, 0)

    def test_small_after_partial_data(self) -> None:
        r = self.receiver("f")
        r.head(FileHeader(10, 10, MTIME, 0o600), self.flow)
        r.data(memoryview(b"12345"))
        self.successResultOf(Deferred.fromCoroutine(r.discard()))
        self.assertEqual(os.listdir(self.top), [])

    def test_before_head(self) -> None:
        r = self.receiver("f")
        self.successResultOf(Deferred.fromCoroutine(r.discard()))
        self.assertEqual(os.listdir(self.top), [])

    def test_keeps_the_old_file(self) -> None:
        with open(os.path.join(self.top, "f"), "wb") as f:
            f.write(b"old")
        r = self.receiver("f")
        r.head(FileHeader(SMALL_FILE + 1, SMALL_FILE + 1, MTIME, 0o600), self.flow)
        r.data(memoryview(b"new" * 1000))
        self.successResultOf(Deferred.fromCoroutine(r.discard()))
        self.assertEqual(self.read("f"), b"old")
        self.assertEqual(self.temporaries(), [])


class Concurrency(ReceiverTestCase):
    """With disk work that completes later: ordering, back-pressure, waiting for writes."""

    def setUp(self) -> None:
        super().setUp()
        self.threads = StepThreads()

    def test_writes_in_order_and_flow_accounting(self) -> None:
        data = os.urandom(4 * SMALL_FILE)
        r = self.receiver("f", threads=self.threads)
        header = FileHeader(len(data), len(data), MTIME, 0o600)
        r.head(header, self.flow)
        view = memoryview(data)
        for i in range(0, len(data), 65536):
            r.data(view[i : i + 65536])
        # Nothing has run yet: every byte is queued and counted as pending.
        self.assertEqual(self.flow.pending, len(data))
        self.assertEqual(self.calls, [])  # 1 MiB is not above the high mark
        d = self.commit(r, header, data)
        self.assertNoResult(d)
        self.threads.run_all()
        self.successResultOf(d)
        self.assertEqual(self.read("f"), data)
        self.assertEqual(self.flow.pending, 0)

    def test_pause_and_resume(self) -> None:
        data = os.urandom(1 << 21)  # 2 MiB, above the 1 MiB high mark
        r = self.receiver("f", threads=self.threads)
        header = self.receive(r, data)
        self.assertEqual(self.calls, ["pause"])
        self.threads.run_all()
        self.assertEqual(self.calls, ["pause", "resume"])
        self.assertEqual(self.flow.pending, 0)
        d = self.commit(r, header, data)
        self.threads.run_all()
        self.successResultOf(d)
        self.assertEqual(self.read("f"), data)

    def test_discard_waits_for_a_write_in_flight(self) -> None:
        data = os.urandom(SMALL_FILE * 2)
        r = self.receiver("f", threads=self.threads)
        r.head(FileHeader(len(data), len(data), MTIME, 0o600), self.flow)
        self.threads.step()  # the temporary file is created
        r.data(memoryview(data)[:1000])
        self.assertEqual(len(self.threads.queue), 1)  # a write is in flight
        d = Deferred.fromCoroutine(r.discard())
        self.assertNoResult(d)
        self.threads.run_all()
        self.successResultOf(d)
        self.assertEqual(self.temporaries(), [])
        self.assertEqual(self.flow.pending, 0)
        self.assertFalse(os.path.exists(os.path.join(self.top, "f")))

    def test_data_before_the_temporary_file_exists(self) -> None:
        data = os.urandom(SMALL_FILE + 5000)
        r = self.receiver("f", threads=self.threads)
        header = self.receive(r, data, piece=1000)  # create() has not run yet
        self.assertEqual(self.flow.pending, len(data))
        d = self.commit(r, header, data)
        self.threads.run_all()
        self.successResultOf(d)
        self.assertEqual(self.read("f"), data)


class Failures(ReceiverTestCase):
    def test_disk_full_while_streaming(self) -> None:
        data = os.urandom(2 * SMALL_FILE)
        r = self.receiver("f")
        header = FileHeader(len(data), len(data), MTIME, 0o600)
        r.head(header, self.flow)
        r.data(memoryview(data)[:1000])

        def full(fd, piece):
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "write", full)
        r.data(memoryview(data)[1000:2000])
        r.data(memoryview(data)[2000:])  # dropped: the attempt has failed
        self.assertEqual(self.flow.pending, 0)
        d = Deferred.fromCoroutine(r.commit(header, hashlib.sha256(data).digest()))
        self.assertIn("no space left on device", str(self.failureResultOf(d, StoreError).value))
        self.successResultOf(Deferred.fromCoroutine(r.discard()))
        self.assertEqual(self.temporaries(), [])
        self.assertEqual(os.listdir(self.top), [])

    def test_symlinked_parent_for_a_large_file(self) -> None:
        outside = os.path.abspath(self.mktemp())
        os.makedirs(outside)
        os.symlink(outside, os.path.join(self.top, "d"))
        data = os.urandom(SMALL_FILE + 1)
        r = self.receiver("d", "f")
        header = self.receive(r, data)
        self.assertEqual(self.flow.pending, 0)
        d = Deferred.fromCoroutine(r.commit(header, hashlib.sha256(data).digest()))
        self.failureResultOf(d, StoreError)
        self.successResultOf(Deferred.fromCoroutine(r.discard()))
        self.assertEqual(os.listdir(outside), [])

    def test_symlinked_parent_for_a_small_file(self) -> None:
        outside = os.path.abspath(self.mktemp())
        os.makedirs(outside)
        os.symlink(outside, os.path.join(self.top, "d"))
        r = self.receiver("d", "f")
        header = self.receive(r, b"abc")
        d = Deferred.fromCoroutine(r.commit(header, hashlib.sha256(b"abc").digest()))
        self.failureResultOf(d, StoreError)
        self.assertEqual(os.listdir(outside), [])


class PiecesAreCopied(SynchronousTestCase):
    """A queued piece must not pin the socket read it came from (review finding: a server
    mixing one byte of a file into each 1 MiB read pinned 2 GB while flow control counted
    2 KB)."""

    def test_streamed_and_small_pieces_do_not_reference_the_read(self) -> None:
        for size in (SMALL_FILE + 1, 10):
            store = type("Store", (), {"create": None})()  # never called: nothing steps
            receiver = FileReceiver(store, ("f",), StepThreads())
            receiver.head(FileHeader(size, size, 0, 0o644), FlowControl(lambda: None, lambda: None))
            read = bytearray(b"x" * 4096)
            receiver.data(memoryview(read)[:1])
            read[0] = ord("y")  # the socket buffer is reused or freed after dataReceived
            held = receiver._queue if size > SMALL_FILE else receiver._small
            self.assertEqual([bytes(p) for p in held], [b"x"])
