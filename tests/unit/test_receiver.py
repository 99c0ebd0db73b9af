"""FileReceiver: one FETCH into the store, small files in one hop, large ones streamed."""

from __future__ import annotations

import errno
import os

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mirror import paths
from mirror.hashing import digest_of
from mirror.mirror_server.content_client import ContentClientProtocol, FlowControl, TransferError
from mirror.mirror_server.receiver import SMALL_FILE, FileReceiver
from mirror.mirror_server.store import DescriptorBudget, MirrorStore, StoreError
from mirror.testing import InlineThreads, StepThreads
from mirror.wire import frames
from mirror.wire.frames import FileHeader
from tests.unit.helpers import RecordingSink, parse_frames

MTIME = 1_400_000_000_000_000_001
STALL = 30.0


class ReceiverTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        self.mirror = os.path.join(base, "mirror")
        os.makedirs(self.mirror)
        self.store = MirrorStore(self.mirror, "h_1", DescriptorBudget())
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
        return Deferred.fromCoroutine(r.commit(header, digest_of(data)))


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
        header = self.receive(r, data)
        # Still gathered in memory: no temporary file, no flow-control credit held.
        self.assertEqual((self.temporaries(), self.flow.pending), ([], 0))
        self.successResultOf(self.commit(r, header, data))
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
        self.assertIn("BLAKE3 mismatch", str(self.failureResultOf(d, StoreError).value))
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
        d = Deferred.fromCoroutine(r.commit(header, digest_of(data)))
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

    def test_data_before_head_is_a_callers_bug(self) -> None:
        """`FetchSink` says head comes first (content_client fails a DATA before FILE
        itself): a caller that breaks this is stopped at once, with a message naming the
        mistake, and nothing reaches the disk."""
        r = self.receiver("f")
        with self.assertRaises(AssertionError) as cm:
            r.data(memoryview(b"x"))
        self.assertEqual(str(cm.exception), "data before head")
        self.successResultOf(Deferred.fromCoroutine(r.discard()))
        self.assertEqual(os.listdir(self.top), [])

    def test_late_piece_after_discard(self) -> None:
        # Nothing more is queued or written once discarded (a connection resumed by the
        # credit coming back may still deliver a piece): it holds no credit.
        r = self.receiver("f")
        r.head(FileHeader(2 * SMALL_FILE, 2 * SMALL_FILE, MTIME, 0o600), self.flow)
        r.data(memoryview(b"a" * 1000))
        self.successResultOf(Deferred.fromCoroutine(r.discard()))
        r.data(memoryview(b"b" * 1000))
        self.assertEqual((self.flow.pending, self.calls), (0, []))
        self.assertEqual(r.received, 2000)
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

    def start_streaming(self, data: bytes, first: int) -> tuple[FileReceiver, FileHeader]:
        """A large file whose temporary file exists and whose ``first`` bytes are being
        written (the write in flight)."""
        r = self.receiver("f", threads=self.threads)
        header = FileHeader(len(data), len(data), MTIME, 0o600)
        r.head(header, self.flow)
        self.assertTrue(self.threads.step())  # the temporary file is created
        r.data(memoryview(data)[:first])
        self.assertEqual(len(self.threads.queue), 1)
        return r, header

    def test_commit_waits_for_the_write_in_flight(self) -> None:
        # Verifying and renaming never run in a thread beside a write of the same file.
        data = os.urandom(SMALL_FILE + 1000)
        r, header = self.start_streaming(data, len(data))
        d = self.commit(r, header, data)
        self.assertEqual(len(self.threads.queue), 1)  # still only the write
        self.assertTrue(self.threads.step())
        self.assertEqual(len(self.threads.queue), 1)  # then the commit
        self.threads.run_all()
        self.successResultOf(d)
        self.assertEqual(self.read("f"), data)

    def test_commit_waiting_for_writes_fails_when_discarded(self) -> None:
        data = os.urandom(SMALL_FILE + 1000)
        r, header = self.start_streaming(data, 1000)
        r.data(memoryview(data)[1000:])  # queued behind the write in flight
        committed = self.commit(r, header, data)
        self.assertNoResult(committed)
        discarded = Deferred.fromCoroutine(r.discard())
        self.threads.run_all()
        failure = self.failureResultOf(committed, RuntimeError)
        self.assertEqual(str(failure.value), "discarded")
        self.successResultOf(discarded)
        self.assertFalse(os.path.exists(os.path.join(self.top, "f")))
        self.assertEqual(self.temporaries(), [])
        self.assertEqual(self.flow.pending, 0)

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
        d = Deferred.fromCoroutine(r.commit(header, digest_of(data)))
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
        d = Deferred.fromCoroutine(r.commit(header, digest_of(data)))
        self.failureResultOf(d, StoreError)
        self.successResultOf(Deferred.fromCoroutine(r.discard()))
        self.assertEqual(os.listdir(outside), [])

    def test_symlinked_parent_for_a_small_file(self) -> None:
        outside = os.path.abspath(self.mktemp())
        os.makedirs(outside)
        os.symlink(outside, os.path.join(self.top, "d"))
        r = self.receiver("d", "f")
        header = self.receive(r, b"abc")
        d = Deferred.fromCoroutine(r.commit(header, digest_of(b"abc")))
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

    def test_only_a_small_part_of_a_read_is_copied(self) -> None:
        # Copied when under a quarter of its read; a larger piece is queued as it came.
        for n, copied in ((24, True), (25, False), (100, False)):
            store = type("Store", (), {"create": None})()
            receiver = FileReceiver(store, ("f",), StepThreads())
            receiver.head(FileHeader(SMALL_FILE + 1, SMALL_FILE + 1, 0, 0o644),
                          FlowControl(lambda: None, lambda: None))
            read = b"x" * 100
            piece = memoryview(read)[:n]
            receiver.data(piece)
            self.assertEqual(receiver._queue[0] is not piece, copied, n)
            self.assertEqual(bytes(receiver._queue[0]), read[:n])


