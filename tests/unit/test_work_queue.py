"""BoundedQueue: producers wait while it is full; order is kept; it never overflows."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from mirror.mirror_server.work_queue import BoundedQueue


def put(q: BoundedQueue, item) -> Deferred:
    return Deferred.fromCoroutine(q.put(item))


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
