"""The chunk scheduler of multi-source download, simulated on a fake clock."""

from __future__ import annotations

import heapq
from collections.abc import Hashable

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mirror.mirror_server.chunk_scheduler import ChunkMap, ChunkScheduler

MiB = 1 << 20


class Sim:
    """Holders answering at fixed rates, one chunk after the other each, on a fake clock.

    ``faults[holder] = (chunk_number, "bad"|"fail")``: that holder's n-th delivery (from 0) is a
    bad chunk or a failure mid-chunk.
    """

    def __init__(self, chunks: int, rates: dict[str, float],
                 faults: dict[str, tuple[int, str]] | None = None) -> None:
        self.clock = Clock()
        self.sched = ChunkScheduler([MiB] * chunks, self.clock)
        self.rates = rates
        self.faults = faults or {}
        for name in rates:
            self.sched.add_holder(name)
        self.busy_until = dict.fromkeys(rates, 0.0)
        self.deliveries = dict.fromkeys(rates, 0)
        self.events: list[tuple[float, int, str, int]] = []
        self.cancelled: set[tuple[Hashable, int]] = set()
        self.served: dict[str, list[int]] = {name: [] for name in rates}
        self.duplicates = 0
        self._seq = 0

    def fill(self) -> None:
        for name in self.rates:
            while (index := self.sched.next_for(name)) is not None:
                if any(index in v for v in self.served.values()):
                    raise AssertionError("asked for a chunk already held")
                if any(e[3] == index for e in self.events):
                    self.duplicates += 1
                start = max(self.clock.seconds(), self.busy_until[name])
                self.busy_until[name] = start + MiB / self.rates[name]
                self._seq += 1
                heapq.heappush(self.events, (self.busy_until[name], self._seq, name, index))

    def run(self) -> None:
        self.fill()
        while self.events and not self.sched.complete:
            when, _, name, index = heapq.heappop(self.events)
            self.clock.advance(when - self.clock.seconds())
            if (name, index) in self.cancelled or self.sched.holders[name].dropped:
                continue
            n = self.deliveries[name]
            self.deliveries[name] += 1
            fault = self.faults.get(name)
            if fault is not None and fault[0] == n:
                if fault[1] == "bad":
                    self.sched.bad(name, index)
                else:
                    self.sched.failed(name, index, "connection lost")
            else:
                for other in self.sched.done(name, index):
                    self.cancelled.add((other, index))
                    self.sched.cancelled(other, index)
                self.served[name].append(index)
            self.fill()


class SchedulerTests(SynchronousTestCase):
    def test_fast_holders_get_more_chunks(self) -> None:
        sim = Sim(40, {"origin": 10 * MiB, "fast": 20 * MiB, "slow": 2 * MiB})
        sim.run()
        self.assertTrue(sim.sched.complete)
        counts = {k: len(v) for k, v in sim.served.items()}
        self.assertEqual(sum(counts.values()), 40)
        self.assertGreater(counts["fast"], counts["origin"])
        self.assertGreater(counts["origin"], counts["slow"])
        self.assertEqual(sim.sched.holders["fast"].bytes, counts["fast"] * MiB)

    def test_holder_failing_mid_chunk_is_dropped_and_its_chunk_fetched_elsewhere(self) -> None:
        sim = Sim(20, {"a": 10 * MiB, "b": 10 * MiB, "c": 10 * MiB}, {"b": (2, "fail")})
        sim.run()
        self.assertTrue(sim.sched.complete)
        self.assertEqual(len(sim.served["b"]), 2)
        self.assertEqual(sim.sched.holders["b"].dropped, "connection lost")
        self.assertIsNone(sim.sched.next_for("b"))
        self.assertEqual(sorted(sum(sim.served.values(), [])), list(range(20)))

    def test_bad_chunk_drops_the_holder_for_the_job(self) -> None:
        sim = Sim(20, {"origin": 10 * MiB, "liar": 30 * MiB}, {"liar": (1, "bad")})
        sim.run()
        self.assertTrue(sim.sched.complete)
        self.assertEqual(len(sim.served["liar"]), 1)
        self.assertIn("does not match", sim.sched.holders["liar"].dropped or "")
        self.assertEqual(sorted(sum(sim.served.values(), [])), list(range(20)))

    def test_end_game_duplicates_the_slow_holders_last_chunks(self) -> None:
        """Without copies the file would wait on the slow holder's chunk (~1 s at 1 MiB/s);
        with them a fast holder also fetches it and the file completes first there."""
        sim = Sim(8, {"fast": 50 * MiB, "slow": 1 * MiB})
        sim.run()
        self.assertTrue(sim.sched.complete)
        self.assertGreater(sim.duplicates, 0)
        self.assertLess(sim.clock.seconds(), 0.5)
        # The slow holder's fetches lost the race and were cancelled, not counted.
        self.assertTrue(any(holder == "slow" for holder, _ in sim.cancelled))
        self.assertEqual(sim.sched.holders["slow"].in_flight, {})
        self.assertEqual(len(sim.served["fast"]) + len(sim.served["slow"]), 8)

    def test_everyone_dropped_is_stuck(self) -> None:
        sim = Sim(4, {"a": MiB}, {"a": (0, "fail")})
        sim.run()
        self.assertFalse(sim.sched.complete)
        self.assertTrue(sim.sched.stuck)

    def test_depth_bounds_in_flight(self) -> None:
        sched = ChunkScheduler([MiB] * 10, Clock(), depth=2)
        sched.add_holder("a")
        self.assertEqual([sched.next_for("a"), sched.next_for("a"), sched.next_for("a")],
                         [0, 1, None])

    def test_partial_holder_is_asked_only_for_what_it_has(self) -> None:
        """The swarm extension: a holder with part of the file."""
        has = ChunkMap(6)
        for i in (1, 4):
            has.add(i)
        sched = ChunkScheduler([MiB] * 6, Clock(), depth=3)
        sched.add_holder("partial", has)
        self.assertEqual([sched.next_for("partial"), sched.next_for("partial"),
                          sched.next_for("partial")], [1, 4, None])
        sched.done("partial", 1)
        self.assertIn(1, sched.have)
        self.assertNotIn(0, sched.have)

    def test_chunk_map(self) -> None:
        m = ChunkMap(10)
        self.assertTrue(m.add(9))
        self.assertFalse(m.add(9))
        self.assertNotIn(10, m)
        self.assertEqual(list(m.missing()), list(range(9)))
        self.assertTrue(ChunkMap(10, full=True).complete)
