"""The mirror server's content client, fed crafted server frames on a StringTransport."""

from __future__ import annotations

import struct

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mirror.hashing import digest_of
from mirror.mirror_server.content_client import ContentClientProtocol, FlowControl, TransferError
from mirror.wire import frames
from mirror.wire.frames import FileHeader
from tests.unit.helpers import RecordingSink, parse_frames

STALL = 30.0


def file_frame(rid: int, size: int, file_size: int | None = None, mtime: int = 123,
               mode: int = 0o644) -> bytes:
    header = FileHeader(size, size if file_size is None else file_size, mtime, mode)
    return frames.frame(frames.FILE, rid, frames.encode_file(header))


def data_frame(rid: int, body: bytes) -> bytes:
    return frames.data_header(rid, len(body)) + body


def end_frame(rid: int, body: bytes) -> bytes:
    return frames.frame(frames.FILE_END, rid, digest_of(body))


def entries_frame(rid: int, *names: bytes, kind: int = frames.KIND_FILE) -> bytes:
    return frames.frame(frames.ENTRIES, rid, b"".join(
        frames.encode_entry(kind, 0o644, 1, 2, name) for name in names))


def error_frame(rid: int, code: int, message: str) -> bytes:
    return frames.frame(frames.ERROR, rid, frames.encode_error(code, message))


class ClientTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.client = ContentClientProtocol(clock=self.clock, name="srv:1",
                                            stall_timeout=STALL, max_file_size=10**6)
        self.transport = StringTransport()
        self.client.makeConnection(self.transport)
        self.sent: list[tuple[int, int, bytes]] = []

    def requests(self) -> list[tuple[int, int, bytes]]:
        self.sent += parse_frames(self.transport.value())
        self.transport.clear()
        return self.sent

    def feed(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.client.dataReceived(chunk)

    def fetch(self, path: str = "f", **kw) -> tuple[Deferred, RecordingSink, int]:
        sink = RecordingSink()
        d = self.client.fetch(path, sink, **kw)
        rid = self.requests()[-1][1]
        return d, sink, rid

    def list(self, path: str = "") -> tuple[Deferred, list, int]:
        got: list = []
        d = self.client.list(path, lambda entries: got.append(entries))
        rid = self.requests()[-1][1]
        return d, got, rid

    def failure_message(self, d: Deferred) -> str:
        return str(self.failureResultOf(d, TransferError).value)

    @property
    def aborted(self) -> bool:
        return bool(self.transport.disconnected)


class Requests(ClientTestCase):
    def test_list_request(self) -> None:
        self.list("docs")
        (opcode, rid, payload), = self.requests()
        self.assertEqual((opcode, payload), (frames.LIST, b"docs"))

    def test_fetch_request(self) -> None:
        self.fetch("a/b", offset=5, length=10, delay=1.5)
        (opcode, rid, payload), = self.requests()
        self.assertEqual(opcode, frames.FETCH)
        self.assertEqual(frames.decode_fetch(payload), (5, 10, 1500, b"a/b"))

    def test_huge_delay_capped_on_the_wire(self) -> None:
        self.fetch("f", delay=10**9)
        self.assertEqual(frames.decode_fetch(self.requests()[0][2])[2], 0xFFFFFFFF)

    def test_ids_unique(self) -> None:
        for _ in range(5):
            self.fetch()
        self.list()
        ids = [rid for _, rid, _ in self.requests()]
        self.assertEqual(len(set(ids)), 6)
        self.assertNotIn(0, ids)
        self.assertEqual(self.client.load, 6)


class Listing(ClientTestCase):
    def test_entries_and_end(self) -> None:
        d, got, rid = self.list()
        self.feed(entries_frame(rid, b"a", b"a/b"), entries_frame(rid, b"c"))
        self.assertNoResult(d)
        self.feed(frames.frame(frames.LIST_END, rid, frames.encode_list_end(3, 2)))
        self.assertEqual(self.successResultOf(d), (3, 2))
        self.assertEqual([[e.name for e in batch] for batch in got], [[b"a", b"a/b"], [b"c"]])
        self.assertEqual(self.client.load, 0)

    def test_empty_listing(self) -> None:
        d, got, rid = self.list()
        self.feed(frames.frame(frames.LIST_END, rid, frames.encode_list_end(0, 0)))
        self.assertEqual(self.successResultOf(d), (0, 0))
        self.assertEqual(got, [])

    def test_entries_wait_for_the_consumer(self) -> None:
        waiting: Deferred[None] = Deferred()
        batches: list = []

        def take(entries):
            batches.append(entries)
            return waiting if len(batches) == 1 else None

        d = self.client.list("", take)
        rid = self.requests()[0][1]
        self.feed(entries_frame(rid, b"a") + entries_frame(rid, b"b")
                  + frames.frame(frames.LIST_END, rid, frames.encode_list_end(2, 0)))
        self.assertEqual(len(batches), 1)  # nothing more read until the first is taken in
        self.assertEqual(self.transport.producerState, "paused")
        self.clock.advance(STALL * 3)  # our own pause is not the server stalling
        self.assertNoResult(d)
        waiting.callback(None)
        self.assertEqual(len(batches), 2)
        self.assertEqual(self.successResultOf(d), (2, 0))
        self.assertEqual(self.transport.producerState, "producing")

    def test_error(self) -> None:
        d, _, rid = self.list("nope")
        self.feed(error_frame(rid, frames.E_NOT_FOUND, "nope: no such file or directory"))
        self.assertEqual(self.failure_message(d), "nope: no such file or directory")
        self.assertFalse(self.aborted)

    def test_file_for_a_list(self) -> None:
        d, _, rid = self.list()
        other, _, other_rid = self.fetch()
        self.feed(file_frame(rid, 1))
        self.assertIn("unexpected response 0x83", self.failure_message(d))
        self.assertFalse(self.aborted)
        self.feed(file_frame(other_rid, 1), data_frame(other_rid, b"x"), end_frame(other_rid, b"x"))
        self.successResultOf(other)

    def test_data_for_a_list(self) -> None:
        d, _, rid = self.list()
        self.feed(data_frame(rid, b"x"))
        self.assertIn("unexpected DATA", self.failure_message(d))
        self.assertFalse(self.aborted)

    def test_garbage_entries_break_the_connection(self) -> None:
        d, _, rid = self.list()
        other, _, _ = self.fetch()
        self.feed(frames.frame(frames.ENTRIES, rid, b"\x01\x02\x03"))
        self.assertIn("protocol error", self.failure_message(d))
        self.assertIn("protocol error", self.failure_message(other))
        self.assertTrue(self.aborted)

    def test_bad_list_end_breaks_the_connection(self) -> None:
        d, _, rid = self.list()
        self.feed(frames.frame(frames.LIST_END, rid, b"\x00"))
        self.assertIn("bad LIST_END", self.failure_message(d))
        self.assertTrue(self.aborted)


class Fetching(ClientTestCase):
    def test_whole_file(self) -> None:
        d, sink, rid = self.fetch()
        body = b"hello world"
        self.feed(file_frame(rid, len(body), mtime=-5, mode=0o4755), data_frame(rid, body[:5]),
                  data_frame(rid, body[5:]), end_frame(rid, body))
        header, digest = self.successResultOf(d)
        self.assertEqual(header, FileHeader(11, 11, -5, 0o4755))
        self.assertEqual(digest, digest_of(body))
        self.assertEqual(sink.header, header)
        self.assertIs(sink.flow, self.client.flow)
        self.assertEqual(sink.received, body)
        self.assertEqual(self.client.load, 0)

    def test_empty_file(self) -> None:
        d, sink, rid = self.fetch()
        self.feed(file_frame(rid, 0), end_frame(rid, b""))
        header, _ = self.successResultOf(d)
        self.assertEqual(header.size, 0)
        self.assertEqual(sink.received, b"")

    def test_byte_by_byte(self) -> None:
        d, sink, rid = self.fetch()
        body = bytes(range(200))
        wire = file_frame(rid, 200) + data_frame(rid, body) + end_frame(rid, body)
        for i in range(len(wire)):
            self.feed(wire[i : i + 1])
        self.successResultOf(d)
        self.assertEqual(sink.received, body)

    def test_pipelined_and_interleaved(self) -> None:
        d1, s1, r1 = self.fetch("one")
        d2, s2, r2 = self.fetch("two")
        self.feed(file_frame(r2, 2), file_frame(r1, 2), data_frame(r1, b"a"),
                  data_frame(r2, b"X"), data_frame(r2, b"Y"), end_frame(r2, b"XY"),
                  data_frame(r1, b"b"), end_frame(r1, b"ab"))
        self.successResultOf(d1)
        self.successResultOf(d2)
        self.assertEqual((s1.received, s2.received), (b"ab", b"XY"))

    def test_short(self) -> None:
        d, sink, rid = self.fetch("f")
        self.feed(file_frame(rid, 10), data_frame(rid, b"12345"), end_frame(rid, b"12345"))
        message = self.failure_message(d)
        self.assertIn("short", message)
        self.assertIn("5 of 10", message)
        self.assertFalse(self.aborted)

    def test_more_in_one_frame(self) -> None:
        d, sink, rid = self.fetch("f")
        self.feed(file_frame(rid, 5), data_frame(rid, b"1234567890"))
        self.assertIn("more bytes than the announced 5", self.failure_message(d))
        self.assertEqual(sink.received, b"")  # the excess never reaches the disk

    def test_more_over_several_frames(self) -> None:
        d, sink, rid = self.fetch("f")
        self.feed(file_frame(rid, 5), data_frame(rid, b"123"), data_frame(rid, b"456"))
        self.assertIn("more bytes", self.failure_message(d))
        self.assertEqual(sink.received, b"123")
        # The rest of that answer is ignored; the connection carries on.
        self.feed(data_frame(rid, b"7"), end_frame(rid, b"1234567"))
        self.assertFalse(self.aborted)

    def test_size_above_the_limit(self) -> None:
        d, sink, rid = self.fetch("f")
        self.feed(file_frame(rid, 10**6 + 1))
        self.assertIn("exceeds the limit", self.failure_message(d))
        self.assertIsNone(sink.header)
        self.feed(data_frame(rid, b"x" * 100))
        self.assertEqual(sink.received, b"")
        self.assertFalse(self.aborted)

    def test_absurd_size(self) -> None:
        d, sink, rid = self.fetch("f")
        self.feed(file_frame(rid, 2**64 - 1))
        self.assertIn("exceeds the limit", self.failure_message(d))

    def test_error(self) -> None:
        d, _, rid = self.fetch("f")
        self.feed(error_frame(rid, frames.E_NOT_ALLOWED, "'f': is a symbolic link"))
        self.assertEqual(self.failure_message(d), "'f': is a symbolic link")

    def test_error_after_some_data(self) -> None:
        d, sink, rid = self.fetch("f")
        self.feed(file_frame(rid, 10), data_frame(rid, b"123"),
                  error_frame(rid, frames.E_CHANGED, "f: file changed while being sent"))
        self.assertIn("changed", self.failure_message(d))
        self.assertEqual(sink.received, b"123")

    def test_error_without_message(self) -> None:
        d, _, rid = self.fetch("some/file")
        self.feed(frames.frame(frames.ERROR, rid, b"\x00\x05"))
        self.assertEqual(self.failure_message(d), "some/file: error from server")

    def test_error_message_sanitised(self) -> None:
        d, _, rid = self.fetch("f")
        self.feed(error_frame(rid, 1, "evil\n\x1b[2Jmessage"))
        message = self.failure_message(d)
        self.assertNotIn("\n", message)
        self.assertNotIn("\x1b", message)

    def test_entries_for_a_fetch(self) -> None:
        d, _, rid = self.fetch()
        self.feed(entries_frame(rid, b"x"))
        self.assertIn("unexpected response 0x81", self.failure_message(d))
        self.assertFalse(self.aborted)

    def test_file_end_before_file(self) -> None:
        d, _, rid = self.fetch()
        self.feed(end_frame(rid, b""))
        self.assertIn("unexpected response 0x85", self.failure_message(d))

    def test_data_before_file(self) -> None:
        d, sink, rid = self.fetch()
        self.feed(data_frame(rid, b"x"))
        self.assertIn("DATA before FILE", self.failure_message(d))
        self.assertEqual(sink.received, b"")

    def test_second_file(self) -> None:
        d, _, rid = self.fetch()
        self.feed(file_frame(rid, 1), file_frame(rid, 1))
        self.assertIn("unexpected response 0x83", self.failure_message(d))

    def test_malformed_digest(self) -> None:
        # A digest of the wrong length is never taken as a success.
        d, _, rid = self.fetch()
        self.feed(file_frame(rid, 1), data_frame(rid, b"x"),
                  frames.frame(frames.FILE_END, rid, b"\x00" * 33))
        self.failureResultOf(d, TransferError)

    def test_bad_file_frame_breaks_the_connection(self) -> None:
        d, _, rid = self.fetch()
        other, _, _ = self.list()
        self.feed(frames.frame(frames.FILE, rid, b"\x00" * 3))
        self.assertIn("bad FILE frame", self.failure_message(d))
        self.assertIn("protocol error", self.failure_message(other))
        self.assertTrue(self.aborted)

    def test_late_frames_of_a_failed_request_are_ignored(self) -> None:
        d, _, rid = self.fetch()
        other, _, other_rid = self.fetch()
        self.clock.advance(STALL)
        self.failureResultOf(d, TransferError)
        self.failureResultOf(other, TransferError)
        self.feed(file_frame(rid, 1), data_frame(rid, b"x"), end_frame(rid, b"x"))
        self.assertFalse(self.aborted)


class BrokenConnection(ClientTestCase):
    """Violations that break the framing fail every request and abort the connection."""

    def pending(self) -> list[Deferred]:
        d1, _, _ = self.fetch("a")
        d2, _, _ = self.list("b")
        return [d1, d2]

    def assert_all_failed(self, ds: list[Deferred], *words: str) -> None:
        for d in ds:
            message = self.failure_message(d)
            for word in words:
                self.assertIn(word, message)
        self.assertTrue(self.aborted)
        self.assertEqual(self.client.load, 0)

    def test_unknown_request_id(self) -> None:
        ds = self.pending()
        self.feed(error_frame(999, 1, "x"))
        self.assert_all_failed(ds, "protocol error", "unknown request 999")

    def test_data_for_an_unknown_request_id(self) -> None:
        ds = self.pending()
        self.feed(data_frame(999, b"x"))
        self.assert_all_failed(ds, "protocol error", "unknown request 999")

    def test_unknown_opcodes(self) -> None:
        for opcode in (0x00, frames.LIST, frames.FETCH, 0x80, 0x89, 0xFF):
            self.setUp()
            ds = self.pending()
            self.feed(frames.frame(opcode, 1, b""))
            self.assert_all_failed(ds, f"unknown opcode {opcode:#x}")

    def test_oversized_frame(self) -> None:
        ds = self.pending()
        self.feed(struct.pack(">IBI", 256 * 1024 + 1, frames.ENTRIES, 2))
        self.assert_all_failed(ds, "protocol error", "exceeds the limit")

    def test_oversized_data_frame(self) -> None:
        ds = self.pending()
        self.feed(file_frame(1, 10**6), struct.pack(">IBI", 4 * 1024 * 1024 + 6, frames.DATA, 1))
        self.assert_all_failed(ds, "protocol error")

    def test_huge_length_prefix(self) -> None:
        ds = self.pending()
        self.feed(b"\xff\xff\xff\xff")
        self.assert_all_failed(ds, "protocol error")

    def test_short_length(self) -> None:
        ds = self.pending()
        self.feed(b"\x00\x00\x00\x02\x00\x00")
        self.assert_all_failed(ds, "protocol error", "too short")

    def test_later_requests_fail_at_once(self) -> None:
        ds = self.pending()
        self.feed(b"\xff\xff\xff\xff")
        self.assert_all_failed(ds)
        d, _, = self.client.fetch("later", RecordingSink()), None
        self.assertIn("later", self.failure_message(d))

    def test_nothing_more_delivered_after_the_violation(self) -> None:
        d, sink, rid = self.fetch()
        self.feed(file_frame(rid, 3) + frames.frame(0x86, rid) + data_frame(rid, b"abc"))
        self.failureResultOf(d, TransferError)
        self.assertEqual(sink.received, b"")


class ConnectionLost(ClientTestCase):
    def test_pending_requests_fail(self) -> None:
        d1, _, _ = self.fetch("a/b")
        d2, _, _ = self.list("c")
        from twisted.internet.error import ConnectionLost as Lost
        from twisted.python.failure import Failure
        self.client.connectionLost(Failure(Lost("gone")))
        m1, m2 = self.failure_message(d1), self.failure_message(d2)
        self.assertIn("a/b", m1)
        self.assertIn("connection to srv:1 lost", m1)
        self.assertIn("LIST c", m2)
        self.successResultOf(self.client.lost_d)

    def test_requests_after_the_loss_fail_at_once(self) -> None:
        self.client.connectionLost()
        d = self.client.fetch("x", RecordingSink())
        self.assertIn("lost", self.failure_message(d))
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ConnectionRefused(ClientTestCase):
    """A connection-level ERROR (request id 0): the server refuses the whole connection."""

    BUSY = "content server busy: too many connections from 127.0.0.1"

    def test_every_request_fails_with_the_servers_reason(self) -> None:
        d1, _, _ = self.fetch("a/b")
        d2, _, _ = self.list("c")
        self.feed(error_frame(0, frames.E_BUSY, self.BUSY))
        self.assertEqual(self.failure_message(d1), f"a/b: {self.BUSY}")
        self.assertEqual(self.failure_message(d2), f"LIST c: {self.BUSY}")
        self.assertTrue(self.transport.disconnecting)
        # Requests made before the close completes fail with the same reason.
        self.assertIn(self.BUSY, self.failure_message(self.client.fetch("x", RecordingSink())))
        self.client.connectionLost()
        self.assertIn(self.BUSY, self.failure_message(self.client.fetch("y", RecordingSink())))

    def test_malformed_connection_error_is_a_protocol_error(self) -> None:
        d, _, _ = self.fetch("a/b")
        self.feed(frames.frame(frames.ERROR, 0, b"\x00"))
        self.assertIn("protocol error", self.failure_message(d))
        self.assertTrue(self.aborted)

    def test_other_frames_for_id_0_are_still_protocol_errors(self) -> None:
        d, _, _ = self.fetch("a/b")
        self.feed(frames.frame(frames.LIST_END, 0, frames.encode_list_end(0, 0)))
        self.assertIn("unknown request 0", self.failure_message(d))


class Stalls(ClientTestCase):
    def test_no_answer_at_all(self) -> None:
        d, _, _ = self.fetch("f")
        self.clock.advance(STALL - 0.1)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        message = self.failure_message(d)
        self.assertIn("f", message)
        self.assertIn("stalled", message)

    def test_file_then_silence(self) -> None:
        d, _, rid = self.fetch("f")
        self.clock.advance(10)
        self.feed(file_frame(rid, 10), data_frame(rid, b"123"))
        self.clock.advance(STALL - 0.1)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertIn("stalled", self.failure_message(d))
        self.assertFalse(self.aborted)

    def test_each_frame_restarts_the_timer(self) -> None:
        d, sink, rid = self.fetch("f")
        self.feed(file_frame(rid, 5))
        for ch in b"abcde":
            self.clock.advance(STALL - 1)
            self.feed(data_frame(rid, bytes([ch])))
        self.clock.advance(STALL - 1)
        self.feed(end_frame(rid, b"abcde"))
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_list_stall(self) -> None:
        d, _, rid = self.list()
        self.clock.advance(STALL - 1)
        self.feed(entries_frame(rid, b"a"))
        self.clock.advance(STALL - 1)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertIn("LIST", self.failure_message(d))

    def test_delay_extends_the_first_wait(self) -> None:
        d, _, rid = self.fetch("f", delay=100)
        self.clock.advance(100 + STALL - 0.1)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertIn("stalled", self.failure_message(d))

    def test_delay_does_not_extend_later_waits(self) -> None:
        d, _, rid = self.fetch("f", delay=100)
        self.clock.advance(50)
        self.feed(file_frame(rid, 10))
        self.clock.advance(STALL)
        self.assertIn("stalled", self.failure_message(d))

    def test_one_stalled_request_leaves_the_others(self) -> None:
        d1, _, r1 = self.fetch("slow")
        d2, _, r2 = self.fetch("quick")
        self.clock.advance(STALL - 1)
        self.feed(file_frame(r2, 0))
        self.clock.advance(1)
        self.failureResultOf(d1, TransferError)
        self.feed(end_frame(r2, b""))
        self.successResultOf(d2)
        self.assertFalse(self.aborted)


class Flow(ClientTestCase):
    def test_flow_control_thresholds(self) -> None:
        calls: list[str] = []
        flow = FlowControl(lambda: calls.append("pause"), lambda: calls.append("resume"),
                           high=100, low=20)
        flow.queued(100)
        self.assertEqual(calls, [])
        flow.queued(1)
        self.assertEqual(calls, ["pause"])
        flow.queued(50)
        flow.written(100)
        self.assertEqual(calls, ["pause"])  # 51 > low
        flow.written(31)
        self.assertEqual(calls, ["pause", "resume"])
        self.assertEqual(flow.pending, 20)
        flow.written(20)
        self.assertEqual((flow.pending, calls), (0, ["pause", "resume"]))

    def test_queued_bytes_pause_the_transport(self) -> None:
        self.client.flow = FlowControl(self.client.pause, self.client.resume, high=100, low=20)

        class QueueingSink(RecordingSink):
            def data(self, piece):
                super().data(piece)
                self.flow.queued(len(piece))

        sink = QueueingSink()
        d = self.client.fetch("f", sink)
        rid = self.requests()[0][1]
        body = b"x" * 300
        self.feed(file_frame(rid, 300) + data_frame(rid, body[:150]) + data_frame(rid, body[150:])
                  + end_frame(rid, body))
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual(sink.received, body[:150])  # nothing more read while paused
        self.clock.advance(STALL * 2)  # not stalled: we are the ones not reading
        self.assertNoResult(d)
        sink.flow.written(100)
        self.assertEqual(self.transport.producerState, "paused")  # 50 pending: above low
        sink.flow.written(30)
        self.assertEqual(sink.received, body)
        self.assertEqual(self.transport.producerState, "paused")  # the second piece queued
        self.assertNoResult(d)  # FILE_END not read yet
        sink.flow.written(170)
        self.assertEqual(self.transport.producerState, "producing")
        self.successResultOf(d)
        self.assertEqual(sink.flow.pending, 0)

    def test_pauses_nest(self) -> None:
        self.client.pause()
        self.client.pause()
        self.client.resume()
        self.assertEqual(self.transport.producerState, "paused")
        self.client.resume()
        self.assertEqual(self.transport.producerState, "producing")


# -- property: nothing a server sends makes the client raise ------------------------------

from hypothesis import given, settings as hypothesis_settings, strategies as st  # noqa: E402

_rids = st.sampled_from([1, 2, 3, 4, 5, 999])
_payloads = st.one_of(
    st.binary(max_size=2),
    st.binary(max_size=40),
    st.builds(lambda size: frames.encode_file(FileHeader(size, size, 0, 0o644)),
              st.sampled_from([0, 1, 3, 10**7])),
    st.just(b"\x00" * 32),
    st.builds(lambda n: frames.encode_list_end(n, 0), st.integers(0, 3)),
    st.builds(lambda name: frames.encode_entry(frames.KIND_FILE, 0o644, 1, 1, name),
              st.sampled_from([b"a", b"../x", b""])),
    # BUNDLE items: right or wrong index, size, digest; error items; cut short.
    st.builds(lambda items, cut: b"".join(items)[:cut],
              st.lists(st.one_of(
                  st.builds(lambda i, body: frames.encode_bundle_file(
                      i, FileHeader(len(body), len(body), 0, 0o644),
                      digest_of(body), body),
                      st.integers(0, 3), st.sampled_from([b"", b"abc", b"x"])),
                  st.builds(lambda i: frames.encode_bundle_error(i, 1, "gone"),
                            st.integers(0, 3))), min_size=1, max_size=4),
              st.one_of(st.just(10**6), st.integers(0, 200))),
)


def _server_frame(opcode: int, rid: int, payload: bytes) -> bytes:
    if opcode == frames.ERROR and len(payload) < 2:
        # Known bug, see tests/unit/test_PENDING_content_client.py (left out here so the
        # rest of the property is checked).
        payload = b"\x00\x01" + payload
    if opcode == frames.DATA:
        return frames.data_header(rid, len(payload)) + payload
    return frames.frame(opcode, rid, payload)


_frame = st.one_of(
    st.builds(_server_frame, st.sampled_from(sorted(frames.RESPONSE_OPCODES)), _rids, _payloads),
    st.builds(_server_frame, st.integers(0, 255), _rids, st.binary(max_size=10)),
)


class ClientFuzz(ClientTestCase):
    @hypothesis_settings(deadline=None, max_examples=200)
    @given(st.lists(_frame, max_size=12), st.integers(1, 50), st.booleans())
    def test_any_answer(self, wires: list[bytes], cut: int, garbage: bool) -> None:
        self.setUp()
        ds = [self.fetch("f1")[0], self.list("l2")[0], self.fetch("f3", delay=1)[0],
              self.fetch("f4")[0], self.client.fetch_many([(b"m5", 3), (b"m6", 0)])]
        stream = b"".join(wires) + (b"\xff\x00\x13" if garbage else b"")
        for i in range(0, len(stream), cut):
            self.feed(stream[i : i + cut])  # never raises
        self.clock.advance(STALL + 10)
        for d in ds:  # every request ended, one way or the other
            self.assertTrue(d.called)
            if isinstance(d.result, list):  # FETCH_MANY: one result per file, always
                self.assertEqual(len(d.result), 2)
                for r in d.result:
                    self.assertIsInstance(r, (str, frames.BundleItem))
                continue
            if isinstance(d.result, type(None)) or not hasattr(d.result, "check"):
                continue
            self.assertTrue(d.result.check(TransferError), d.result)
            d.addErrback(lambda f: None)
        self.assertEqual(self.client.load, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


def bundle_file(index: int, body: bytes, mtime: int = 123, mode: int = 0o644,
                digest: bytes | None = None) -> bytes:
    header = FileHeader(len(body), len(body), mtime, mode)
    return frames.encode_bundle_file(index, header, digest or digest_of(body),
                                     body)


def bundle_frame(rid: int, *items: bytes) -> bytes:
    return frames.frame(frames.BUNDLE, rid, b"".join(items))


class FetchMany(ClientTestCase):
    """FETCH_MANY: one request, one result per file; a bad answer fails the files it
    concerns (or, if it breaks the framing, the connection), never the files already
    answered well."""

    WANTS = [(b"a", 3), (b"d/b", 5), (b"c", 0)]

    def fetch_many(self, wants=None, **kw) -> tuple[Deferred, int]:
        d = self.client.fetch_many(self.WANTS if wants is None else wants, **kw)
        return d, self.requests()[-1][1]

    def results(self, d: Deferred) -> list:
        return self.successResultOf(d)

    def assert_good(self, result, index: int, body: bytes) -> None:
        self.assertIsInstance(result, frames.BundleItem)
        self.assertEqual((result.index, bytes(result.data)), (index, body))
        self.assertEqual(result.digest, digest_of(body))

    def test_request(self) -> None:
        self.client.fetch_many(self.WANTS, delay=1.5)
        [(opcode, rid, payload)] = self.requests()
        self.assertEqual(opcode, frames.FETCH_MANY)
        self.assertEqual(frames.decode_fetch_many(payload),
                         (1500, [(size, path) for path, size in self.WANTS]))

    def test_answer_in_one_frame(self) -> None:
        d, rid = self.fetch_many()
        self.feed(bundle_frame(rid, bundle_file(0, b"aaa"), bundle_file(1, b"bbbbb"),
                               bundle_file(2, b"")))
        a, b, c = self.results(d)
        self.assert_good(a, 0, b"aaa")
        self.assert_good(b, 1, b"bbbbb")
        self.assert_good(c, 2, b"")
        self.assertEqual(self.client.load, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answer_over_several_frames_and_reads(self) -> None:
        d, rid = self.fetch_many()
        wire = (bundle_frame(rid, bundle_file(0, b"aaa"))
                + bundle_frame(rid, bundle_file(1, b"bbbbb"), bundle_file(2, b"")))
        for i in range(len(wire)):
            self.feed(wire[i:i + 1])
        self.assertEqual([bytes(r.data) for r in self.results(d)], [b"aaa", b"bbbbb", b""])

    def test_error_item_fails_that_file_only(self) -> None:
        d, rid = self.fetch_many()
        self.feed(bundle_frame(rid, bundle_file(0, b"aaa"),
                               frames.encode_bundle_error(1, frames.E_NOT_FOUND,
                                                          "d/b: gone\x1b[2J"),
                               bundle_file(2, b"")))
        a, b, c = self.results(d)
        self.assert_good(a, 0, b"aaa")
        self.assertEqual(b, "d/b: gone\\x1b[2J")
        self.assert_good(c, 2, b"")

    def test_size_other_than_listed_fails_that_file(self) -> None:
        d, rid = self.fetch_many()
        self.feed(bundle_frame(rid, bundle_file(0, b"aaaa"), bundle_file(1, b"bbbbb"),
                               bundle_file(2, b"")))
        a, b, c = self.results(d)
        self.assertEqual(a, "file changed: listed with 3 bytes, now 4")
        self.assert_good(b, 1, b"bbbbb")

    def test_digest_is_passed_on_unverified(self) -> None:
        """The bytes are hashed where they are written (in a thread), not here."""
        d, rid = self.fetch_many([(b"a", 3)])
        self.feed(bundle_frame(rid, bundle_file(0, b"aaa", digest=b"\0" * 32)))
        [a] = self.results(d)
        self.assertEqual(a.digest, b"\0" * 32)

    def check_bad_answer(self, items: list[bytes], why: str) -> list:
        d, rid = self.fetch_many()
        self.feed(bundle_frame(rid, bundle_file(0, b"aaa")))
        self.feed(bundle_frame(rid, *items))
        a, b, c = self.results(d)
        self.assert_good(a, 0, b"aaa")  # answered well before: it stands
        for message in (b, c):
            self.assertIn("bad answer", message)
            self.assertIn(why, message)
        self.assertEqual(self.client.load, 0)
        self.assertFalse(self.aborted)
        return [a, b, c]

    def test_duplicated_file(self) -> None:
        self.check_bad_answer([bundle_file(0, b"aaa")], "#0 answered twice")

    def test_missing_file(self) -> None:
        self.check_bad_answer([bundle_file(2, b"")], "#2 before #1")

    def test_file_not_asked_for(self) -> None:
        self.check_bad_answer([bundle_file(7, b"x")], "#7 not asked for")

    def test_a_bad_frame_is_taken_whole_or_not_at_all(self) -> None:
        """Items before the bad one in the same frame are not taken either."""
        self.check_bad_answer([bundle_file(1, b"bbbbb"), bundle_file(1, b"bbbbb")],
                              "#1 answered twice")

    def test_more_files_than_asked_in_the_last_frame(self) -> None:
        d, rid = self.fetch_many([(b"a", 3)])
        self.feed(bundle_frame(rid, bundle_file(0, b"aaa"), bundle_file(1, b"x")))
        [a] = self.results(d)
        self.assertIn("#1 not asked for", a)

    def test_late_frames_after_the_answer_are_ignored(self) -> None:
        d, rid = self.fetch_many([(b"a", 3)])
        self.feed(bundle_frame(rid, bundle_file(0, b"aaa")))
        self.feed(bundle_frame(rid, bundle_file(0, b"aaa")))
        self.assert_good(self.results(d)[0], 0, b"aaa")
        self.assertFalse(self.aborted)

    def test_error_frame_fails_the_files_not_answered(self) -> None:
        d, rid = self.fetch_many()
        self.feed(bundle_frame(rid, bundle_file(0, b"aaa")),
                  error_frame(rid, frames.E_BUSY, "busy"))
        a, b, c = self.results(d)
        self.assert_good(a, 0, b"aaa")
        self.assertEqual((b, c), ("busy", "busy"))

    def test_fetch_answer_to_a_fetch_many(self) -> None:
        d, rid = self.fetch_many()
        self.feed(file_frame(rid, 3))
        self.assertEqual(self.results(d), ["FETCH_MANY of 3 files: unexpected response 0x83"] * 3)

    def test_bundle_answer_to_a_fetch(self) -> None:
        d, _, rid = self.fetch("f")
        self.feed(bundle_frame(rid, bundle_file(0, b"aaa")))
        self.assertIn("unexpected response 0x86", self.failure_message(d))

    def test_bundle_answer_to_a_list(self) -> None:
        d, _, rid = self.list("x")
        self.feed(bundle_frame(rid, bundle_file(0, b"aaa")))
        self.assertIn("unexpected response 0x86", self.failure_message(d))

    def test_truncated_bundle_breaks_the_connection(self) -> None:
        d, rid = self.fetch_many()
        other, _, _ = self.fetch("f")
        self.feed(bundle_frame(rid, bundle_file(0, b"aaa")[:-1]))
        self.assertTrue(self.aborted)
        for message in self.results(d):
            self.assertIn("protocol error: truncated BUNDLE file", message)
        self.assertIn("protocol error", self.failure_message(other))

    def test_oversized_bundle_frame_breaks_the_connection(self) -> None:
        d, rid = self.fetch_many()
        self.feed(struct.pack(">IBI", frames.MAX_BUNDLE_FRAME + 1, frames.BUNDLE, rid))
        self.assertTrue(self.aborted)
        for message in self.results(d):
            self.assertIn("exceeds the limit", message)

    def test_stall_fails_the_files_not_answered(self) -> None:
        d, rid = self.fetch_many()
        self.clock.advance(STALL - 1)
        self.feed(bundle_frame(rid, bundle_file(0, b"aaa")))
        self.clock.advance(STALL - 1)  # restarted by the frame
        self.assertNoResult(d)
        self.clock.advance(1)
        a, b, c = self.results(d)
        self.assert_good(a, 0, b"aaa")
        self.assertIn("stalled", b)
        self.assertFalse(self.aborted)

    def test_delay_extends_every_wait(self) -> None:
        """The server waits the delay before each file: each frame may take that long."""
        d, rid = self.fetch_many(delay=100)
        self.clock.advance(STALL + 99)
        self.feed(bundle_frame(rid, bundle_file(0, b"aaa")))
        self.clock.advance(STALL + 99)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertIn("stalled", self.results(d)[1])

    def test_connection_lost(self) -> None:
        d, rid = self.fetch_many()
        self.feed(bundle_frame(rid, bundle_file(0, b"aaa")))
        self.client.connectionLost()
        a, b, c = self.results(d)
        self.assert_good(a, 0, b"aaa")
        self.assertIn("lost", b)

    def test_after_the_connection_is_lost(self) -> None:
        self.client.connectionLost()
        results = self.results(self.client.fetch_many(self.WANTS))
        self.assertEqual(len(results), 3)
        self.assertIn("lost", results[0])

    def test_cancelled(self) -> None:
        d, rid = self.fetch_many()
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.client.load, 0)
        self.feed(bundle_frame(rid, bundle_file(0, b"aaa")))  # late: ignored
        self.assertFalse(self.aborted)
