"""Who is at the other end of a connection, once TLS (and the accounts) said so."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PeerIdentity:
    """Who is at the other end of a connection, as authenticated by TLS: its key (None: an
    anonymous peer, let in for `anyone`'s grants) and, with ``--accounts``, its user name."""

    fingerprint: str | None
    user: str | None = None


def describe_peer(identity: PeerIdentity | None, host: str) -> str:
    """``user NAME (sha256:...)``, ``key sha256:...`` or ``anonymous``, and the address."""
    if identity is None or identity.fingerprint is None:
        who = "anonymous"
    elif identity.user is not None:
        who = f"user {identity.user} ({identity.fingerprint})"
    else:
        who = f"key {identity.fingerprint}"
    return f"{who} from {host}"
