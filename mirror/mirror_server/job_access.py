"""Who may make this mirror server fetch what: the one place a job is checked (``--accounts``).

The mirror server fetches with its own identity, which may read more than the submitter: a
job is accepted only if its submitter holds the ``mirror`` right on each SPEC's content
server (``HOST:PORT`` as in --known-hosts, or any server) and a prefix of its path. The
accounts are read again if they changed, so a revoked grant applies from the next job.
"""

from __future__ import annotations

from mirror import paths
from mirror.security.accounts import AccountsWatch
from mirror.security.audit import AuditLog
from mirror.security.known_hosts import host_key
from mirror.security.peer import PeerIdentity, describe_peer
from mirror.wire import control


class JobAccess:
    """The mirror right of each submitter."""

    def __init__(self, accounts: AccountsWatch, audit: AuditLog | None) -> None:
        self.accounts = accounts
        self.audit = audit

    async def refusal(self, identity: PeerIdentity | None, host: str,
                      sources: list[control.SourceRequest]) -> str | None:
        """Why the job of ``sources`` from ``identity`` is refused, or None if it may run."""
        rules = await self.accounts.current()
        user = None if identity is None else rules.user(identity.fingerprint)
        for source in sources:
            server = host_key(source.host, source.port)
            try:
                parts = paths.parse_wire_path(source.path) if source.path else ()
            except paths.UnsafePath:
                parts = None
            if parts is not None and rules.may_mirror(user, server, parts):
                continue
            spec = f"{server}:{source.path or '.'}"
            if self.audit is not None:
                self.audit.refused(describe_peer(identity, host), f"job {spec}",
                                   "no mirror grant")
            return f"not allowed to mirror {spec} (no mirror grant)"
        return None
