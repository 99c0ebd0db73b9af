"""Local limits shared by both daemons: connection caps, deadlines, closing that completes.

All limits are settings of the daemon that enforces them; none is negotiated with a peer.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

#: How long a graceful close may wait for the write buffer to drain before aborting.
CLOSE_GRACE = 5.0


class ConnectionLimiter:
    """Caps connections in total and per peer host.

    Written here because ``policies.LimitConnectionsByPeer`` raises on every connection in
    Twisted 26.10 (twisted#12183).
    """

    def __init__(self, max_total: int, max_per_peer: int) -> None:
        self.max_total = max_total
        self.max_per_peer = max_per_peer
        self.total = 0
        self._per_peer: Counter[str] = Counter()

    def admit(self, host: str) -> bool:
        if self.total >= self.max_total or self._per_peer[host] >= self.max_per_peer:
            return False
        self.total += 1
        self._per_peer[host] += 1
        return True

    def release(self, host: str) -> None:
        self.total -= 1
        self._per_peer[host] -= 1
        if self._per_peer[host] <= 0:
            del self._per_peer[host]


def peer_host(addr: object) -> str:
    """The key a peer is counted under: its host address (UNIX sockets share one key)."""
    return getattr(addr, "host", None) or "unix"


class LimitedFactory(Factory):
    """A server factory that refuses connections beyond ``limiter``'s caps.

    Subclasses set ``self.limiter`` and implement `make_protocol`; their protocols call
    ``factory.connection_closed(self)`` from ``connectionLost``.
    """

    log = Logger()
    limiter: ConnectionLimiter

    def make_protocol(self) -> Protocol:
        raise NotImplementedError

    def buildProtocol(self, addr: IAddress) -> Protocol | None:
        host = peer_host(addr)
        if not self.limiter.admit(host):
            self.log.warn("refusing connection from {host}: connection limit reached",
                          host=host)
            return None  # Twisted closes the connection at once
        proto = self.make_protocol()
        proto.peer_key = host
        return proto

    def connection_closed(self, proto: Protocol) -> None:
        self.limiter.release(proto.peer_key)


class Deadline:
    """A timer that calls ``on_expire`` unless stopped first; restarting moves it.

    Used for absolute per-phase deadlines (a frame must complete within N seconds of its first
    byte), which a peer trickling one byte at a time cannot extend.
    """

    def __init__(self, clock: IReactorTime, seconds: float, on_expire: Callable[[], None]) -> None:
        self._clock = clock
        self.seconds = seconds
        self._on_expire = on_expire
        self._call: IDelayedCall | None = None

    @property
    def running(self) -> bool:
        return self._call is not None and self._call.active()

    def start(self) -> None:
        """Start the timer if it is not already running (an absolute deadline: no reset)."""
        if not self.running and self.seconds > 0:
            self._call = self._clock.callLater(self.seconds, self._expire)

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.running:
            self._call.cancel()
        self._call = None

    def _expire(self) -> None:
        self._call = None
        self._on_expire()


class ClosingMixin:
    """``close()`` that finishes even against a peer that never reads.

    ``loseConnection()`` waits for the write buffer to drain; a peer that stops reading would
    keep the connection forever, so after `CLOSE_GRACE` seconds it is aborted.
    Needs ``self.transport`` and ``self.clock``.
    """

    _log = Logger()
    _abort_call: IDelayedCall | None = None

    def close(self, reason: str = "") -> None:
        if self.transport is None:
            return
        if reason:
            self._log.info("closing connection to {peer}: {reason}",
                           peer=self.transport.getPeer(), reason=reason)
        self.transport.loseConnection()
        if self._abort_call is None:
            self._abort_call = self.clock.callLater(CLOSE_GRACE, self.abort)

    def abort(self, reason: str = "") -> None:
        if reason:
            self._log.info("aborting connection to {peer}: {reason}",
                           peer=self.transport.getPeer() if self.transport else "?",
                           reason=reason)
        self._abort_call = None
        if self.transport is not None:
            self.transport.abortConnection()

    def cancel_close_timer(self) -> None:
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
