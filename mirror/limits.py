"""Local limits shared by both daemons: connection caps, deadlines, closing that completes.

All limits are settings of the daemon that enforces them; none is negotiated with a peer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol as TypingProtocol, runtime_checkable

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

#: How long a graceful close may wait for the write buffer to drain before aborting.
CLOSE_GRACE = 5.0


class LimitedConnection(Protocol):
    """The per-connection side of `LimitedFactory`: what the caps need to know of a protocol.

    Protocols of a `LimitedFactory` derive from this, say when they are idle (`is_idle`),
    know how to leave when evicted (`evict`), and call ``factory.unregisterProtocol(self)``
    from ``connectionLost``.
    """

    #: The key the connection is counted under (its peer's host), set by `LimitedFactory`.
    peer_key: str = ""
    #: Who the peer is, as TLS authenticated it (a `mirror.security.tls.PeerIdentity`, set
    #: before ``makeConnection``); None in open mode. Grants will be decided on it.
    peer_identity: object | None = None

    def is_idle(self) -> bool:
        """True if closing this connection now loses no work of its peer (nothing in flight).

        Only idle connections may be evicted to make room for a new one.
        """
        return False

    def evict(self, reason: str) -> None:
        """Close this idle connection to make room for another, telling the peer ``reason``."""
        raise NotImplementedError


class CapReached(Exception):
    """No room for a new connection; the message says which cap (for the refused peer)."""


class ConnectionLimiter:
    """Caps connections in total and per peer host, evicting idle connections before refusing.

    At the per-peer cap, the peer's own oldest idle connection makes room for its new one
    (as nginx reuses idle keep-alive connections), so idle sockets cannot lock out a working
    client behind the same address. At the total cap, room is taken from the peer holding the
    most connections among those with an idle one, and only if it holds more than the new
    connection's peer (or is that peer): a peer never loses a connection to one that already
    holds as many, and a connection with work in flight is never evicted.

    Written here because ``policies.LimitConnectionsByPeer`` raises on every connection in
    Twisted 26.10 (twisted#12183).
    """

    def __init__(self, max_total: int, max_per_peer: int) -> None:
        self.max_total = max_total
        self.max_per_peer = max_per_peer
        self.total = 0
        #: Connections refused by a cap so far (for /metrics).
        self.refused = 0
        # Per host, its connections oldest first (dicts keep insertion order).
        self._peers: dict[str, dict[LimitedConnection, None]] = {}

    def count(self, host: str) -> int:
        """How many connections ``host`` holds."""
        return len(self._peers.get(host, ()))

    def hosts(self) -> list[str]:
        """The hosts holding connections now."""
        return list(self._peers)

    def connections(self, host: str) -> list[LimitedConnection]:
        """The connections ``host`` holds, oldest first."""
        return list(self._peers.get(host, ()))

    def make_room(self, host: str) -> LimitedConnection | None:
        """Check there is room for one more connection from ``host``.

        Returns None if there is, or the idle connection to evict first (the caller evicts
        it and calls `remove`). Raises `CapReached` if neither.
        """
        if self.count(host) >= self.max_per_peer:
            victim = self._oldest_idle(host)
            if victim is None:
                raise CapReached(f"too many connections from {host}")
            return victim
        if self.total >= self.max_total:
            own = self.count(host)
            candidates = sorted(
                (peer for peer, conns in self._peers.items() if peer == host or len(conns) > own),
                key=lambda peer: -len(self._peers[peer]),
            )  # a stable sort: among peers holding as many, the one that connected first
            for peer in candidates:
                victim = self._oldest_idle(peer)
                if victim is not None:
                    return victim
            raise CapReached(f"too many connections ({self.max_total} in total)")
        return None

    def _oldest_idle(self, host: str) -> LimitedConnection | None:
        for conn in self._peers.get(host, ()):
            if conn.is_idle():
                return conn
        return None

    def add(self, conn: LimitedConnection) -> None:
        """Count ``conn`` under its ``peer_key`` (after `make_room` found room)."""
        self._peers.setdefault(conn.peer_key, {})[conn] = None
        self.total += 1

    def remove(self, conn: LimitedConnection) -> None:
        """Stop counting ``conn``; a connection not (or no longer) counted is ignored."""
        conns = self._peers.get(conn.peer_key)
        if conns is None or conn not in conns:
            return
        del conns[conn]
        if not conns:
            del self._peers[conn.peer_key]
        self.total -= 1


def peer_host(addr: object) -> str:
    """The key a peer is counted under: its host address (UNIX sockets share one key)."""
    return getattr(addr, "host", None) or "unix"


class _Refusal(Protocol):
    """Sends one message saying why the connection is refused, then closes.

    The message is small: it goes into the socket's buffer at once, so the close completes
    even if the peer never reads.
    """

    def __init__(self, message: bytes) -> None:
        self.message = message

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.message)
        self.transport.loseConnection()


class LimitedFactory(Factory[Protocol]):
    """A server factory that keeps to ``limiter``'s caps (see `ConnectionLimiter`).

    Subclasses set ``protocol`` to a `LimitedConnection` class (built the Twisted way, by
    ``Factory.buildProtocol``), ``self.limiter``, ``server_name`` and `refusal`. A connection
    beyond the caps is told why (`refusal`) and closed; its protocol is never built.
    """

    log = Logger()
    limiter: ConnectionLimiter
    #: How the peer is told who is busy: "<server_name> busy: too many connections ...".
    server_name = "server"

    def refusal(self, reason: str) -> bytes:
        """What a connection beyond the caps is sent before it is closed."""
        raise NotImplementedError

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        host = peer_host(addr)
        try:
            victim = self.limiter.make_room(host)
        except CapReached as e:
            self.limiter.refused += 1
            reason = f"{self.server_name} busy: {e}"
            self.log.warn("refusing connection from {host}: {reason}", host=host, reason=reason)
            return _Refusal(self.refusal(reason))
        if victim is not None:
            self.log.info("closing an idle connection of {victim} to make room for {host}",
                          victim=victim.peer_key, host=host)
            self.limiter.remove(victim)
            victim.evict(f"{self.server_name} busy: idle connection closed to make room "
                         f"for another")
        proto = super().buildProtocol(addr)
        if not isinstance(proto, LimitedConnection):
            raise TypeError(f"{type(self).__name__}.protocol must build a LimitedConnection")
        proto.peer_key = host
        self.limiter.add(proto)
        return proto

    def unregisterProtocol(self, proto: LimitedConnection) -> None:
        """``proto``'s connection is closed: its slot is free (called from connectionLost)."""
        self.limiter.remove(proto)


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
        """Move the deadline to ``seconds`` from now (started if it was not running)."""
        if self.running and self.seconds > 0:
            # Moving a pending call later is cheap in Twisted (no heap work until it is
            # due); a cancel and a new callLater per DATA piece showed in profiles.
            assert self._call is not None
            self._call.reset(self.seconds)
            return
        self.stop()
        self.start()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _expire(self) -> None:
        self._call = None
        self._on_expire()


@runtime_checkable
class _Abortable(TypingProtocol):
    def abortConnection(self) -> None: ...


def abort_connection(transport: ITransport) -> None:
    """Close ``transport`` now, dropping unsent data.

    ``abortConnection`` is declared by ``ITCPTransport``, not ``ITransport``, yet every
    transport this code runs on has it (TCP, TLS, iosim's, ``StringTransport``); one without
    it can only be closed gracefully.
    """
    if isinstance(transport, _Abortable):
        transport.abortConnection()
    else:
        transport.loseConnection()


class ClosingMixin:
    """``close()`` that finishes even against a peer that never reads.

    ``loseConnection()`` waits for the write buffer to drain; a peer that stops reading would
    keep the connection forever, so after `CLOSE_GRACE` seconds it is aborted.
    Needs ``self.transport`` (a `Protocol`'s) and ``self.clock``.
    """

    transport: ITransport | None
    clock: IReactorTime
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
            abort_connection(self.transport)

    def cancel_close_timer(self) -> None:
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
