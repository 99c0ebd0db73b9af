"""Test doubles for code built on this package (as `treq.testing` is for treq's users).

One home for every double, so that each is written (and tested, in
``tests/unit/test_testing.py``) once:

- `InlineThreads` and `StepThreads` stand in for `mirror.threads.DiskThreads`: the first
  runs work at once, the second only when the test says so, in order.
  `StepThreads` also stands in for the `ThreadPool` under a real `DiskThreads`.
- `BackPressureTransport` is a `StringTransport` that pauses its producer once a socket
  buffer's worth of bytes waits, and resumes it when the test drains it.
- `MemoryNetwork` stands in for TCP: its `~MemoryNetwork.endpoint` method is an endpoint
  factory (`mirror.mirror_server.connections.EndpointFactory`) whose endpoints join the client
  protocol to a server protocol in memory with `twisted.test.iosim`, so that the code under
  test makes its connections exactly as it does over TCP, on a fake clock.

Importing this module imports no reactor.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

__all__ = ["BackPressureTransport", "InlineThreads", "MemoryEndpoint", "MemoryNetwork",
           "StepThreads"]

T = TypeVar("T")
P = ParamSpec("P")


# -- thread pools --------------------------------------------------------------------------


class InlineThreads:
    """Runs work at once, in the caller's thread: a `DiskThreads` for unit tests on a fake
    reactor, where no thread may run. As with the real pool, the result comes back as a
    Deferred and an exception as its failure (never raised to the caller)."""

    def run(self, f: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        return maybeDeferred(f, *args, **kwargs)

    def run_batched(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        return self.run(f, *args)


#: A call waiting in a `StepThreads`: how to report its outcome, and the call itself.
_Queued = tuple[Callable[[bool, Any], None], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class StepThreads:
    """A thread pool whose work runs only when the test says so (`step`, `run_all`), oldest
    first: several calls can be in flight at once on a fake reactor, in a known order.

    It stands in at either of two levels:

    - for a `DiskThreads`, given to code that takes one (`run`, `run_batched`): each call
      returns a Deferred that fires when the call is stepped;
    - for the `ThreadPool` inside a real `DiskThreads` (`callInThreadWithCallback`, `start`,
      `stop`), to test that class itself: the outcome goes to the callback, as from a worker.

    As in a worker thread, an exception is delivered as a failure, and the next call runs
    only when it is stepped too.
    """

    def __init__(self) -> None:
        #: The calls not run yet, oldest first.
        self.queue: list[_Queued] = []
        self.started = False
        self.stopped = False

    # -- as a DiskThreads ------------------------------------------------------------------

    def run(self, f: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        d: Deferred[T] = Deferred()

        def on_result(ok: bool, result: Any) -> None:
            if ok:
                d.callback(result)
            else:
                d.errback(result)

        self.callInThreadWithCallback(on_result, f, *args, **kwargs)
        return d

    def run_batched(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        return self.run(f, *args)

    # -- as a ThreadPool -------------------------------------------------------------------

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def callInThreadWithCallback(self, onResult: Callable[[bool, Any], None],
                                 func: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.queue.append((onResult, func, args, kw))

    # -- the test's controls ---------------------------------------------------------------

    def step(self) -> bool:
        """Run the oldest queued call; False if there was none."""
        if not self.queue:
            return False
        on_result, f, args, kwargs = self.queue.pop(0)
        try:
            result = f(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)
        return True

    def run_all(self, limit: int = 100000) -> int:
        """Step until nothing is queued, including the calls that steps queue; how many ran.
        More than ``limit`` is taken for work that never ends."""
        n = 0
        while self.step():
            n += 1
            assert n < limit, "thread work does not end"
        return n


# -- transports ----------------------------------------------------------------------------


class BackPressureTransport(StringTransport):
    """A `StringTransport` with a socket buffer of ``limit`` bytes (0: unlimited).

    Like a TCP transport, it pauses its (streaming) producer once more than ``limit`` bytes
    wait to be sent, and resumes it when the buffer drains; here the test drains it, with
    `drain` (one round) or `rounds` / `drain_all` (until the producer stops pausing).
    As over TCP, a closing transport still resumes its producer (the connection closes once
    the producer is done); an aborted one sends nothing more and resumes nothing.

    The protocol pausing its reading (the transport as a producer) is tracked apart, in
    `reading_paused`, so that the two never mix; a test feeding bytes in should deliver none
    while it is set.
    """

    def __init__(self, limit: int = 0, hostAddress: IAddress | None = None,
                 peerAddress: IAddress | None = None) -> None:
        super().__init__(hostAddress=hostAddress, peerAddress=peerAddress)
        self.limit = limit
        #: Every byte drained so far, in order.
        self.out = bytearray()
        self.aborted = False
        #: The registered producer was paused by this transport and not resumed yet.
        self.producer_paused = False
        #: The protocol paused this transport's reading.
        self.reading_paused = False
        #: How many times the producer was paused.
        self.pauses = 0

    def write(self, data: bytes) -> None:
        if self.aborted or not data:
            return  # a real transport sends nothing more once aborted
        super().write(data)
        if (self.limit and len(self.value()) > self.limit and self.producer is not None
                and self.streaming):
            if not self.producer_paused:
                self.producer_paused = True
                self.pauses += 1
            # Again on every write while full, as TCP transports do: the producer must
            # take a second pause in its stride.
            self.producer.pauseProducing()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()

    def unregisterProducer(self) -> None:
        super().unregisterProducer()
        self.producer_paused = False  # a producer registered later starts unpaused

    # The transport as a producer of what it reads. No check after loseConnection (which
    # StringTransport makes): a real transport accepts these at any time.
    def pauseProducing(self) -> None:
        self.reading_paused = True

    def resumeProducing(self) -> None:
        self.reading_paused = False

    # -- the test's controls ---------------------------------------------------------------

    def _take(self) -> bytes:
        data: bytes = self.value()
        self.clear()
        self.out += data
        return data

    def _resume(self) -> bool:
        if not self.producer_paused or self.aborted or self.producer is None:
            return False
        self.producer_paused = False
        self.producer.resumeProducing()
        return True

    def drain(self) -> bytes:
        """The bytes written since the last drain (also kept in `out`); then, as the reactor
        does once a socket buffer empties, resume the producer if this transport paused it.
        What it writes then waits for the next drain."""
        data = self._take()
        self._resume()
        return data

    def rounds(self) -> Iterator[bytes]:
        """What was written before the producer paused, then after each resume, until it
        writes without pausing (a test can check each round between resumes)."""
        while True:
            yield self._take()
            if not self._resume():
                return

    def drain_all(self) -> bytes:
        """Drain until the producer stops pausing; every byte that took."""
        return b"".join(self.rounds())


# -- the network ---------------------------------------------------------------------------


class _Refusing(Protocol):
    """What a client meets when the server's factory builds no protocol: TCP accepts the
    connection, then the server closes it at once."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """An endpoint to ``(host, port)`` on a `MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, host: str, port: int) -> None:
        self.network = network
        self.host = host
        self.port = port

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return self.network._connect(self.host, self.port, protocolFactory)


class MemoryNetwork:
    """Servers listening at ``(host, port)`` addresses, and client endpoints to them.

    As over TCP, a connection attempt ends later, never within ``connect``: attempts made
    meanwhile complete (or fail) at the next `pump`, which also moves the bytes written on
    every open connection. An address nobody listens on refuses connections
    (`twisted.internet.error.ConnectionRefusedError`, with its errno as a real refusal has);
    `fail` makes an address fail attempts with any other error (a timeout, a DNS failure).
    """

    def __init__(self, clock: Clock | None = None) -> None:
        #: Pumping runs its calls that are due; `run_until` advances it.
        self.clock = clock if clock is not None else Clock()
        #: Every connection attempt, in order, as ``(host, port)``.
        self.attempts: list[tuple[str, int]] = []
        self.pumps: list[iosim.IOPump] = []
        self._servers: dict[tuple[str, int], IProtocolFactory] = {}
        self._failures: dict[tuple[str, int], Exception] = {}
        self._connecting: list[tuple[str, int, IProtocolFactory, Deferred[IProtocol]]] = []
        self._client_ports = itertools.count(40001)

    # -- the servers -----------------------------------------------------------------------

    def listen(self, host: str, port: int, factory: IProtocolFactory) -> None:
        """Serve ``factory``'s protocols at ``(host, port)`` from now on."""
        self._failures.pop((host, port), None)
        self._servers[(host, port)] = factory

    def stop_listening(self, host: str, port: int) -> None:
        """Refuse new connections to ``(host, port)``; open ones stay (as with TCP)."""
        self._servers.pop((host, port), None)

    def crash(self, host: str, port: int) -> None:
        """The server at ``(host, port)`` dies: it refuses new connections, and its open ones
        are closed (their protocols hear of it at the next `pump`)."""
        self.stop_listening(host, port)
        address = IPv4Address("TCP", host, port)
        for pump in self.pumps:
            if pump.serverIO.hostAddress == address:
                pump.serverIO.loseConnection()

    def fail(self, host: str, port: int, reason: Exception) -> None:
        """Make connection attempts to ``(host, port)`` fail with ``reason``."""
        self._servers.pop((host, port), None)
        self._failures[(host, port)] = reason

    def endpoint(self, host: str, port: int) -> MemoryEndpoint:
        """An endpoint to ``(host, port)``: this method is an endpoint factory."""
        return MemoryEndpoint(self, host, port)

    # -- moving things ---------------------------------------------------------------------

    def _connect(self, host: str, port: int,
                 factory: IProtocolFactory) -> Deferred[IProtocol]:
        self.attempts.append((host, port))

        def cancel(d: Deferred[IProtocol]) -> None:
            self._connecting = [c for c in self._connecting if c[3] is not d]
            d.errback(error.ConnectingCancelledError(IPv4Address("TCP", host, port)))

        d: Deferred[IProtocol] = Deferred(cancel)
        self._connecting.append((host, port, factory, d))
        return d

    def _complete(self, host: str, port: int, factory: IProtocolFactory,
                  d: Deferred[IProtocol]) -> None:
        failure = self._failures.get((host, port))
        server_factory = self._servers.get((host, port))
        if failure is None and server_factory is None:
            failure = error.getConnectError(
                (errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED)))
        if failure is not None:
            d.errback(failure)
            return
        assert server_factory is not None
        server_address = IPv4Address("TCP", host, port)
        client_address = IPv4Address("TCP", "127.0.0.1", next(self._client_ports))
        client = factory.buildProtocol(server_address)
        if client is None:
            d.errback(error.NoProtocol())
            return
        server = server_factory.buildProtocol(client_address) or _Refusing()
        server_io = iosim.FakeTransport(server, isServer=True, hostAddress=server_address,
                                        peerAddress=client_address)
        client_io = iosim.FakeTransport(client, isServer=False, hostAddress=client_address,
                                        peerAddress=server_address)
        self.pumps.append(iosim.connect(server, server_io, client, client_io,
                                        greet=False, clock=self.clock))
        d.callback(client)

    def pump(self) -> bool:
        """Complete pending connection attempts and move the bytes written on every open
        connection (one round); whether anything happened."""
        connecting, self._connecting = self._connecting, []
        for attempt in connecting:
            self._complete(*attempt)
        moved = [pump.pump() for pump in list(self.pumps)]
        # Connections closed on both sides are forgotten: the list stays bounded.
        self.pumps = [p for p in self.pumps
                      if not (p.clientIO.disconnected and p.serverIO.disconnected)]
        return bool(connecting) or any(moved)

    def flush(self, max_rounds: int = 10000) -> None:
        """`pump` until nothing moves (time does not pass)."""
        for _ in range(max_rounds):
            if not self.pump():
                return
        raise AssertionError("the network never went quiet")

    def run_until(self, done: Deferred[Any], max_rounds: int = 20000,
                  step: float = 0.1) -> None:
        """`pump` until ``done`` fires; let ``step`` seconds of fake time pass only when
        nothing moves."""
        for _ in range(max_rounds):
            if done.called:
                return
            if not self.pump():
                self.clock.advance(step)
        raise AssertionError(f"not done after {max_rounds} rounds")
