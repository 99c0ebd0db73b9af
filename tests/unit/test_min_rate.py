"""--min-rate: the rate floor of a content connection (mirror_server/min_rate.py) on a fake
clock, in the content client, and in a whole job whose first connection trickles."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mirror.hashing import digest_of
from mirror.mirror_server.content_client import ContentClientProtocol, TransferError
from mirror.mirror_server.min_rate import RateFloor
from mirror.wire import frames
from tests.unit.helpers import RecordingSink, parse_frames
from tests.unit.test_content_client import data_frame, end_frame, entries_frame, file_frame
from tests.unit.test_mirror_job import FakeContentServer, JobTestCase, source


class Floor(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.slow: list[float] = []
        self.floor = RateFloor(self.clock, 100, 10.0, self.slow.append)

    def test_too_slow_over_the_window(self) -> None:
        self.floor.set_active(True)
        self.floor.received(999)
        self.clock.advance(9.99)
        self.assertEqual(self.slow, [])
        self.clock.advance(0.01)
        self.assertEqual(self.slow, [99.9])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_fast_enough_window_after_window(self) -> None:
        self.floor.set_active(True)
        for _ in range(5):
            self.floor.received(1000)
            self.clock.advance(10)
        self.assertEqual(self.slow, [])
        self.clock.advance(10)  # a window with nothing
        self.assertEqual(self.slow, [0.0])

    def test_only_active_time_counts_and_gaps_do_not_reset_it(self) -> None:
        self.floor.set_active(True)
        self.clock.advance(6)
        self.floor.set_active(False)
        self.clock.advance(1000)  # paused by us, or waiting for a delay: not slow
        self.assertEqual(self.slow, [])
        self.floor.set_active(True)
        self.floor.set_active(True)  # no change
        self.clock.advance(3.99)
        self.assertEqual(self.slow, [])
        self.clock.advance(0.01)  # 10 s of active time with nothing
        self.assertEqual(self.slow, [0.0])

    def test_stop(self) -> None:
        self.floor.set_active(True)
        self.floor.stop()
        self.floor.set_active(True)
        self.clock.advance(100)
        self.assertEqual((self.slow, self.clock.getDelayedCalls()), ([], []))


class FlooredConnection(SynchronousTestCase):
    """A content connection with --min-rate 100 over 10 s (stall timeout 1000 s)."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.client = ContentClientProtocol(clock=self.clock, name="srv:1", stall_timeout=1000,
                                            min_rate=100, min_rate_window=10)
        self.transport = StringTransport()
        self.client.makeConnection(self.transport)

    def fetch(self, path: str = "f", **kw: Any) -> tuple[Any, RecordingSink, int]:
        sink = RecordingSink()
        d = self.client.fetch(path, sink, **kw)
        rid = parse_frames(self.transport.value())[-1][1]
        return d, sink, rid

    def trickle(self, rid: int, seconds: int) -> None:
        for _ in range(seconds):
            self.client.dataReceived(data_frame(rid, b"x"))
            self.clock.advance(1)

    def test_a_trickle_fails_every_request_and_drops_the_connection(self) -> None:
        d1, _, r1 = self.fetch("slow", expect_size=10**6)
        d2, _, r2 = self.fetch("other")
        self.client.dataReceived(file_frame(r1, 10**6))
        self.trickle(r1, 9)
        self.assertNoResult(d1)
        self.trickle(r1, 1)
        message = str(self.failureResultOf(d1, TransferError).value)
        self.assertIn("slow: too slow", message)
        self.assertIn("below the minimum of 100 B/s", message)
        self.assertIn("too slow", str(self.failureResultOf(d2, TransferError).value))
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.client.load, 0)

    def test_fast_enough(self) -> None:
        d, sink, rid = self.fetch("f")
        body = b"y" * 2000
        self.client.dataReceived(file_frame(rid, len(body)))
        for i in range(0, 2000, 100):  # 100 bytes (plus frame heads) a second
            self.client.dataReceived(data_frame(rid, body[i:i + 100]))
            self.clock.advance(1)
        self.client.dataReceived(end_frame(rid, body))
        self.successResultOf(d)
        self.assertEqual(sink.received, body)
        self.assertFalse(self.transport.disconnected)

    def test_no_request_no_floor(self) -> None:
        d, sink, rid = self.fetch("f")
        self.client.dataReceived(file_frame(rid, 0) + end_frame(rid, b""))
        self.successResultOf(d)
        self.clock.advance(100)
        self.assertFalse(self.transport.disconnected)

    def test_paused_by_us_is_not_slow(self) -> None:
        d, _, rid = self.fetch("f")
        self.client.pause()  # a slow disk, or the job's --bwlimit
        self.clock.advance(100)
        self.assertFalse(self.transport.disconnected)
        self.client.resume()
        self.clock.advance(10)
        self.assertTrue(self.transport.disconnected)
        self.failureResultOf(d, TransferError)

    def test_a_delay_is_not_slowness_until_the_file_starts(self) -> None:
        d, _, rid = self.fetch("f", delay=60.0)
        self.clock.advance(59)
        self.assertFalse(self.transport.disconnected)
        self.client.dataReceived(file_frame(rid, 500))
        self.clock.advance(10)
        self.assertTrue(self.transport.disconnected)
        self.failureResultOf(d, TransferError)

    def test_a_listing_is_not_measured(self) -> None:
        got: list = []
        d = self.client.list("", got.append)
        rid = parse_frames(self.transport.value())[-1][1]
        for _ in range(20):
            self.client.dataReceived(entries_frame(rid, b"a"))
            self.clock.advance(1)
        self.assertNoResult(d)
        self.assertFalse(self.transport.disconnected)


