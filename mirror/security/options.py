"""The daemons' security flags (``--identity``, ``--authorized-keys``, ``--known-hosts``,
``--hosts-allow``, ``--hosts-deny``; ``--insecure`` is shared with ``--web``) and the mode
they put a daemon in.

- **Open**: no ``--identity``, loopback listeners only: plain TCP, as before. A ``tcp:PORT``
  without ``interface=`` (``-p PORT``, the default) then listens on 127.0.0.1 only.
- **Secured**: with ``--identity``: every listener is TLS 1.3 and every peer must present a
  key in ``--authorized-keys`` or of a user of ``--accounts`` (or, where ``anyone`` may
  read, no certificate); ``tcp:PORT`` listens on every address. ``--accounts`` needs
  ``--identity``.
- A non-loopback listener without ``--identity`` is refused unless ``--insecure``, which
  serves it in clear and logs a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.internet.interfaces import IProtocolFactory, IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.python import usage

from mirror.security.accounts import AccountsError, AccountsStore, AccountsWatch
from mirror.security.audit import AuditLog
from mirror.security.authorized_keys import authorized_keys
from mirror.security.hosts_access import FailureLimiter, HostsAccess, Network, parse_networks
from mirror.security.identity import Identity, read_identity
from mirror.security.identity_files import IdentityError
from mirror.security.known_hosts import Pins, known_hosts
from mirror.security.presence import Presence
from mirror.security.tls import AcceptFilter, ClientPolicy, PeerPolicy, secured_factory
from mirror.security.watched import ConfigFileError, WatchedFile
from mirror.threads import Threads
from mirror.web.options import is_local

log = Logger()


@dataclass
class Security:
    """What the security flags resolved to (`SecurityOptions.check_security`)."""

    identity: Identity | None = None
    keys: WatchedFile[frozenset[str]] | None = None
    known_hosts: WatchedFile[Pins] | None = None
    access: HostsAccess = field(default_factory=lambda: HostsAccess([], []))
    insecure: bool = False
    #: --accounts: users, groups and grants (secured mode).
    accounts: AccountsStore | None = None
    #: --audit-log: where refusals are written, one line each.
    audit_log: str | None = None
    #: Listeners serving in clear off the loopback (--insecure): warned about at start.
    clear_listeners: list[str] = field(default_factory=list)

    @property
    def secured(self) -> bool:
        return self.identity is not None


def _bare_tcp(description: str) -> bool:
    """``tcp:PORT`` with no interface: every address."""
    endpoint = serverFromString(None, description)
    return (isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint)
            and not endpoint._interface)


class SecurityOptions(usage.Options):
    """Mixed into a daemon's options (after `ListenOptions` and `WebOptions`); call
    `check_security` at the end of ``postOptions``."""

    optParameters: list[list[Any]] = [
        ["identity", None, None,
         "Identity directory (key.pem, cert.pem; made by mirror-admin keygen DIR): "
         "secures the daemon: every connection is TLS 1.3 and needs a key listed in "
         "--authorized-keys."],
        ["authorized-keys", None, None,
         "File of the key fingerprints allowed to connect (one a line, sha256:HEX); read "
         "again when it changes."],
        ["accounts", None, None,
         "Accounts database (SQLite; made and changed by mirror-admin --accounts FILE): "
         "users, groups and their grants; needs --identity. Changes apply without a restart."],
        ["audit-log", None, None,
         "Append one line per refused connection or request to this file."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["hosts-allow"] = []
        self["hosts-deny"] = []
        self.docs["hosts-allow"] = ("Accept connections only from these addresses (CIDR "
                                    "blocks, comma-separated; repeatable), as rsync's "
                                    "'hosts allow'.")
        self.docs["hosts-deny"] = ("Refuse connections from these addresses (CIDR blocks; "
                                   "repeatable); with --hosts-allow, an allowed host wins.")
        self.security = Security()

    def _networks(self, flag: str, value: str) -> list[Network]:
        try:
            return parse_networks([value])
        except ValueError as e:
            raise usage.UsageError(f"--{flag}: {e}") from None

    def opt_hosts_allow(self, value: str) -> None:
        """See ``docs["hosts-allow"]``."""
        self["hosts-allow"].extend(self._networks("hosts-allow", value))

    def opt_hosts_deny(self, value: str) -> None:
        """See ``docs["hosts-deny"]``."""
        self["hosts-deny"].extend(self._networks("hosts-deny", value))

    def check_security(self) -> None:
        """Resolve the mode; a `usage.UsageError` saying what to do when it is unsafe."""
        s = self.security
        s.insecure = bool(self.get("insecure"))
        s.access = HostsAccess(self["hosts-allow"], self["hosts-deny"])
        if self["identity"]:
            try:
                s.identity = read_identity(self["identity"])
            except IdentityError as e:
                raise usage.UsageError(f"--identity: {e}") from None
            if not self["authorized-keys"] and not self["accounts"]:
                raise usage.UsageError(
                    "--identity needs --authorized-keys FILE (the key fingerprints of the "
                    "clients allowed to connect; mirror-admin fingerprint DIR prints one) "
                    "or --accounts FILE (users and grants, made by mirror-admin)")
        elif self["authorized-keys"] or self["accounts"]:
            flag = "--authorized-keys" if self["authorized-keys"] else "--accounts"
            raise usage.UsageError(f"{flag} needs --identity DIR (TLS)")
        if self["accounts"]:
            try:
                s.accounts = AccountsStore(self["accounts"], create=False)
            except AccountsError as e:
                raise usage.UsageError(f"--accounts: {e}") from None
        s.audit_log = self["audit-log"]
        if self["authorized-keys"]:
            s.keys = authorized_keys(self["authorized-keys"])
            try:
                s.keys.load()
            except ConfigFileError as e:
                raise usage.UsageError(f"--authorized-keys: {e}") from None
        if s.secured:
            return
        # Every listener of the daemon: --listen, and a mirror server's --serve.
        for flag in ("listen", "serve"):
            self._check_clear(flag, s)

    def _check_clear(self, flag: str, s: Security) -> None:
        listen = self.get(flag) or []
        for i, description in enumerate(listen):
            if s.insecure:
                if not is_local(description):
                    s.clear_listeners.append(description)
            elif _bare_tcp(description):
                listen[i] = f"{description}:interface=127.0.0.1"
            elif not is_local(description):
                raise usage.UsageError(
                    f"--{flag} {description}: not a loopback address, and connections would "
                    f"be in clear: secure the daemon with --identity DIR and "
                    f"--authorized-keys FILE (TLS), listen on 127.0.0.1, or add --insecure "
                    f"to serve in clear")


@dataclass
class AccessControl:
    """A daemon's accounts (read in its threads), audit log and connections (`Presence`):
    given to `secure_factory` for each listener and to the daemon's enforcement."""

    accounts: AccountsWatch | None
    audit: AuditLog | None
    presence: Presence


