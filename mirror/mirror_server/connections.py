"""Connections to one content server, shared by the workers of a job.

Up to ``size`` connections are opened lazily; each request goes to the least loaded one, so
small files pipeline on a connection while large ones spread over several.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol

from mirror.mirror_server.content_client import ContentClientProtocol, TransferError


#: After a failed connection with none left open, requests fail at once (with the same error)
#: for this long instead of each trying again: a dead server must not cost a connection
#: attempt (0.3 s or a whole timeout) per queued file.
DOWN_INTERVAL = 5.0


#: Requests in flight per connection: half the content server's default --max-requests.
MAX_IN_FLIGHT = 32


class SourceConnections:
    def __init__(self, reactor: Any, host: str, port: int, size: int = 2,
                 connect_timeout: float = 10.0, down_interval: float = DOWN_INTERVAL,
                 max_in_flight: int = MAX_IN_FLIGHT,
                 **client_options: Any) -> None:
        self._reactor = reactor
        self.host = host
        self.port = port
        self.name = f"{host}:{port}"
        self.size = size
        self._connect_timeout = connect_timeout
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
                    self._reactor.callLater(0, self._wake_all)
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
            if self._reactor.seconds() < until:
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
                self._down = (self._reactor.seconds() + self._down_interval, str(e))
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
        host = self.host
        endpoint = HostnameEndpoint(self._reactor, host, self.port,
                                    timeout=self._connect_timeout)
        proto = ContentClientProtocol(self._reactor, self.name, **self._client_options)
        proto.on_request_done = self._slot_free
        try:
            await connectProtocol(endpoint, proto)
        except Exception as e:
            raise TransferError(f"cannot connect to {self.name}: {_reason(e)}") from None
        return proto

    def close(self) -> None:
        self._closed = True
        for conn in self._conns:
            conn.close()
        self._conns = []


def _reason(e: BaseException) -> str:
    """The human part of a connection error ("connection refused", "timed out")."""
    os_error = getattr(e, "osError", None)
    if isinstance(os_error, int):
        return os.strerror(os_error).lower()
    text = str(e).strip().rstrip(".")
    # Twisted's texts read "Connection was refused by other side: 111: Connection refused".
    return text.rsplit(": ", 1)[-1].lower() if ": " in text else (text or type(e).__name__)
