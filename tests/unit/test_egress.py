"""--max-rate: the content server's cap on its total egress (mirror/content_server/egress.py)."""

from __future__ import annotations

import os

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mirror.content_server.egress import EgressLimit
from mirror.content_server.fetch import BIG_CHUNK_SIZE
from tests.unit.helpers import connect_server, fetch_result, make_factory


class EgressLimitTests(SynchronousTestCase):
    def test_within_burst_no_wait(self) -> None:
        limit = EgressLimit(Clock(), 1000, burst=500)
        self.assertIsNone(limit.ready())
        limit.spend(500)
        self.assertIsNone(limit.ready())

    def test_debt_waits_until_paid(self) -> None:
        clock = Clock()
        limit = EgressLimit(clock, 1000, burst=0)
        limit.spend(2000)
        fired: list[int] = []
        d = limit.ready()
        assert d is not None
        d.addCallback(lambda _: fired.append(1))
        e = limit.ready()  # a second stream queues behind the first
        assert e is not None
        e.addCallback(lambda _: fired.append(2))
        clock.advance(1.5)
        self.assertEqual(fired, [])
        clock.advance(0.6)
        self.assertEqual(fired, [1, 2])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancelled_waiter_leaves_no_timer(self) -> None:
        clock = Clock()
        limit = EgressLimit(clock, 1000, burst=0)
        limit.spend(5000)
        d = limit.ready()
        assert d is not None
        d.addErrback(lambda f: None)
        d.cancel()
        self.assertEqual(limit.waiting, 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_refuses_zero_rate(self) -> None:
        self.assertRaises(ValueError, EgressLimit, Clock(), 0)


class ServerCapTests(SynchronousTestCase):
    """Two connections, each streaming a big file: together they stay under the cap."""

    RATE = 1 << 20

    def setUp(self) -> None:
        root = self.mktemp()
        os.makedirs(root)
        self.data = os.urandom(4 * BIG_CHUNK_SIZE)
        with open(os.path.join(root, "big"), "wb") as f:
            f.write(self.data)
        self.factory = make_factory(root, max_rate=self.RATE)
        self.addCleanup(os.close, self.factory.root_fd)

    def test_total_egress_is_capped_whatever_the_connections(self) -> None:
        rigs = [connect_server(self.factory, IPv4Address("TCP", f"127.0.0.{i}", 1000 + i))
                for i in (1, 2)]
        clock = rigs[0].clock
        for rig in rigs:
            rig.fetch(1, "big")
        assert self.factory.egress is not None
        burst = self.factory.egress.burst
        elapsed = 0.0
        while elapsed < 20 and not all(len(r.transport.value()) >= len(self.data) for r in rigs):
            clock.advance(0.1)
            elapsed += 0.1
            sent = sum(len(r.transport.value()) for r in rigs)
            # At most one chunk per stream beyond the bucket.
            self.assertLessEqual(sent, burst + self.RATE * elapsed + 2 * (BIG_CHUNK_SIZE + 64))
        # 8 MiB at 1 MiB/s: about 8 s, not at once.
        self.assertGreater(elapsed, 6)
        for rig in rigs:
            self.assertEqual(fetch_result(rig.log.take(), 1).data, self.data)

    def test_no_cap_by_default(self) -> None:
        root = self.mktemp()
        os.makedirs(root)
        factory = make_factory(root)
        self.addCleanup(os.close, factory.root_fd)
        self.assertIsNone(factory.egress)
