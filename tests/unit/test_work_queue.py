"""BoundedQueue: producers wait while it is full; order is kept; it never overflows; jobs
(groups) and their sources (flows) are served in turn, and a new one gets in at once."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings, strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mirror.mirror_server.work_queue import BoundedQueue


def put(q: BoundedQueue, item) -> Deferred:
    return Deferred.fromCoroutine(q.put(item))


def by_name(item: str) -> tuple[str, str]:
    """Items named GROUP+FLOW+NUMBER, e.g. ``ax1``: group ``a``, flow ``x``."""
    return item[0], item[1]


def fair(size: int) -> BoundedQueue[str]:
    return BoundedQueue(size, key=by_name)


def gets(q: BoundedQueue, n: int) -> list:
    return [q.get().result for _ in range(n)]


class BoundedQueueTests(SynchronousTestCase):
    def test_put_then_get(self) -> None:
        q: BoundedQueue[str] = BoundedQueue(2)
        self.assertIsNone(self.successResultOf(put(q, "a")))
        self.assertEqual(len(q), 1)
        self.assertEqual(self.successResultOf(q.get()), "a")
        self.assertEqual(len(q), 0)

    def test_get_then_put(self) -> None:
        q: BoundedQueue[str] = BoundedQueue(1)
        d = q.get()
        self.assertNoResult(d)
        self.successResultOf(put(q, "a"))
        self.assertEqual(self.successResultOf(d), "a")
        self.assertEqual(len(q), 0)
        # The slot came back: another put does not wait.
        self.successResultOf(put(q, "b"))

    def test_put_waits_while_full(self) -> None:
        q: BoundedQueue[int] = BoundedQueue(2)
        self.successResultOf(put(q, 1))
        self.successResultOf(put(q, 2))
        third = put(q, 3)
        self.assertNoResult(third)
        self.assertEqual(len(q), 2)
        self.assertEqual(self.successResultOf(q.get()), 1)
        self.successResultOf(third)
        self.assertEqual(len(q), 2)

    def test_never_overflows(self) -> None:
        q: BoundedQueue[int] = BoundedQueue(2)
        puts = [put(q, i) for i in range(1000)]  # DeferredQueue(size=2) would raise here
        self.assertEqual(len(q), 2)
        self.assertEqual(sum(1 for d in puts if d.called), 2)
        got = []
        for _ in range(1000):
            got.append(self.successResultOf(q.get()))
            self.assertLessEqual(len(q), 2)
        self.assertEqual(got, list(range(1000)))
        for d in puts:
            self.assertIsNone(self.successResultOf(d))

    def test_waiting_producers_resume_in_order(self) -> None:
        q: BoundedQueue[str] = BoundedQueue(1)
        self.successResultOf(put(q, "first"))
        waiting = [put(q, name) for name in ("a", "b", "c")]
        self.assertEqual(self.successResultOf(q.get()), "first")
        self.assertEqual([d.called for d in waiting], [True, False, False])
        self.assertEqual(self.successResultOf(q.get()), "a")
        self.assertEqual([d.called for d in waiting], [True, True, False])
        self.assertEqual(self.successResultOf(q.get()), "b")
        self.assertEqual(self.successResultOf(q.get()), "c")
        self.assertNoResult(q.get())

    def test_several_consumers(self) -> None:
        q: BoundedQueue[int] = BoundedQueue(1)
        consumers = [q.get() for _ in range(3)]
        for i in range(3):
            self.successResultOf(put(q, i))
        self.assertEqual([self.successResultOf(d) for d in consumers], [0, 1, 2])
        self.assertEqual(len(q), 0)

    def test_cancelled_consumer_loses_nothing(self) -> None:
        # Stopping the service cancels workers waiting in get(); no item may vanish.
        q: BoundedQueue[str] = BoundedQueue(1)
        gone = q.get()
        gone.addErrback(lambda f: f.trap(CancelledError))
        gone.cancel()
        self.successResultOf(put(q, "x"))
        self.assertEqual(self.successResultOf(q.get()), "x")
        self.successResultOf(put(q, "y"))

    def test_cancelled_producer_frees_nothing_it_did_not_take(self) -> None:
        q: BoundedQueue[str] = BoundedQueue(1)
        self.successResultOf(put(q, "a"))
        waiting = put(q, "b")
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.assertEqual(self.successResultOf(q.get()), "a")
        self.assertNoResult(q.get())  # "b" was never added
        self.successResultOf(put(q, "c"))
        self.assertEqual(len(q), 0)  # taken by the waiting get above

    def test_consumer_taking_more_inside_its_callback(self) -> None:
        # A worker that finishes synchronously and asks for the next item at once.
        q: BoundedQueue[int] = BoundedQueue(2)
        got: list[int] = []

        def worker(item: int) -> None:
            got.append(item)
            q.get().addCallback(worker)

        q.get().addCallback(worker)
        for i in range(10):
            self.successResultOf(put(q, i))
        self.assertEqual(got, list(range(10)))
        self.assertEqual(len(q), 0)

    @settings(deadline=None, max_examples=150)
    @given(st.integers(1, 4), st.lists(st.booleans(), max_size=60))
    def test_model(self, size: int, ops: list[bool]) -> None:
        """Against a model: True = put the next number, False = get."""
        q: BoundedQueue[int] = BoundedQueue(size)
        puts: list[Deferred] = []
        gets: list[Deferred] = []
        for op in ops:
            if op:
                puts.append(put(q, len(puts)))
            else:
                gets.append(q.get())
            self.assertLessEqual(len(q), size)
            # Exactly the puts that fit (ahead of the getters waiting) have completed.
            done = sum(1 for d in puts if d.called)
            self.assertEqual(done, min(len(puts), len(gets) + size))
        delivered = [d.result for d in gets if d.called]
        self.assertEqual(delivered, list(range(len(delivered))))
        self.assertEqual(len(delivered), min(len(gets), len(puts)))
        for d in gets:
            if not d.called:
                d.addErrback(lambda f: f.trap(CancelledError))
                d.cancel()


class FairQueueTests(SynchronousTestCase):
    """Round-robin over groups, then over a group's flows; slots to whoever holds least."""

    def test_groups_served_in_turn(self) -> None:
        q = fair(10)
        for item in ("ax1", "ax2", "ax3", "bx1", "bx2", "cx1"):
            self.successResultOf(put(q, item))
        self.assertEqual(gets(q, 6), ["ax1", "bx1", "cx1", "ax2", "bx2", "ax3"])
        self.assertEqual(len(q), 0)

    def test_flows_served_in_turn_within_their_group(self) -> None:
        # Group a has two flows, group b one: a's flows share a's turns.
        q = fair(10)
        for item in ("ax1", "ax2", "ay1", "ay2", "bz1", "bz2", "bz3"):
            self.successResultOf(put(q, item))
        self.assertEqual(gets(q, 7), ["ax1", "bz1", "ay1", "bz2", "ax2", "bz3", "ay2"])

    def test_new_group_gets_the_next_slot_and_an_early_turn(self) -> None:
        # Old FIFO: b's item would wait behind a's whole backlog and a's waiting producer.
        q = fair(4)
        for i in range(4):
            self.successResultOf(put(q, f"ax{i}"))
        a_more = put(q, "ax4")
        b = put(q, "bx0")
        self.assertNoResult(a_more)
        self.assertNoResult(b)
        self.assertEqual(q.get().result, "ax0")
        self.successResultOf(b)  # the freed slot went to b, which held nothing
        self.assertNoResult(a_more)
        # b joins the round: its turn comes after a's current one, not after a's backlog.
        self.assertEqual(gets(q, 2), ["ax1", "bx0"])
        self.successResultOf(a_more)
        self.assertEqual(gets(q, 3), ["ax2", "ax3", "ax4"])

    def test_waiting_producers_share_the_slots(self) -> None:
        # a fills the queue; a, b and c keep a producer waiting each: freed slots go to the
        # group holding least, so b and c get them all while a holds more than they do.
        q = fair(6)
        for i in range(6):
            self.successResultOf(put(q, f"ax{i}"))
        admitted: list[str] = []

        def producer(group: str) -> None:
            n = 100 if group == "a" else 0

            def more(_: object = None) -> None:
                nonlocal n
                name = f"{group}x{n}"
                n += 1
                d = put(q, name)
                d.addCallback(lambda _: admitted.append(name[0]))
                d.addCallback(more)
            more()

        for g in "abc":
            producer(g)
        self.assertEqual(len(q), 6)
        for _ in range(6):
            q.get()
            self.assertEqual(len(q), 6)  # the bound holds; each slot is taken at once
        self.assertEqual(len(admitted), 6)
        self.assertNotIn("a", admitted)
        self.assertEqual(q.held("a"), 3)  # served every other turn, refilled never
        q.get()
        self.assertEqual(admitted[-1], "b")  # held 1 (c 2): a's turn comes when it holds least

    def test_resumed_producer_does_not_overtake(self) -> None:
        # take_ready frees several slots at once; the producer given the first one puts again
        # at once, yet the next slot still goes to the other group, which holds less.
        q = fair(4)
        for i in range(4):
            self.successResultOf(put(q, f"ax{i}"))
        order: list[str] = []

        def again(_: object) -> None:
            order.append("a")
            put(q, "ax9").addCallback(lambda _: order.append("a again"))

        put(q, "ax5").addCallback(again)
        put(q, "bx0").addCallback(lambda _: order.append("b"))
        self.assertEqual(q.get().result, "ax0")
        self.assertEqual(order, ["b"])
        q.take_ready(2, lambda item: True)
        self.assertEqual(order, ["b", "a", "a again"])
        self.assertEqual(len(q), 4)

    def test_take_ready_stays_with_the_flow_just_served(self) -> None:
        q = fair(10)
        for item in ("ax1", "ax2", "ay1", "bx1", "ax3", "ax4"):
            self.successResultOf(put(q, item))
        self.assertEqual(q.get().result, "ax1")
        # A bundle goes to one source: only ax's items, in order, while accepted.
        self.assertEqual(q.take_ready(10, lambda i: i != "ax4"), ["ax2", "ax3"])
        self.assertEqual(q.held("a"), 2)
        # Same turn: b is next, then a's other flow.
        self.assertEqual(gets(q, 3), ["bx1", "ay1", "ax4"])
        self.assertEqual(q.take_ready(10, lambda i: True), [])

    def test_take_ready_like(self) -> None:
        q = fair(10)
        for item in ("ax1", "bx1", "bx2"):
            self.successResultOf(put(q, item))
        first = q.get().result
        self.assertEqual(q.take_ready(5, lambda i: True, like="bx0"), ["bx1", "bx2"])
        self.assertEqual((first, len(q), q.held("b")), ("ax1", 0, 0))
        self.assertEqual(q.take_ready(5, lambda i: True, like="cx0"), [])

    def test_take_ready_before_any_get_takes_the_next_flow(self) -> None:
        q = fair(10)
        for item in ("ax1", "ax2", "bx1"):
            self.successResultOf(put(q, item))
        self.assertEqual(q.take_ready(5, lambda i: True), ["ax1", "ax2"])
        self.assertEqual(gets(q, 1), ["bx1"])

    def test_wait_below_with_a_key_fires_at_the_groups_share(self) -> None:
        # A listing closed while a's backlog fills the queue resumes at once for a group that
        # holds at most its share of the watermark (4 over 2 groups), not after a's drained.
        q = fair(8)
        for i in range(8):
            self.successResultOf(put(q, f"ax{i}"))
        plain = q.wait_below(4)
        self.successResultOf(q.wait_below(4, key=("b", "x")))  # b holds nothing
        waiting_b = put(q, "bx0")
        a_more = put(q, "ax8")
        q.get()  # the slot goes to b (holds 0)
        self.successResultOf(waiting_b)
        q.get()  # then to a
        self.successResultOf(a_more)
        self.assertEqual((q.held("a"), q.held("b")), (7, 1))
        self.successResultOf(q.wait_below(4, key=("b", "y")))
        a_wait = q.wait_below(4, key=("a", "x"))
        self.assertNoResult(a_wait)
        self.assertNoResult(plain)
        self.assertEqual(gets(q, 3), ["bx0", "ax2", "ax3"])
        self.assertNoResult(plain)
        self.assertNoResult(a_wait)
        gets(q, 1)  # 4 left, all a's
        self.successResultOf(plain)
        self.successResultOf(a_wait)

    def test_cancelled_producer_of_one_group_leaves_the_others(self) -> None:
        q = fair(2)
        self.successResultOf(put(q, "ax0"))
        self.successResultOf(put(q, "ax1"))
        b = put(q, "bx0")
        c = put(q, "cx0")
        b.cancel()
        self.failureResultOf(b, CancelledError)
        self.assertEqual(q.get().result, "ax0")
        self.successResultOf(c)
        self.assertEqual(gets(q, 2), ["ax1", "cx0"])
        self.assertEqual(len(q), 0)
        self.assertNoResult(q.get().addErrback(lambda f: f.trap(CancelledError)))

    @settings(deadline=None, max_examples=300)
    @given(st.integers(1, 4),
           st.lists(st.one_of(st.tuples(st.just("put"), st.sampled_from("abc"),
                                        st.sampled_from("xy")),
                              st.tuples(st.just("get")),
                              st.tuples(st.just("take"), st.integers(1, 3)),
                              st.tuples(st.just("cancel"), st.integers(0, 50))),
                    min_size=4, max_size=80))
    def test_fair_model(self, size: int, ops: list[tuple]) -> None:
        """Random puts (several groups and flows), gets, bundles and cancelled puts: the bound
        holds, a put waits only while the queue is full, each flow keeps its order, nothing is
        lost or duplicated, and no group is served twice while another held items throughout.
        """
        q = fair(size)
        counters: dict[str, int] = defaultdict(int)
        puts: list[tuple[str, Deferred]] = []
        getters: list[Deferred] = []
        delivered: list[str] = []
        last_served: dict[str, int] = {}  # group -> index of its last get
        held_since: dict[str, int] = {}  # group -> first get index it has held items since
        serves = 0

        def record(item: str) -> str:
            delivered.append(item)
            return item

        for op in ops:
            if op[0] == "put":
                flow = op[1] + op[2]
                name = f"{flow}{counters[flow]}"
                counters[flow] += 1
                puts.append((name, put(q, name)))
            elif op[0] == "get":
                held = {g for g in "abc" if q.held(g)}
                d = q.get()
                d.addCallback(record)
                getters.append(d)
                if d.called:
                    group = self.successResultOf(d)[0]
                    # Round-robin: every group holding items since before this group's
                    # previous turn has been served since then.
                    for other in held - {group}:
                        if other in held_since and group in last_served:
                            self.assertFalse(
                                held_since[other] <= last_served[group]
                                and last_served.get(other, -1) < last_served[group],
                                f"{group} served twice while {other} waited")
                    last_served[group] = serves
                    serves += 1
            elif op[0] == "take":
                for item in q.take_ready(op[1], lambda i: True):
                    record(item)
            else:
                waiting = [d for _, d in puts if not d.called]
                if waiting:
                    waiting[op[1] % len(waiting)].cancel()
            for g in "abc":
                if q.held(g):
                    held_since.setdefault(g, serves)
                else:
                    held_since.pop(g, None)
            self.assertLessEqual(len(q), size)
            if any(not d.called for _, d in puts):
                self.assertEqual(len(q), size)  # a put waits only on a full queue
            if any(not d.called for d in getters):
                self.assertEqual(len(q), 0)
        # Give up the waiting puts, then drain: exactly the added items come out, once each.
        for _, d in puts:
            if not d.called:
                d.cancel()
        for d in getters:
            if not d.called:
                d.cancel()
        while len(q):
            delivered.append(self.successResultOf(q.get()))
        added = [name for name, d in puts if not isinstance(d.result, Failure)]
        for d in [d for _, d in puts] + getters:
            if isinstance(d.result, Failure):
                d.result.trap(CancelledError)
                d.addErrback(lambda f: None)
        self.assertEqual(sorted(delivered), sorted(added))
        for flow in {name[:2] for name in added}:
            mine = [i for i in delivered if i[:2] == flow]
            self.assertEqual(mine, sorted(mine, key=lambda i: int(i[2:])))


