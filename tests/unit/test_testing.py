"""mirror.testing: the test doubles behave like what they stand for, where tests rely on it.

A double that is wrong makes every test built on it lie, so each is held to the real thing:
the thread pools to `DiskThreads`' contract (a Deferred per call, an exception as its
failure), the back-pressure transport to Twisted's own TCP buffering (`FileDescriptor`).
The in-memory network has its tests in test_connections.py.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from hypothesis import given, settings, strategies as st
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mirror.testing import BackPressureTransport, InlineThreads, StepThreads


class Calls:
    """Small calls that record the order in which they ran."""

    def __init__(self) -> None:
        self.ran: list[Any] = []

    def echo(self, value: Any, plus: int = 0) -> Any:
        self.ran.append(value)
        return value + plus if plus else value

    def fail(self, value: Any) -> Any:
        self.ran.append(value)
        raise ValueError(f"failed {value}")


class Importing(SynchronousTestCase):
    def test_no_reactor_is_imported(self) -> None:
        """Importing the doubles must not install the default reactor (a test or a program
        could not choose its own afterwards)."""
        code = ("import sys, mirror.testing; "
                "sys.exit('twisted.internet.reactor' in sys.modules)")
        done = subprocess.run([sys.executable, "-c", code], timeout=60)
        self.assertEqual(done.returncode, 0)


class Inline(SynchronousTestCase):
    def test_runs_at_once(self) -> None:
        threads, calls = InlineThreads(), Calls()
        d = threads.run(calls.echo, 1, plus=10)
        self.assertEqual(calls.ran, [1])
        self.assertEqual(self.successResultOf(d), 11)
        self.assertEqual(self.successResultOf(threads.run_batched(calls.echo, 2)), 2)
        self.assertEqual(calls.ran, [1, 2])

    def test_exception_is_a_failure(self) -> None:
        threads, calls = InlineThreads(), Calls()
        for run in (threads.run, threads.run_batched):
            d = run(calls.fail, 3)  # not raised here, as from a thread
            self.assertEqual(str(self.failureResultOf(d, ValueError).value), "failed 3")


class StepAsThreads(SynchronousTestCase):
    """`StepThreads` given to code in place of a `DiskThreads`."""

    def setUp(self) -> None:
        self.threads = StepThreads()
        self.calls = Calls()

    def test_nothing_runs_until_stepped(self) -> None:
        d = self.threads.run(self.calls.echo, 1)
        b = self.threads.run_batched(self.calls.echo, 2)
        self.assertEqual(self.calls.ran, [])
        self.assertNoResult(d)
        self.assertNoResult(b)
        self.assertEqual(len(self.threads.queue), 2)

    def test_steps_run_in_order_one_at_a_time(self) -> None:
        ds = [self.threads.run(self.calls.echo, i) for i in range(3)]
        self.assertTrue(self.threads.step())
        self.assertEqual(self.calls.ran, [0])
        self.assertEqual(self.successResultOf(ds[0]), 0)
        self.assertNoResult(ds[1])
        self.assertTrue(self.threads.step())
        self.assertTrue(self.threads.step())
        self.assertEqual(self.calls.ran, [0, 1, 2])
        self.assertEqual([self.successResultOf(d) for d in ds[1:]], [1, 2])
        self.assertFalse(self.threads.step())  # nothing left

    def test_keyword_arguments(self) -> None:
        d = self.threads.run(self.calls.echo, 5, plus=2)
        self.threads.step()
        self.assertEqual(self.successResultOf(d), 7)

    def test_exception_fails_only_its_own_call(self) -> None:
        bad = self.threads.run(self.calls.fail, 1)
        good = self.threads.run(self.calls.echo, 2)
        self.assertTrue(self.threads.step())  # does not raise
        self.assertEqual(str(self.failureResultOf(bad, ValueError).value), "failed 1")
        self.assertNoResult(good)
        self.threads.step()
        self.assertEqual(self.successResultOf(good), 2)

    def test_run_all_runs_what_steps_queue(self) -> None:
        """Work done on a result (a callback) that queues more work is run too, after."""
        d = self.threads.run(self.calls.echo, 1)
        d.addCallback(lambda _: self.threads.run(self.calls.echo, 2))
        self.threads.run(self.calls.echo, 3)
        self.assertEqual(self.threads.run_all(), 3)
        self.assertEqual(self.calls.ran, [1, 3, 2])
        self.assertEqual(self.threads.queue, [])

    def test_run_all_stops_work_that_never_ends(self) -> None:
        def again() -> None:
            self.threads.run(again)

        self.threads.run(again)
        self.assertRaises(AssertionError, self.threads.run_all, limit=50)


class StepAsThreadPool(SynchronousTestCase):
    """`StepThreads` in place of the `ThreadPool` inside a real `DiskThreads` (test_threads.py
    uses it so): the outcome goes to the callback as ``ThreadPool`` reports it."""

    def test_outcomes(self) -> None:
        pool, calls = StepThreads(), Calls()
        outcomes: list[tuple[bool, Any]] = []
        pool.callInThreadWithCallback(lambda ok, r: outcomes.append((ok, r)), calls.echo, 4)
        pool.callInThreadWithCallback(lambda ok, r: outcomes.append((ok, r)), calls.fail, 5)
        self.assertEqual(outcomes, [])
        pool.run_all()
        self.assertEqual(outcomes[0], (True, 4))
        ok, failure = outcomes[1]
        self.assertFalse(ok)
        self.assertIsInstance(failure, Failure)
        self.assertIsInstance(failure.value, ValueError)

    def test_start_and_stop(self) -> None:
        pool = StepThreads()
        self.assertEqual((pool.started, pool.stopped), (False, False))
        pool.start()
        pool.stop()
        self.assertEqual((pool.started, pool.stopped), (True, True))


@implementer(IPushProducer)
class Producer:
    """A push producer that records what it was told; ``writes`` pieces are written on each
    resume (and at `start`) until the consumer pauses it or they run out."""

    def __init__(self, consumer: Any, pieces: list[bytes] | None = None) -> None:
        self.consumer = consumer
        self.pieces = list(pieces or [])
        self.paused = False
        self.pause_calls = 0
        self.resumes = 0

    def start(self) -> None:
        self.consumer.registerProducer(self, True)
        self._write()

    def _write(self) -> None:
        while self.pieces and not self.paused:
            self.consumer.write(self.pieces.pop(0))

    def pauseProducing(self) -> None:
        self.pause_calls += 1
        self.paused = True

    def resumeProducing(self) -> None:
        self.resumes += 1
        self.paused = False
        self._write()

    def stopProducing(self) -> None:
        self.pieces = []


class SocketLike(FileDescriptor):
    """Twisted's own transport buffering (the base of its TCP transports), on a fake reactor;
    `doWrite` is the socket taking every byte."""

    connected = 1

    def __init__(self, buffer_size: int) -> None:
        super().__init__(reactor=MemoryReactor())
        self.bufferSize = buffer_size
        self.sent = bytearray()

    def writeSomeData(self, data: bytes) -> int:
        self.sent += data
        return len(data)


class BackPressure(SynchronousTestCase):
    def test_pauses_only_beyond_the_limit(self) -> None:
        transport = BackPressureTransport(limit=10)
        producer = Producer(transport)
        transport.registerProducer(producer, True)
        transport.write(b"x" * 10)
        self.assertFalse(producer.paused)  # full, not beyond
        transport.write(b"x")
        self.assertTrue(producer.paused)
        self.assertTrue(transport.producer_paused)
        self.assertEqual(transport.pauses, 1)

    def test_no_limit(self) -> None:
        transport = BackPressureTransport(limit=0)
        producer = Producer(transport, [b"x" * 100_000] * 10)
        producer.start()
        self.assertFalse(producer.paused)
        self.assertEqual(len(transport.value()), 1_000_000)

    def test_pull_producer_is_not_paused(self) -> None:
        """A TCP transport pauses only push producers; a pull producer writes when asked."""
        transport = BackPressureTransport(limit=1)
        producer = Producer(transport)
        transport.registerProducer(producer, False)
        transport.write(b"xx")
        self.assertEqual((producer.pause_calls, transport.pauses), (0, 0))

    def test_drain_resumes_and_keeps_the_bytes(self) -> None:
        transport = BackPressureTransport(limit=5)
        producer = Producer(transport, [b"abcd", b"efgh", b"ijkl"])
        producer.start()
        self.assertEqual(transport.value(), b"abcdefgh")  # paused after the second piece
        self.assertEqual(transport.drain(), b"abcdefgh")
        self.assertEqual(producer.resumes, 1)
        self.assertEqual(transport.value(), b"ijkl")  # written on resume, waits for next drain
        self.assertEqual(transport.drain(), b"ijkl")
        self.assertEqual(producer.resumes, 1)  # not paused this time: nothing to resume
        self.assertEqual(bytes(transport.out), b"abcdefghijkl")

    def test_rounds_until_the_producer_is_done(self) -> None:
        transport = BackPressureTransport(limit=5)
        pieces = [bytes([65 + i]) * 4 for i in range(7)]
        producer = Producer(transport, pieces)
        producer.start()
        rounds = list(transport.rounds())
        self.assertEqual(rounds, [b"AAAABBBB", b"CCCCDDDD", b"EEEEFFFF", b"GGGG"])
        self.assertEqual((transport.pauses, producer.resumes), (3, 3))
        self.assertFalse(transport.producer_paused)

    def test_drain_all(self) -> None:
        transport = BackPressureTransport(limit=3)
        pieces = [bytes([i]) * 2 for i in range(50)]
        Producer(transport, pieces).start()
        self.assertEqual(transport.drain_all(), b"".join(pieces))
        self.assertEqual(transport.value(), b"")

    def test_a_closing_transport_still_resumes(self) -> None:
        """As over TCP: loseConnection waits for the producer, which is resumed to finish."""
        transport = BackPressureTransport(limit=3)
        producer = Producer(transport, [b"ab", b"cd", b"ef"])
        producer.start()
        transport.loseConnection()
        self.assertEqual(transport.drain_all(), b"abcdef")

    def test_an_aborted_transport_sends_and_resumes_nothing(self) -> None:
        transport = BackPressureTransport(limit=3)
        producer = Producer(transport, [b"ab", b"cd", b"ef"])
        producer.start()
        transport.abortConnection()
        transport.write(b"late")
        self.assertEqual(transport.drain(), b"abcd")
        self.assertEqual(producer.resumes, 0)
        self.assertEqual(list(transport.rounds()), [b""])

    def test_reading_pause_is_apart_from_the_producer(self) -> None:
        transport = BackPressureTransport(limit=3)
        producer = Producer(transport, [b"abcd", b"ef"])
        producer.start()
        transport.loseConnection()
        transport.pauseProducing()  # allowed while closing, as on a real transport
        self.assertTrue(transport.reading_paused)
        transport.resumeProducing()
        self.assertFalse(transport.reading_paused)
        self.assertTrue(transport.producer_paused)  # untouched by the reading side
        self.assertEqual(producer.resumes, 0)

    def test_a_new_producer_starts_unpaused(self) -> None:
        transport = BackPressureTransport(limit=1)
        first = Producer(transport, [b"xx"])
        first.start()
        transport.unregisterProducer()
        transport.clear()
        second = Producer(transport, [b"yy"])
        second.start()
        self.assertTrue(second.paused)
        self.assertEqual(transport.pauses, 2)

    @settings(max_examples=200, deadline=None)
    @given(limit=st.integers(1, 40),
           steps=st.lists(st.one_of(st.integers(0, 30), st.just("drain")), max_size=30))
    def test_pauses_and_resumes_as_twisteds_own_transport(self, limit: int,
                                                          steps: list[Any]) -> None:
        """After every write and drain, the producer is paused or not, and has been resumed
        as often, as under Twisted's `FileDescriptor` with a buffer of ``limit`` bytes; and
        the same bytes went out."""
        double = BackPressureTransport(limit=limit)
        real = SocketLike(limit)
        ours, theirs = Producer(double), Producer(real)
        double.registerProducer(ours, True)
        real.registerProducer(theirs, True)
        for step in steps:
            if step == "drain":
                double.drain()
                real.doWrite()
            else:
                double.write(b"x" * step)
                real.write(b"x" * step)
            self.assertEqual((ours.paused, ours.resumes, ours.pause_calls),
                             (theirs.paused, theirs.resumes, theirs.pause_calls), steps)
        double.drain()
        real.doWrite()
        self.assertEqual(bytes(double.out), bytes(real.sent))

