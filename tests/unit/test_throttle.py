"""--bwlimit: the job's token bucket (mirror_server/throttle.py) on a fake clock, a content
connection that pays for each read before parsing it, and a whole job in memory whose bytes
are bounded by the clock."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mirror.mirror_server.content_client import ContentClientProtocol
from mirror.mirror_server.job import SourceRun
from mirror.mirror_server.throttle import MAX_READ, MIN_READ, Throttle
from tests.unit.helpers import RecordingSink, parse_frames
from tests.unit.test_content_client import data_frame, end_frame, file_frame
from tests.unit.test_mirror_job import JobTestCase, Observer, source


class Reader:
    """A connection that reads ``size`` bytes whenever it is not paused and the test says so;
    a read the throttle paused it on is handed on when it is resumed."""

    def __init__(self, throttle: Throttle, clock: Clock, size: int) -> None:
        self.throttle = throttle
        self.clock = clock
        self.size = size
        self.pauses = 0
        self.held = 0
        #: (time, bytes) of every read handed on.
        self.delivered: list[tuple[float, int]] = []

    def pause(self) -> None:
        self.pauses += 1

    def resume(self) -> None:
        self.pauses -= 1
        if not self.pauses and self.held:
            self.delivered.append((self.clock.seconds(), self.held))
            self.held = 0

    def read(self) -> None:
        if self.pauses:
            return  # a paused transport reads nothing
        if self.throttle.spend(self, self.size):
            self.held = self.size
        else:
            self.delivered.append((self.clock.seconds(), self.size))

    def total(self, until: float | None = None) -> int:
        return sum(n for t, n in self.delivered if until is None or t <= until)


class Bucket(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def test_read_size_follows_the_rate(self) -> None:
        self.assertEqual(Throttle(self.clock, 1).read_size, MIN_READ)
        self.assertEqual(Throttle(self.clock, 800 * 1024).read_size, 100 * 1024)
        self.assertEqual(Throttle(self.clock, 1 << 40).read_size, MAX_READ)
        with self.assertRaises(ValueError):
            Throttle(self.clock, 0)

    def test_within_the_burst_nothing_pauses(self) -> None:
        throttle = Throttle(self.clock, 1000, burst=5000)
        conn = Reader(throttle, self.clock, 2500)
        conn.read()
        conn.read()
        self.assertEqual((conn.pauses, conn.total()), (0, 5000))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_an_overdraft_waits_until_paid(self) -> None:
        throttle = Throttle(self.clock, 1000, burst=1000)
        conn = Reader(throttle, self.clock, 3000)
        conn.read()  # 1000 in the bucket, 3000 read: 2000 owed, 2 s
        self.assertEqual((conn.pauses, conn.total()), (1, 0))
        self.assertEqual(throttle.paused, [conn])
        self.clock.advance(1.99)
        self.assertEqual(conn.total(), 0)
        self.clock.advance(0.01)
        self.assertEqual((conn.pauses, conn.delivered), (0, [(2.0, 3000)]))
        self.assertEqual(throttle.paused, [])

    def test_refill_stops_at_the_burst(self) -> None:
        throttle = Throttle(self.clock, 1000, burst=1000)
        self.clock.advance(100)  # idle: no credit beyond the burst
        conn = Reader(throttle, self.clock, 1500)
        conn.read()
        self.assertEqual(conn.pauses, 1)
        self.clock.advance(0.5)
        self.assertEqual(conn.total(), 1500)

    def test_bytes_bounded_by_the_clock_and_shared_fairly(self) -> None:
        """Three greedy connections for 20 s: by every instant the bytes handed on are at
        most burst + rate * t, they use the rate (within a round), and each gets a third."""
        rate = 64 * 1024
        throttle = Throttle(self.clock, rate)
        conns = [Reader(throttle, self.clock, throttle.read_size) for _ in range(3)]
        step = 0.01
        for i in range(2000):
            # A reactor turn: every connection that may read does, in a rotating order.
            for k in range(3):
                conns[(i + k) % 3].read()
            self.clock.advance(step)
            now = self.clock.seconds()
            handed = sum(c.total(now) for c in conns)
            self.assertLessEqual(handed, throttle.burst + rate * now + 1)
        elapsed = self.clock.seconds()
        handed = sum(c.total() for c in conns)
        self.assertGreaterEqual(handed, rate * elapsed - 3 * throttle.read_size)
        shares = [c.total() for c in conns]
        self.assertLessEqual(max(shares) - min(shares), throttle.read_size)

    def test_unfair_reactor_order_still_shares(self) -> None:
        """The same connection always reads first: each round still gives each one read."""
        throttle = Throttle(self.clock, 10_000, burst=MIN_READ)
        conns = [Reader(throttle, self.clock, MIN_READ) for _ in range(2)]
        for _ in range(1000):
            for conn in conns:
                conn.read()
            self.clock.advance(0.01)
        first, second = (c.total() for c in conns)
        self.assertLessEqual(abs(first - second), MIN_READ)
        self.assertGreater(second, 0)

    def test_forget_and_close_leave_no_timer(self) -> None:
        throttle = Throttle(self.clock, 1000, burst=0)
        a, b = Reader(throttle, self.clock, 500), Reader(throttle, self.clock, 500)
        a.read()
        b.read()
        throttle.forget(a)
        self.assertEqual(throttle.paused, [b])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        throttle.forget(b)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        a.pauses = 0
        a.read()
        throttle.close()
        self.assertEqual((throttle.paused, self.clock.getDelayedCalls()), ([], []))


class ThrottledConnection(SynchronousTestCase):
    """A content connection spends each read before parsing it."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.throttle = Throttle(self.clock, 1000, burst=100)
        self.client = ContentClientProtocol(clock=self.clock, name="srv:1", stall_timeout=5,
                                            throttle=self.throttle)
        self.transport = StringTransport()
        self.transport.bufferSize = 1 << 16  # type: ignore[attr-defined]
        self.client.makeConnection(self.transport)

    def test_read_size_lowered(self) -> None:
        self.assertEqual(self.transport.bufferSize,  # type: ignore[attr-defined]
                         self.throttle.read_size)

    def test_an_overdrawing_read_waits_unparsed(self) -> None:
        sink = RecordingSink()
        d = self.client.fetch("f", sink)
        (_, rid, _), = parse_frames(self.transport.value())
        body = b"x" * 2000
        wire = file_frame(rid, 2000) + data_frame(rid, body) + end_frame(rid, body)
        self.client.dataReceived(wire)
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual((sink.header, sink.received), (None, b""))
        # Longer than the stall timeout: time spent throttled is not the server's silence.
        owed = (len(wire) - 100) / 1000
        self.clock.advance(owed - 0.01)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(sink.received, body)
        self.successResultOf(d)
        self.assertEqual(self.throttle.spent, len(wire))

    def test_a_lost_connection_waits_no_more(self) -> None:
        self.client.dataReceived(b"\0" * 500)
        self.assertEqual(self.throttle.paused, [self.client])
        self.client.connectionLost()
        self.assertEqual(self.throttle.paused, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class BwLimitedJob(JobTestCase):
    """A whole job on the in-memory network: the fake clock must pass for the bytes."""

    settings: dict[str, Any] = {"workers": 4, "queue_size": 10}

    def make_source(self) -> int:
        src = self.base / "src"
        src.mkdir()
        sizes = [700 * 1024, 300 * 1024] + [10 * 1024] * 8
        for i, size in enumerate(sizes):
            (src / f"f{i}").write_bytes(os.urandom(size))
        self.serve(src)
        return sum(sizes)

    def run_limited(self, bwlimit: int) -> tuple[Observer, float, Any]:
        observer = Observer()
        start = self.clock.seconds()
        job = self.service.submit([source()], observer, bwlimit=bwlimit)
        self.network.run_until(job.finished, step=0.01)
        return observer, self.clock.seconds() - start, job

    def test_rate_bounded_by_the_clock(self) -> None:
        total = self.make_source()
        rate = 256 * 1024
        observer, elapsed, job = self.run_limited(rate)
        self.assertEqual(observer.finished, [True])
        self.assertGreaterEqual(job.throttle.spent, total)
        # Every byte handed on was paid for: elapsed >= (bytes - burst) / rate.
        self.assertGreaterEqual(elapsed, (job.throttle.spent - job.throttle.burst) / rate)
        # And the limit is used, not undershot by much (fake time: no jitter).
        self.assertLess(elapsed, job.throttle.spent / rate + 1.0)
        # The job's throttle left no timer behind.
        self.assertFalse([c for c in self.clock.getDelayedCalls() if "_release" in str(c)])

    def test_without_a_limit_no_time_passes(self) -> None:
        self.make_source()
        observer, elapsed, job = self.run_limited(0)
        self.assertEqual(observer.finished, [True])
        self.assertIsNone(job.throttle)
        self.assertLess(elapsed, 0.5)


class YieldingQueue(SynchronousTestCase):
    """A group that yields (a --bwlimit job holding its share of workers) is served after
    the others, and still served when it alone has items: no worker waits meanwhile."""

    def test_yielding_group_served_last(self) -> None:
        from mirror.mirror_server.work_queue import BoundedQueue

        yielding = {"A"}
        queue: BoundedQueue[tuple[str, int]] = BoundedQueue(
            10, key=lambda item: (item[0], item[0]), yields=lambda group: group in yielding)
        for item in [("A", 1), ("A", 2), ("B", 1), ("B", 2)]:
            self.successResultOf(Deferred.fromCoroutine(queue.put(item)))
        got = [self.successResultOf(queue.get()) for _ in range(3)]
        self.assertEqual(got, [("B", 1), ("B", 2), ("A", 1)])
        yielding.clear()
        self.assertEqual(self.successResultOf(queue.get()), ("A", 2))


class BwLimitedJobYields(JobTestCase):
    """Behind a --bwlimit job that holds its share of the workers (one here), a worker that
    frees goes to another job's files first."""

    settings: dict[str, Any] = {"workers": 2, "queue_size": 10, "connections_per_source": 1}

    def test_other_job_served_first(self) -> None:
        a, b = self.base / "a", self.base / "b"
        for root, n in ((a, 4), (b, 2)):
            root.mkdir()
            for i in range(n):
                (root / f"f{i}").write_bytes(os.urandom(300 * 1024))
        self.serve(a, port=7000)
        self.serve(b, port=7001)
        taken: list[tuple[int, str]] = []  # by a worker, in order
        transfer = SourceRun.transfer

        def recording(run, parts, entry, *args, **kwargs):
            taken.append((run.request.port, "/".join(parts)))
            return transfer(run, parts, entry, *args, **kwargs)

        self.patch(SourceRun, "transfer", recording)
        slow = self.service.submit([source(port=7000)], Observer(), bwlimit=64 * 1024)
        self.network.run_until(Deferred.fromCoroutine(self._until(lambda: len(taken) == 2)))
        quick = self.service.submit([source(port=7001)], Observer())
        self.network.run_until(quick.finished, step=0.01)
        self.network.run_until(slow.finished, step=0.01)
        # The slow job's first two files took both workers; as the first of them ended, the
        # worker went to the other job (the slow one still held its share, the other one).
        self.assertEqual(taken[:2], [(7000, "f0"), (7000, "f1")])
        self.assertEqual(taken[2], (7001, "f0"))
        self.assertEqual(sorted(taken), sorted([(7000, f"f{i}") for i in range(4)]
                                                 + [(7001, f"f{i}") for i in range(2)]))

    async def _until(self, condition: Any) -> None:
        while not condition():
            await deferLater(self.clock, 0.01)
