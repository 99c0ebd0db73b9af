"""TLS 1.3 for the daemons, with Twisted's TLS (pyOpenSSL): contexts, the gate that
authenticates a peer before its protocol exists, and pinned client endpoints.

A secured daemon's factory is wrapped, outermost first, in

- `AcceptFilter`: ``--hosts-allow``/``--hosts-deny`` and the per-address failure limit,
  checked at accept, before any TLS work (a refused socket is closed at once);
- Twisted's ``TLSMemoryBIOFactory`` with this module's server context (TLS 1.3 only; a
  client certificate is asked for, any chain accepted: the key is what is checked);
- `SecuredFactory`: once the handshake is done, `PeerPolicy.authenticate` decides from the
  client's key fingerprint. Only then is the daemon's own protocol built (its connection
  caps count only admitted peers) and given the peer's `PeerIdentity` (its
  ``peer_identity``); a refused peer gets one generic message (`REFUSAL`, in the daemon's
  own protocol) and is closed before any request is read.

`PeerPolicy.authenticate` is the one place where who may connect is decided (keys of
``--authorized-keys``, users of ``--accounts``, anonymous peers where ``anyone`` may read);
what an admitted peer may do is decided by each daemon (`mirror.content_server.access`,
`mirror.mirror_server.job_access`).

Clients (the mirror server towards content servers) connect through `ClientPolicy`'s
endpoints: TLS to a host with a pin in ``--known-hosts``, the handshake failed by the
verify callback if the server's key matches no pin (nothing of ours is sent); plain TCP
to loopback only, unless ``--insecure``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from mirror.limits import CLOSE_GRACE, abort_connection, peer_host
from mirror.security.accounts import AccountsWatch
from mirror.security.hosts_access import FailureLimiter, HostsAccess
from mirror.security.identity import key_fingerprint
from mirror.security.identity_files import IdentityPaths
from mirror.security.known_hosts import Pins, host_key, is_loopback_host
from mirror.security.peer import PeerIdentity
from mirror.security.watched import WatchedFile
from mirror.threads import Threads

if TYPE_CHECKING:
    from mirror.security.audit import AuditLog
    from mirror.security.presence import Presence

#: What a refused peer is told, whatever the reason (the log has the reason).
REFUSAL = "access denied"
#: Seconds a peer has to complete the handshake.
HANDSHAKE_TIMEOUT = 10.0
#: Bytes a peer may send while it is being authenticated (its first requests); more aborts.
MAX_HELD = 64 << 10
#: Seconds between two looks at --authorized-keys (the open connections of a removed key
#: are dropped).
RECHECK_INTERVAL = 5.0


def peer_fingerprint(transport: Any) -> str | None:
    """The key fingerprint of the certificate the TLS peer presented, or None."""
    cert = transport.getPeerCertificate()
    return None if cert is None else key_fingerprint(cert.to_cryptography())


def _context(identity: IdentityPaths | None, verify: Any) -> SSL.Context:
    """A TLS 1.3-only context with our certificate and key (if any) and ``verify`` deciding
    on the peer's certificate (called at each depth: we pin keys, not chains)."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    # No session resumption: every connection is a full handshake with the peer's key.
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    if identity is not None:
        ctx.use_certificate_file(identity.cert)
        ctx.use_privatekey_file(identity.key)
        ctx.check_privatekey()
    ctx.set_verify(SSL.VERIFY_PEER, verify)
    return ctx


