"""Connections to one content server, shared by the workers of a job.

Up to ``size`` connections are opened lazily; each request goes to the least loaded one, so
small files pipeline on a connection while large ones spread over several.

How a connection is made is not decided here: `SourceConnections` asks an `EndpointFactory`
for an endpoint to ``(host, port)`` (`tcp_endpoints` in the daemon; TLS, or the in-memory
network of `mirror.testing` in tests, plug in the same way).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IReactorTCP, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory

from mirror.mirror_server.content_client import ContentClientProtocol, TransferError

#: After a failed connection with none left open, requests fail at once (with the same error)
#: for this long instead of each trying again: a dead server must not cost a connection
#: attempt (0.3 s or a whole timeout) per queued file.
DOWN_INTERVAL = 5.0


#: Requests in flight per connection: half the content server's default --max-requests.
MAX_IN_FLIGHT = 32

#: Seconds a TCP connection attempt may take.
CONNECT_TIMEOUT = 10.0

#: Makes the endpoint that connects to ``(host, port)``.
EndpointFactory = Callable[[str, int], IStreamClientEndpoint]


def tcp_endpoints(reactor: IReactorTCP, timeout: float = CONNECT_TIMEOUT) -> EndpointFactory:
    """Plain TCP: a `HostnameEndpoint` (name resolution, IPv4 and IPv6) per connection, or
    for an address a plain TCP endpoint (no resolver thread hop for each connection)."""

    def endpoint(host: str, port: int) -> IStreamClientEndpoint:
        if isIPAddress(host):
            return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
        if isIPv6Address(host):
            return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
        return HostnameEndpoint(reactor, host, port, timeout=timeout)

    return endpoint


class QuietFactory(Factory[ContentClientProtocol]):
    """Builds the one protocol it is given, without logging (``connectProtocol`` does the
    same but logs "Starting factory" and "Stopping factory" for every content connection:
    two lines per connection drown the lines an operator reads, a job's start and end and
    its errors)."""

    noisy = False

    def __init__(self, protocol: ContentClientProtocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> ContentClientProtocol:
        return self._protocol


class SourceConnections:
    """The connections of one job to one content server (``host:port``).

    ``endpoints`` makes the endpoint each new connection goes through; ``clock`` times the
    down interval and wakes waiters.
    """

    def __init__(self, clock: IReactorTime, host: str, port: int, endpoints: EndpointFactory,
                 size: int = 2, down_interval: float = DOWN_INTERVAL,
                 max_in_flight: int = MAX_IN_FLIGHT,
                 **client_options: Any) -> None:
        self._clock = clock
        self.host = host
        self.port = port
        self.name = f"{host}:{port}"
        self.size = size
        self._endpoints = endpoints
        self._client_options = client_options
        self._conns: list[ContentClientProtocol] = []
        self._opening = False
        self._waiters: list[Deferred[None]] = []
        self._slot_waiters: list[Deferred[None]] = []
        self.max_in_flight = max_in_flight
        self._closed = False
        self._down_interval = down_interval
        self._down: tuple[float, str] | None = None  # (until, message)

    def _live(self) -> list[ContentClientProtocol]:
        live = [c for c in self._conns if c.lost_reason is None and c.transport is not None]
        self._conns = live
        return live

    def live_connections(self) -> list[ContentClientProtocol]:
        """The shared connections open now (a copy: `get` chooses among them)."""
        return list(self._live())

    async def get(self) -> ContentClientProtocol:
        """A live connection with room for one more request (at most `MAX_IN_FLIGHT`).

        Waits while every connection is full: the content server refuses requests beyond its
        own limit (``--max-requests``), and more in flight would only wait there anyway.
        """
        while True:
            try:
                conn = await self._least_loaded()
            except TransferError:
                # No connection: callers waiting for a slot would wait for requests that
                # will never end. Wake them all (in a later turn: waking from here would nest
                # one stack level per waiter) so that each finds out for itself.
                if self._slot_waiters:
                    self._clock.callLater(0, self._wake_all)
                raise
            if conn.load < self.max_in_flight:
                return conn
            waiter: Deferred[None] = Deferred()
            self._slot_waiters.append(waiter)
            await waiter

    def _wake_all(self) -> None:
        waiters, self._slot_waiters = self._slot_waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)

    def _slot_free(self) -> None:
        """A request ended: wake one caller waiting for room (it checks again)."""
        while self._slot_waiters:
            waiter = self._slot_waiters.pop(0)
            if not waiter.called:
                waiter.callback(None)
                return

    async def _least_loaded(self) -> ContentClientProtocol:
        """A live connection, opening one if all are busy and there is room.

        Callers that need a new connection share one attempt and are all woken, one after
        the other, when it ends. (A `DeferredLock` held across the attempt hands itself from
        waiter to waiter synchronously, one stack level each: with a few hundred workers
        waiting that ended in RecursionError and a lock never released.)
        """
        live = self._live()
        if not live and self._down is not None:
            until, message = self._down
            if self._clock.seconds() < until:
                raise TransferError(message)
        if len(live) >= self.size or (live and min(c.load for c in live) == 0):
            return min(live, key=lambda c: c.load)
        try:
            await self._opened()
        except TransferError:
            live = self._live()
            if not live:
                raise
        else:
            live = self._live()
            if not live:
                raise TransferError(f"connection to {self.name} lost")
        return min(live, key=lambda c: c.load)

    def _opened(self) -> Deferred[None]:
        """Fires when the connection being opened (or one opened now) is ready or failed."""
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        if not self._opening:
            self._opening = True
            Deferred.fromCoroutine(self._open())
        return waiter

    async def _open(self) -> None:
        try:
            proto = await self.connect()
        except TransferError as e:
            outcome: Any = e
            if not self._live():
                self._down = (self._clock.seconds() + self._down_interval, str(e))
        else:
            outcome = None
            self._down = None
            self._conns.append(proto)
        self._opening = False
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if waiter.called:
                continue  # cancelled meanwhile
            if outcome is None:
                waiter.callback(None)
            else:
                waiter.errback(TransferError(str(outcome)))

    async def connect(self) -> ContentClientProtocol:
        """A new connection of its own (not shared through `get`); the caller closes it."""
        if self._closed:
            raise TransferError(f"connections to {self.name} closed")
        proto = ContentClientProtocol(self._clock, self.name, **self._client_options)
        proto.on_request_done = self._slot_free
        try:
            await self._endpoints(self.host, self.port).connect(QuietFactory(proto))
        except Exception as e:
            raise TransferError(f"cannot connect to {self.name}: {_reason(e)}") from None
        return proto

    def close(self) -> None:
        self._closed = True
        for conn in self._conns:
            conn.close()
        self._conns = []


#: Connection errors whose text says nothing useful, or says it badly: a DNSLookupError's
#: text ends with the host name, already in the message ("cannot connect to HOST:PORT: ...").
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (error.TimeoutError, "timed out"),
    (error.DNSLookupError, "host name not found"),
)


def _reason(e: BaseException) -> str:
    """The human part of a connection error ("connection refused", "timed out")."""
    os_error = getattr(e, "osError", None)
    if isinstance(os_error, int):
        return os.strerror(os_error).lower()
    for kind, reason in _REASONS:
        if isinstance(e, kind):
            return reason
    # Twisted's ConnectError texts read "<its docstring>: <osError>: <string>.": the
    # string, if any, is the specific part.
    if isinstance(e, error.ConnectError) and e.args and e.args[0]:
        text = str(e.args[0])
    else:
        text = str(e)
    text = text.strip().rstrip(".")
    return text[:1].lower() + text[1:] if text else type(e).__name__
