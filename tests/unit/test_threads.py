"""mirror.threads: `DiskThreads` runs calls in its pool, and batches small calls per reactor turn.

No thread runs here: the pool is `mirror.testing.StepThreads`, whose calls wait until the test
runs them (as a worker thread would, later), and the reactor is a `MemoryReactorClock`, whose
``advance(0)`` ends the current reactor turn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mirror.testing import StepThreads
from mirror.threads import DiskThreads


class Reactor(MemoryReactorClock):
    """A fake reactor with the thread hooks `deferToThreadPool` and `stopService` use."""

    def __init__(self) -> None:
        super().__init__()
        self.own_pool = StepThreads()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)

    def getThreadPool(self) -> StepThreads:
        return self.own_pool


class Recorder:
    """Small calls that record the order in which they ran."""

    def __init__(self) -> None:
        self.ran: list[Any] = []

    def echo(self, value: Any) -> Any:
        self.ran.append(value)
        return value

    def fail(self, value: Any) -> Any:
        self.ran.append(value)
        raise ValueError(f"failed {value}")


def results(ds: list[Deferred[Any]]) -> list[tuple[str, Any]]:
    """("ok", value), ("error", exception type) or ("pending", None) for each Deferred, in
    order; looks without consuming (a test takes its failures with `failureResultOf`)."""
    out: list[tuple[str, Any]] = []
    for d in ds:
        if not d.called:
            out.append(("pending", None))
        elif isinstance(d.result, Failure):
            out.append(("error", d.result.type))
        else:
            out.append(("ok", d.result))
    return out


class ThreadsTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = Reactor()
        self.threads = DiskThreads(self.reactor, size=2)
        self.pool = StepThreads()
        self.threads.pool = self.pool  # type: ignore[assignment]
        self.calls = Recorder()


class Run(ThreadsTestCase):
    def test_result_comes_back_from_the_pool(self) -> None:
        d = self.threads.run(self.calls.echo, 7)
        self.assertNoResult(d)
        self.assertEqual(len(self.pool.queue), 1)
        self.pool.step()
        self.assertEqual(self.successResultOf(d), 7)

    def test_exception_is_a_failure(self) -> None:
        d = self.threads.run(self.calls.fail, 1)
        self.pool.step()
        self.assertEqual(str(self.failureResultOf(d, ValueError).value), "failed 1")

    def test_keyword_arguments(self) -> None:
        def subtract(a: int, b: int = 0) -> int:
            return a - b

        d = self.threads.run(subtract, 5, b=2)
        self.pool.step()
        self.assertEqual(self.successResultOf(d), 3)


class RunBatched(ThreadsTestCase):
    def test_calls_of_one_turn_are_one_pool_call_in_order(self) -> None:
        ds = [self.threads.run_batched(self.calls.echo, i) for i in range(5)]
        self.assertEqual(self.pool.queue, [])  # nothing dispatched during the turn
        self.reactor.advance(0)
        self.assertEqual(len(self.pool.queue), 1)
        self.assertEqual(results(ds), [("pending", None)] * 5)
        self.pool.step()
        self.assertEqual(self.calls.ran, [0, 1, 2, 3, 4])
        self.assertEqual(results(ds), [("ok", i) for i in range(5)])

    def test_an_exception_fails_only_its_own_call(self) -> None:
        ds = [self.threads.run_batched(self.calls.echo, 0),
              self.threads.run_batched(self.calls.fail, 1),
              self.threads.run_batched(self.calls.echo, 2)]
        self.reactor.advance(0)
        self.pool.step()
        self.assertEqual(self.calls.ran, [0, 1, 2])  # the calls after it still ran
        self.assertEqual(results(ds), [("ok", 0), ("error", ValueError), ("ok", 2)])
        self.assertEqual(str(self.failureResultOf(ds[1]).value), "failed 1")

    def test_a_batch_per_reactor_turn(self) -> None:
        first = [self.threads.run_batched(self.calls.echo, i) for i in range(2)]
        self.reactor.advance(0)
        second = [self.threads.run_batched(self.calls.echo, i) for i in range(2, 5)]
        self.reactor.advance(0)
        self.assertEqual(len(self.pool.queue), 2)
        # Run in the pool's own order; each batch answers only its own calls.
        self.pool.step()
        self.assertEqual(results(first), [("ok", 0), ("ok", 1)])
        self.assertEqual(results(second), [("pending", None)] * 3)
        self.pool.step()
        self.assertEqual(results(second), [("ok", 2), ("ok", 3), ("ok", 4)])
        self.reactor.advance(0)
        self.assertEqual(self.pool.queue, [])  # no empty batch dispatched

    def test_a_full_batch_goes_at_once(self) -> None:
        n = DiskThreads.MAX_BATCH
        full = [self.threads.run_batched(self.calls.echo, i) for i in range(n)]
        self.assertEqual(len(self.pool.queue), 1)  # without waiting for the turn to end
        late = self.threads.run_batched(self.calls.echo, n)
        self.assertEqual(len(self.pool.queue), 1)
        self.reactor.advance(0)
        self.assertEqual(len(self.pool.queue), 2)  # the one after it: next batch
        self.pool.step()
        self.pool.step()
        self.assertEqual(self.calls.ran, list(range(n + 1)))
        self.assertEqual(results(full), [("ok", i) for i in range(n)])
        self.assertEqual(self.successResultOf(late), n)
        self.reactor.advance(0)
        self.assertEqual(self.pool.queue, [])

    def test_the_pool_call_failing_fails_every_call_of_the_batch(self) -> None:
        ds = [self.threads.run_batched(self.calls.echo, i) for i in range(3)]
        self.reactor.advance(0)
        on_result, _, _, _ = self.pool.queue.pop(0)
        on_result(False, Failure(RuntimeError("pool broke")))
        for d in ds:
            self.assertEqual(str(self.failureResultOf(d, RuntimeError).value), "pool broke")
        self.assertEqual(self.calls.ran, [])


class Service(ThreadsTestCase):
    def test_start_starts_the_pool(self) -> None:
        self.threads.startService()
        self.assertTrue(self.pool.started)
        self.assertTrue(self.threads.running)

    def test_stop_joins_the_pool_off_the_reactor_thread(self) -> None:
        """Joining waits for running work: done in the reactor's own pool, never inline."""
        self.threads.startService()
        d = self.threads.stopService()
        assert d is not None
        self.assertFalse(self.pool.stopped)
        self.assertNoResult(d)
        self.reactor.own_pool.step()
        self.assertTrue(self.pool.stopped)
        self.successResultOf(d)
        self.assertFalse(self.threads.running)