def _accept_any(conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
    # Self-signed certificates fail chain verification; the key is checked after the
    # handshake, by `PeerPolicy` (the peer has proved it holds the key by then).
    return True


def _check_pin(conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
    if depth != 0:
        return True
    tls = conn.get_app_data()
    gate = getattr(tls, "wrappedProtocol", None)
    if not isinstance(gate, _ClientGate):
        return False
    fingerprint = key_fingerprint(cert.to_cryptography())
    if fingerprint in gate.factory.pins:
        return True
    gate.presented = fingerprint
    return False


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLClientConnectionCreator)
class _Connections:
    """Makes each TLS connection from one context; the connection knows its Twisted
    protocol (`_check_pin` finds the gate through it)."""

    def __init__(self, ctx: SSL.Context) -> None:
        self.ctx = ctx

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        conn = SSL.Connection(self.ctx, None)
        conn.set_app_data(tlsProtocol)
        return conn

    clientConnectionForTLS = serverConnectionForTLS


def server_creator(identity: IdentityPaths) -> IOpenSSLServerConnectionCreator:
    """What makes the server side of each TLS connection of a secured daemon."""
    return _Connections(_context(identity, _accept_any))


def client_creator(identity: IdentityPaths | None) -> IOpenSSLClientConnectionCreator:
    """What makes the client side of each pinned TLS connection (``identity``: our client
    certificate, if any)."""
    return _Connections(_context(identity, _check_pin))


# -- the server side --------------------------------------------------------------------------


class PeerPolicy:
    """Decides who may connect to a secured daemon, and counts failures per address.

    ``keys`` is the ``--authorized-keys`` allow-list, read again (in ``threads``) when it
    changed, at every authentication and every few seconds (`SecuredFactory`): a removed
    key is refused from the next connection, and its open connections are dropped.
    """

    log = Logger()

    def __init__(self, keys: WatchedFile[frozenset[str]] | None, threads: Threads,
                 failures: FailureLimiter, accounts: AccountsWatch | None = None,
                 audit: AuditLog | None = None) -> None:
        self.keys = keys
        self.threads = threads
        self.failures = failures
        #: ``--accounts``: users are let in too, and `anyone` without a certificate.
        self.accounts = accounts
        self.audit = audit
        #: Called after the allow-list changed (`SecuredFactory` drops revoked peers).
        self.on_change: list[Callable[[], None]] = []
        if accounts is not None:
            accounts.on_change.append(self._changed)

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()

    async def reload(self) -> None:
        """Read the allow-list (and the accounts) again if it changed (a file that cannot be
        read lets nobody in), and tell ``on_change``."""
        if self.accounts is not None:
            await self.accounts.current()  # tells on_change itself
        if self.keys is None:
            return
        try:
            changed = await self.threads.run(self.keys.refresh)
        except OSError as e:
            self.log.error("cannot read --authorized-keys {path}: {reason}; nobody is let in",
                           path=self.keys.path, reason=(e.strerror or str(e)).lower())
            changed = True
        else:
            if changed:
                self.log.info("--authorized-keys {path}: {n} key(s)", path=self.keys.path,
                              n=len(self.keys.value))
                for problem in self.keys.problems:
                    self.log.warn("{problem} (line ignored)", problem=problem)
        if changed:
            self._changed()

    def _identity(self, fingerprint: str | None) -> PeerIdentity | None:
        if self.accounts is not None:
            rules = self.accounts.rules
            user = rules.user(fingerprint)
            if user is not None:
                return PeerIdentity(fingerprint, user)
            if fingerprint is None and rules.anyone_may_read():
                return PeerIdentity(None)
        if fingerprint is not None and self.keys is not None and fingerprint in self.keys.value:
            return PeerIdentity(fingerprint)
        return None

    def allows(self, identity: PeerIdentity) -> bool:
        """Whether ``identity`` may stay connected, as the allow-list and the accounts were
        last read (a removed user's connections are dropped)."""
        return self._identity(identity.fingerprint) == identity

    async def authenticate(self, fingerprint: str | None) -> PeerIdentity | None:
        """The identity of a peer presenting ``fingerprint`` (None: no certificate), or None
        if it may not connect: a known key (``--authorized-keys``, or a user of
        ``--accounts``), or no certificate at all when `anyone` may read something."""
        await self.reload()
        return self._identity(fingerprint)

    def refused(self, host: str, why: str) -> None:
        """Count a failed authentication of ``host`` and put it in the audit log."""
        self.failures.failed(host)
        if self.audit is not None:
            self.audit.refused(f"peer from {host}", "connection", why)


class _Gate(ProtocolWrapper):
    """A TLS connection held until the handshake is done and the peer checked; then a
    relay to the protocol it was for, whose transport it is (`admit`)."""

    factory: Any
    transport: Any
    wrappedProtocol: Any

    def __init__(self, factory: Any, addr: IAddress) -> None:
        super().__init__(factory, None)  # type: ignore[arg-type]
        self.addr = addr
        self.admitted = False
        #: Who the peer is, once admitted.
        self.identity: PeerIdentity | None = None
        self._timer: Any = None

    def makeConnection(self, transport: Any) -> None:
        # Not ProtocolWrapper's: the wrapped protocol does not exist yet.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self._timer = self.factory.clock.callLater(HANDSHAKE_TIMEOUT, self._too_slow)

    def _too_slow(self) -> None:
        """No handshake within `HANDSHAKE_TIMEOUT`."""
        self._timer = None
        abort_connection(self.transport)

    def stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def admit(self, identity: PeerIdentity) -> IProtocol | None:
        """Build the protocol for the peer ``identity`` and connect it through us."""
        proto = self.factory.wrappedFactory.buildProtocol(self.addr)
        if proto is None:
            self.transport.loseConnection()
            return None
        # Every protocol may read who its peer is (mirror.limits declares it for the
        # daemons' own): where grants will be decided.
        proto.peer_identity = identity
        self.identity = identity
        self.since = self.factory.clock.seconds()
        self.wrappedProtocol = proto
        self.admitted = True
        proto.makeConnection(self)
        return proto  # type: ignore[no-any-return]

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.stop_timer()
        self.factory.unregisterProtocol(self)
        if self.admitted:
            self.wrappedProtocol.connectionLost(reason)
            self.wrappedProtocol = None
        else:
            self.lost_before_admission(reason)

    def lost_before_admission(self, reason: Failure) -> None:
        """The connection ended before the peer was admitted."""

    @property
    def bufferSize(self) -> int:
        """The size of each socket read (`ContentClientProtocol` raises it to 1 MiB): the TCP
        transport's, under TLS."""
        return int(self.transport.transport.bufferSize)

    @bufferSize.setter
    def bufferSize(self, size: int) -> None:
        self.transport.transport.bufferSize = size


@implementer(IHandshakeListener)
class _ServerGate(_Gate):
    """A secured daemon's connection: the daemon's protocol is built only for a peer that
    `PeerPolicy.authenticate` admits."""

    log = Logger()
    factory: SecuredFactory

    def __init__(self, factory: SecuredFactory, addr: IAddress) -> None:
        super().__init__(factory, addr)
        self.host = peer_host(addr)
        self.decided = False
        self._handshake_done = False
        self._held: list[bytes] = []
        self._held_bytes = 0

    def logPrefix(self) -> str:
        return "SecuredConnection"

    def _too_slow(self) -> None:
        self.log.info("refused {host}: no TLS handshake within {s:g} s", host=self.host,
                      s=HANDSHAKE_TIMEOUT)
        self.decided = True
        super()._too_slow()

    def handshakeCompleted(self) -> None:
        self._handshake_done = True
        Deferred.fromCoroutine(self._authenticate(peer_fingerprint(self.transport)))

    async def _authenticate(self, fingerprint: str | None) -> None:
        try:
            identity = await self.factory.policy.authenticate(fingerprint)
        except Exception:
            self.log.failure("authenticating {host}", host=self.host)
            identity = None
        if self.decided or not self.connected:
            return
        self.decided = True
        self.stop_timer()
        if identity is None:
            why = "no client certificate" if fingerprint is None else f"unknown key {fingerprint}"
            self._refuse(why)
            return
        held, self._held = self._held, []
        if self.admit(identity) is None:
            return
        for data in held:
            if self.wrappedProtocol is None:
                break
            self.wrappedProtocol.dataReceived(data)

    def _refuse(self, why: str) -> None:
        self.factory.policy.refused(self.host, why)
        self.log.warn("refused {host}: {why}", host=self.host, why=why)
        self._held = []
        refusal = getattr(self.factory.wrappedFactory, "refusal", None)
        if refusal is not None:
            self.transport.write(refusal(REFUSAL))
        self.transport.loseConnection()
        self._timer = self.factory.clock.callLater(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        self._timer = None
        abort_connection(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self.admitted:
            self.wrappedProtocol.dataReceived(data)
        elif not self.decided:
            # Requests sent right after the handshake, while the key is being checked.
            self._held.append(data)
            self._held_bytes += len(data)
            if self._held_bytes > MAX_HELD:
                self.decided = True
                abort_connection(self.transport)

    def lost_before_admission(self, reason: Failure) -> None:
        if not self._handshake_done and not self.decided:
            self.factory.policy.failures.failed(self.host)
            self.log.info("refused {host}: TLS handshake failed ({reason})", host=self.host,
                          reason=reason.getErrorMessage())
        self.decided = True


class SecuredFactory(WrappingFactory):
    """Builds the daemon's protocol (``wrapped``'s) only for authenticated peers, and drops
    the connections of a peer whose key left the allow-list (checked every
    ``recheck_interval`` seconds while listening, and whenever a new peer made it read)."""

    log = Logger()
    protocol = _ServerGate
    noisy = False
    recheck_interval = RECHECK_INTERVAL

    def __init__(self, wrapped: IProtocolFactory, policy: PeerPolicy,
                 clock: IReactorTime, presence: Presence | None = None) -> None:
        super().__init__(wrapped)
        self.policy = policy
        self.clock = clock
        if presence is not None:
            presence.factories.append(self)
        policy.on_change.append(self._drop_revoked)
        self._recheck: LoopingCall | None = None

    def doStart(self) -> None:
        super().doStart()
        if self._recheck is None:
            self._recheck = LoopingCall(lambda: Deferred.fromCoroutine(self.policy.reload()))
            self._recheck.clock = self.clock
            self._recheck.start(self.recheck_interval, now=False).addErrback(
                lambda f: self.log.failure("re-reading --authorized-keys", f))

    def doStop(self) -> None:
        if self._recheck is not None and self._recheck.running:
            self._recheck.stop()
        self._recheck = None
        super().doStop()

    def _drop_revoked(self) -> None:
        for gate in list(self.protocols):
            identity = getattr(gate, "identity", None)
            if identity is not None and not self.policy.allows(identity):
                self.log.warn("dropping {host}: key {fingerprint} revoked", host=gate.host,
                              fingerprint=identity.fingerprint)
                abort_connection(gate.transport)

    def buildProtocol(self, addr: IAddress) -> _ServerGate:  # type: ignore[override]
        return _ServerGate(self, addr)


class AcceptFilter(Factory[Protocol]):
    """``--hosts-allow``/``--hosts-deny`` and the failure limit, at accept: a refused
    connection is closed at once (no protocol, no TLS)."""

    log = Logger()
    noisy = False

    def __init__(self, inner: IProtocolFactory, access: HostsAccess,
                 failures: FailureLimiter | None = None) -> None:
        self.inner = inner
        self.access = access
        self.failures = failures
        #: Connections refused at accept (for tests and the status page).
        self.refused = 0

    def logPrefix(self) -> str:
        prefix = getattr(self.inner, "logPrefix", None)
        return prefix() if prefix is not None else type(self.inner).__name__

    def doStart(self) -> None:
        self.inner.doStart()

    def doStop(self) -> None:
        self.inner.doStop()

    def buildProtocol(self, addr: IAddress) -> Protocol | None:  # type: ignore[override]
        host = peer_host(addr)
        why = None
        if not self.access.allows(host):
            why = "not allowed by --hosts-allow/--hosts-deny"
        elif self.failures is not None and self.failures.blocked(host):
            why = "too many failed authentications, try later"
        if why is not None:
            self.refused += 1
            self.log.info("refused {host} at accept: {why}", host=host, why=why)
            return None
        return self.inner.buildProtocol(addr)  # type: ignore[return-value]


def secured_factory(factory: IProtocolFactory, identity: IdentityPaths, policy: PeerPolicy,
                    clock: IReactorTime, presence: Presence | None = None) -> IProtocolFactory:
    """``factory`` behind TLS 1.3 and `PeerPolicy` (see the module's docstring); its
    connections listed in ``presence``."""
    return TLSMemoryBIOFactory(server_creator(identity), False,
                               SecuredFactory(factory, policy, clock, presence))


# -- the client side --------------------------------------------------------------------------


class ServerKeyMismatch(Exception):
    """The server presented a key that matches no pin: we sent nothing and hung up."""


@implementer(IHandshakeListener)
class _ClientGate(_Gate):
    """A pinned client connection: the client's protocol is built, and handed to the
    endpoint's caller, only once the server's key matched a pin."""

    factory: _ClientGateFactory

    def __init__(self, factory: _ClientGateFactory, addr: IAddress) -> None:
        super().__init__(factory, addr)
        #: The key the server presented, when it matched no pin.
        self.presented: str | None = None
        self.timed_out = False

    def logPrefix(self) -> str:
        return "PinnedConnection"

    def _too_slow(self) -> None:
        self.timed_out = True
        super()._too_slow()

    def handshakeCompleted(self) -> None:
        self.stop_timer()
        fingerprint = peer_fingerprint(self.transport)
        if fingerprint is None or fingerprint not in self.factory.pins:
            # The verify callback has already failed such a handshake: a second lock.
            self.presented = fingerprint or "none"
            abort_connection(self.transport)
            return
        proto = self.admit(PeerIdentity(fingerprint))
        if proto is not None:
            self.factory.ready.callback(proto)

    def dataReceived(self, data: bytes) -> None:
        if self.admitted:
            self.wrappedProtocol.dataReceived(data)

    def lost_before_admission(self, reason: Failure) -> None:
        if self.factory.ready.called:
            return
        if self.timed_out:
            error: Exception = ConnectionError(f"no TLS handshake within {HANDSHAKE_TIMEOUT:g} s")
        elif self.presented is not None:
            error = ServerKeyMismatch(
                f"the server presented key {self.presented}, which matches no pin for "
                f"{self.factory.name} in --known-hosts")
        else:
            error = ConnectionError(f"TLS handshake failed: {reason.getErrorMessage()}")
        self.factory.ready.errback(error)


class _ClientGateFactory(WrappingFactory):
    noisy = False

    def __init__(self, wrapped: IProtocolFactory, pins: frozenset[str], name: str,
                 clock: IReactorTime) -> None:
        super().__init__(wrapped)
        self.pins = pins
        self.name = name
        self.clock = clock
        self.ready: Deferred[IProtocol] = Deferred()

    def buildProtocol(self, addr: IAddress) -> _ClientGate:  # type: ignore[override]
        return _ClientGate(self, addr)


class ClientPolicy:
    """How a client daemon reaches ``(host, port)``: TLS with the pins of ``known_hosts``
    (read again when it changed, in ``threads``), plain TCP to loopback, or (``insecure``)
    plain TCP anywhere. Its `endpoint` method is a
    `mirror.mirror_server.connections.EndpointFactory`."""

    log = Logger()

    def __init__(self, reactor: IReactorTCP, identity: IdentityPaths | None,
                 known_hosts: WatchedFile[Pins] | None, threads: Threads,
                 insecure: bool = False, timeout: float = 10.0) -> None:
        self.reactor = reactor
        self.creator = client_creator(identity)
        self.known_hosts = known_hosts
        self.threads = threads
        self.insecure = insecure
        self.timeout = timeout

    def endpoint(self, host: str, port: int) -> IStreamClientEndpoint:
        return _PolicyEndpoint(self, host, port)

    async def pins(self, host: str, port: int) -> frozenset[str]:
        """The pins of ``host``:``port`` now (the file read again if it changed)."""
        if self.known_hosts is None:
            return frozenset()
        try:
            if await self.threads.run(self.known_hosts.refresh):
                for problem in self.known_hosts.problems:
                    self.log.warn("{problem} (line ignored)", problem=problem)
        except OSError as e:
            self.log.error("cannot read --known-hosts {path}: {reason}",
                           path=self.known_hosts.path, reason=(e.strerror or str(e)).lower())
        return self.known_hosts.value.get(host_key(host, port), frozenset())

    async def connect(self, host: str, port: int, factory: IProtocolFactory) -> IProtocol:
        pins = await self.pins(host, port)
        tcp = HostnameEndpoint(self.reactor, host, port, timeout=self.timeout)
        if not pins:
            if not (self.insecure or is_loopback_host(host)):
                raise ConnectionError(
                    f"no pin for {host_key(host, port)} in --known-hosts (plain TCP is "
                    "allowed only to loopback; --insecure allows it anywhere)")
            proto: IProtocol = await tcp.connect(factory)
            return proto
        gates = _ClientGateFactory(factory, pins, host_key(host, port),
                                   cast(IReactorTime, self.reactor))
        await tcp.connect(TLSMemoryBIOFactory(self.creator, True, gates))
        proto = await gates.ready
        return proto


@implementer(IStreamClientEndpoint)
class _PolicyEndpoint:
    def __init__(self, policy: ClientPolicy, host: str, port: int) -> None:
        self.policy = policy
        self.host = host
        self.port = port

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        return Deferred.fromCoroutine(self.policy.connect(self.host, self.port, factory))