class CreditComesBack(ReceiverTestCase):
    """Flow-control credit of pieces queued behind a write comes back when the attempt ends
    early, and the connection resumes.

    On a real `ContentClientProtocol`: while it is paused it reads nothing and its requests'
    stall timers are stopped, so credit that never came back would hang every request on the
    connection for good, with no timeout to end them (issue 7, item 3).
    """

    PIECE = 1 << 19  # 512 KiB; the connection pauses above 1 MiB pending, resumes at 512 KiB

    def setUp(self) -> None:
        super().setUp()
        self.threads = StepThreads()
        self.clock = MemoryReactorClock()
        self.client = ContentClientProtocol(clock=self.clock, name="srv:1",
                                            stall_timeout=STALL)
        self.transport = StringTransport()
        self.client.makeConnection(self.transport)
        self.flow = self.client.flow = FlowControl(self.client.pause, self.client.resume,
                                                   high=2 * self.PIECE, low=self.PIECE)
        self.writes = 0
        real_write = os.write

        def counting_write(fd, data):
            self.writes += 1
            return real_write(fd, data)

        self.patch(os, "write", counting_write)

    def start(self, size: int) -> tuple[FileReceiver, Deferred, int]:
        """A FETCH of ``f`` into a receiver whose temporary file exists."""
        r = self.receiver("f", threads=self.threads)
        d = self.client.fetch("f", r)
        rid = parse_frames(self.transport.value())[-1][1]
        self.transport.clear()
        header = FileHeader(size, size, MTIME, 0o600)
        self.client.dataReceived(frames.frame(frames.FILE, rid, frames.encode_file(header)))
        self.assertTrue(self.threads.step())  # create()
        self.assertEqual(self.threads.queue, [])
        return r, d, rid

    def feed(self, rid: int, body: bytes) -> None:
        self.client.dataReceived(frames.data_header(rid, len(body)) + body)

    def disk_full(self) -> None:
        def full(fd, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "write", full)

    def assert_resumed(self, *requests: Deferred) -> None:
        """No credit held, reading again, and the stall timers of ``requests`` running."""
        self.assertEqual(self.flow.pending, 0)
        self.assertFalse(self.flow.paused)
        self.assertFalse(self.client.reading_paused)
        self.assertEqual(self.transport.producerState, "producing")
        self.clock.advance(STALL)
        for d in requests:
            self.assertIn("stalled", str(self.failureResultOf(d, TransferError).value))

    def test_discard_with_pieces_queued_behind_a_write(self) -> None:
        data = os.urandom(3 * self.PIECE)
        r, d, rid = self.start(len(data))
        other = self.client.fetch("g", RecordingSink())  # a request waiting on the connection
        self.feed(rid, data[: self.PIECE])
        self.assertEqual(len(self.threads.queue), 1)  # its write is in flight
        self.feed(rid, data[self.PIECE : 2 * self.PIECE])
        self.feed(rid, data[2 * self.PIECE :])  # both queued behind it
        self.assertEqual(self.flow.pending, len(data))
        self.assertTrue(self.client.reading_paused)
        discarded = Deferred.fromCoroutine(r.discard())
        # The queued pieces' credit comes back at once, the write's when it ends.
        self.assertEqual(self.flow.pending, self.PIECE)
        self.assertNoResult(discarded)
        self.threads.run_all()
        self.successResultOf(discarded)
        self.assertEqual(self.writes, 1)  # the queued pieces were never written
        self.assertEqual(self.temporaries(), [])
        self.assert_resumed(d, other)

    def test_write_failing_with_pieces_queued_behind_it(self) -> None:
        data = os.urandom(3 * self.PIECE)
        r, d, rid = self.start(len(data))
        other = self.client.fetch("g", RecordingSink())
        self.feed(rid, data[: self.PIECE])
        self.feed(rid, data[self.PIECE : 2 * self.PIECE])
        self.feed(rid, data[2 * self.PIECE :])
        self.assertTrue(self.client.reading_paused)
        self.disk_full()
        self.assertTrue(self.threads.step())  # the write in flight fails
        self.assertEqual(self.threads.queue, [])  # nothing more is written after a failure
        self.assert_resumed(d, other)
        committed = Deferred.fromCoroutine(r.commit(FileHeader(len(data), len(data), MTIME,
                                                               0o600), b"\x00" * 32))
        self.assertIn("no space left on device",
                      str(self.failureResultOf(committed, StoreError).value))
        discarded = Deferred.fromCoroutine(r.discard())
        self.threads.run_all()
        self.successResultOf(discarded)
        self.assertEqual(self.temporaries(), [])
        self.assertEqual(self.flow.pending, 0)  # no credit given back twice

    def test_write_failing_while_the_connection_resumes(self) -> None:
        # Credit coming back resumes the connection, which at once delivers what it read
        # before it paused; the receiver must already know its write failed, or it starts
        # writing again after the failure and keeps that credit until that write ends too.
        data = os.urandom(4 * self.PIECE)
        r, d, rid = self.start(len(data))
        self.feed(rid, data[: 2 * self.PIECE])  # in flight, at the high mark
        self.feed(rid, data[2 * self.PIECE : 3 * self.PIECE])  # queued: pauses
        self.assertTrue(self.client.reading_paused)
        self.feed(rid, data[3 * self.PIECE :])  # read, but held while paused
        self.assertEqual(self.flow.pending, 3 * self.PIECE)
        self.disk_full()
        self.assertTrue(self.threads.step())  # the write fails
        self.assertEqual(self.threads.queue, [])
        self.assertEqual(r.received, len(data))  # the held piece was delivered, and dropped
        self.client.dataReceived(frames.frame(frames.FILE_END, rid, b"\x00" * 32))
        self.successResultOf(d)
        self.assert_resumed()
        committed = Deferred.fromCoroutine(r.commit(FileHeader(len(data), len(data), MTIME,
                                                               0o600), b"\x00" * 32))
        self.assertIn("no space left on device",
                      str(self.failureResultOf(committed, StoreError).value))
        discarded = Deferred.fromCoroutine(r.discard())
        self.threads.run_all()
        self.successResultOf(discarded)
        self.assertEqual(self.temporaries(), [])