def put_many(q: BoundedQueue, items, on_wait=None) -> Deferred:
    return Deferred.fromCoroutine(q.put_many(items, on_wait))


class PutManyTests(SynchronousTestCase):
    """A batch waits once, however many slots it needs; order, bound and fairness hold."""

    def test_batch_that_fits_does_not_wait(self) -> None:
        q = fair(4)
        waited: list[bool] = []
        self.successResultOf(put_many(q, ["ax0", "ax1", "ax2"], lambda: waited.append(True)))
        self.assertEqual(waited, [])
        self.assertEqual(gets(q, 3), ["ax0", "ax1", "ax2"])

    def test_batch_fills_the_room_then_waits_for_the_rest(self) -> None:
        q = fair(3)
        waited: list[bool] = []
        d = put_many(q, [f"ax{i}" for i in range(7)], lambda: waited.append(True))
        self.assertEqual(waited, [True])
        self.assertNoResult(d)
        self.assertEqual(len(q), 3)  # the bound holds
        taken = gets(q, 2)
        self.assertEqual(len(q), 3)  # each freed slot was refilled from the batch at once
        self.assertNoResult(d)
        taken += q.take_ready(3, lambda item: True)
        self.assertEqual(len(q), 2)  # the last two went in: the batch is done
        self.successResultOf(d)
        taken += gets(q, 2)
        self.assertEqual(taken, [f"ax{i}" for i in range(7)])

    def test_cancel_drops_what_is_not_in(self) -> None:
        q = fair(2)
        d = put_many(q, ["ax0", "ax1", "ax2", "ax3"])
        q.get()  # ax2 goes in
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(gets(q, 2), ["ax1", "ax2"])
        self.assertEqual(len(q), 0)
        self.successResultOf(put(q, "bx0"))  # nothing of the cancelled batch is left waiting
        self.assertEqual(gets(q, 1), ["bx0"])

    def test_batches_of_two_jobs_share_the_slots(self) -> None:
        # Job a's batch holds the queue; job b's batch arrives: freed slots go to b while it
        # holds less, so a's big batch cannot keep b out (a waiting producer per item would
        # have had b wait behind all 16 of a's).
        q = fair(4)
        a = put_many(q, [f"ax{i}" for i in range(20)])
        b = put_many(q, [f"bx{i}" for i in range(3)])
        self.assertEqual(len(q), 4)
        self.assertEqual(gets(q, 4), ["ax0", "ax1", "bx0", "ax2"])
        self.assertEqual((q.held("a"), q.held("b")), (2, 2))
        self.successResultOf(b)
        self.assertNoResult(a)

    def test_single_put_waits_behind_a_batch(self) -> None:
        q = fair(1)
        self.successResultOf(put(q, "ax0"))
        batch = put_many(q, ["ax1", "ax2"])
        single = put(q, "ax3")
        self.assertEqual(gets(q, 3), ["ax0", "ax1", "ax2"])
        self.successResultOf(batch)
        self.successResultOf(single)
        self.assertEqual(gets(q, 1), ["ax3"])
