"""What a content server's peer may read: the one place its requests are checked.

Each LIST, FETCH, FETCH_MANY and HASHES asks `ReadAccess.reader` first (the accounts are
read again if they changed, so a revoked grant applies from the next request). A path the
peer may not read gets exactly the answer of a missing one, and a listing leaves out what
it may not see (`mirror.security.rights.Reader.may_see`): nothing tells it what exists.
Each refusal is one line of the audit log.
"""

from __future__ import annotations

from typing import Any

from mirror import paths
from mirror.security.accounts import AccountsWatch
from mirror.security.audit import AuditLog
from mirror.security.peer import PeerIdentity, describe_peer
from mirror.security.presence import Presence
from mirror.security.rights import Reader, Unrestricted

#: What a daemon without --accounts lets everyone read.
UNRESTRICTED = Unrestricted()


class ReadAccess:
    """The content server's read rules (``accounts`` None: everything may be read)."""

    def __init__(self, accounts: AccountsWatch | None, audit: AuditLog | None,
                 presence: Presence | None = None) -> None:
        self.accounts = accounts
        self.audit = audit
        #: The daemon's connections, for WHO.
        self.presence = presence

    async def who(self, identity: PeerIdentity | None, now: float) -> dict[str, Any] | None:
        """WHO: the daemon's connections, for a member of the ``admin`` group only (None:
        refused, and audited)."""
        if self.accounts is not None and self.presence is not None and identity is not None:
            rules = await self.accounts.current()
            if rules.is_admin(rules.user(identity.fingerprint)):
                return self.presence.connections(now)
        return None

    async def reader(self, identity: PeerIdentity | None) -> Reader | Unrestricted:
        """What the peer ``identity`` may read now."""
        if self.accounts is None:
            return UNRESTRICTED
        rules = await self.accounts.current()
        if identity is None:
            return rules.reader(None)
        if identity.fingerprint is not None and rules.user(identity.fingerprint) is None:
            # A node let in by --authorized-keys, not a user: no grants of its own.
            return rules.reader(None)
        return rules.reader(identity.user)

    def refused(self, identity: PeerIdentity | None, host: str, request: str,
                parts: paths.Parts, in_thread: bool = False, why: str = "no read grant"
                ) -> None:
        """Audit a request for ``parts`` the peer may not read."""
        if self.audit is None:
            return
        what = f"{request} {paths.join_parts(parts) or '.'}"
        peer = describe_peer(identity, host)
        if in_thread:
            self.audit.write(peer, what, why)
        else:
            self.audit.refused(peer, what, why)