class Trickler(FakeContentServer):
    """Trickles one byte a second for the first FETCH of each file (on a fake clock)."""

    clock: Any
    trickled: set[bytes]

    def _request(self, opcode: int, rid: int, payload: bytes) -> None:
        if opcode == frames.FETCH:
            name = frames.decode_fetch(payload)[3]
            if name not in self.trickled:
                self.trickled.add(name)
                self.seen.append((opcode, [name]))
                data = self.files[name]
                header = frames.FileHeader(len(data), len(data), 1_000_000_000, 0o644)
                self.transport.write(frames.frame(frames.FILE, rid, frames.encode_file(header)))
                self._drip(rid, data, 0)
                return
        super()._request(opcode, rid, payload)

    def _drip(self, rid: int, data: bytes, sent: int) -> None:
        if self.transport.disconnecting:  # type: ignore[attr-defined]
            return
        if sent == len(data):
            self.transport.write(frames.frame(frames.FILE_END, rid, digest_of(data)))
            return
        self.transport.write(frames.data_header(rid, 1) + data[sent:sent + 1])
        self.clock.callLater(1, self._drip, rid, data, sent + 1)


class TricklingSourceJob(JobTestCase):
    settings: dict[str, Any] = {"workers": 2, "queue_size": 10, "min_rate": 1024,
                                "min_rate_window": 5.0}

    def test_the_slow_transfer_fails_and_is_retried_on_another_connection(self) -> None:
        data = os.urandom(100 * 1024)
        seen: list = []
        trickled: set[bytes] = set()

        def make() -> Trickler:
            server = Trickler([(frames.KIND_FILE, b"big", len(data))], {b"big": data}, seen)
            server.clock, server.trickled = self.clock, trickled
            return server

        self.network.listen("10.0.0.1", 7000, Factory.forProtocol(make))
        observer = self.run_job(source())
        self.assertEqual(observer.finished, [True])
        self.assertEqual(observer.errors, [])
        self.assertEqual(seen, [(frames.FETCH, [b"big"])] * 2)
        self.assertEqual((self.mirror / "10.0.0.1_7000" / "big").read_bytes(), data)
        # Given up after the window (5 s), not after the stall timeout or the trickle's end.
        self.assertLess(self.clock.seconds(), 10)