def access_control(security: Security, threads: Threads, daemon: str) -> AccessControl:
    """The `AccessControl` the flags ask for (``daemon``: its name in ``who``)."""
    accounts = None if security.accounts is None else AccountsWatch(security.accounts, threads)
    audit = None if security.audit_log is None else AuditLog(security.audit_log, threads)
    return AccessControl(accounts, audit, Presence(daemon))


def secure_factory(security: Security, factory: IProtocolFactory, threads: Threads,
                   clock: IReactorTime, access: AccessControl | None = None
                   ) -> IProtocolFactory:
    """``factory`` as the daemon's listeners serve it: behind the host rules, and behind
    TLS and the peer check when the daemon is secured."""
    for description in security.clear_listeners:
        log.warn("listening on {endpoint} in clear (--insecure): anyone who can reach it "
                 "can connect and read what is sent", endpoint=description)
    if security.identity is None:
        if not security.access.active:
            return factory
        return AcceptFilter(factory, security.access)
    failures = FailureLimiter(clock.seconds)
    accounts, audit = (access.accounts, access.audit) if access else (None, None)
    policy = PeerPolicy(security.keys, threads, failures, accounts, audit)
    log.info("secured: TLS 1.3, this daemon is {fingerprint}",
             fingerprint=security.identity.fingerprint)
    return AcceptFilter(secured_factory(factory, security.identity.paths, policy, clock,
                                        access.presence if access else None),
                        security.access, failures)


class ClientSecurityOptions(usage.Options):
    """``--known-hosts`` for a daemon that is also a client (the mirror server)."""

    optParameters: list[list[Any]] = [
        ["known-hosts", None, None,
         "File of server pins, HOST:PORT FINGERPRINT a line: TLS to a pinned content "
         "server (refused if its key differs); plain TCP only to loopback (--insecure: "
         "anywhere). Read again when it changes."],
    ]

    def check_known_hosts(self) -> WatchedFile[Pins] | None:
        if not self["known-hosts"]:
            return None
        pins = known_hosts(self["known-hosts"])
        try:
            pins.load()
        except ConfigFileError as e:
            raise usage.UsageError(f"--known-hosts: {e}") from None
        return pins


def client_policy(security: Security, pins: WatchedFile[Pins] | None, threads: Threads,
                  reactor: Any) -> ClientPolicy:
    """How the daemon connects to its servers: our identity as client certificate."""
    identity = security.identity.paths if security.identity is not None else None
    return ClientPolicy(cast(IReactorTCP, reactor), identity, pins, threads,
                        insecure=security.insecure)
