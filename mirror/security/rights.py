"""Who may do what, decided from a snapshot of the accounts database (pure: no I/O).

A grant gives a principal a right on a path prefix:

- principal: a user (by name), a group (``@NAME``), or `ANYONE` (every peer, even one
  without a client certificate);
- right: `READ` (LIST, FETCH, FETCH_MANY, HASHES of the paths under the prefix) or `MIRROR`
  (submit jobs to a mirror server whose SPECs name ``server`` and a path under the prefix);
- prefix: a path relative to the export, matched component by component: ``pub`` covers
  ``pub`` and ``pub/x``, never ``public``; ``.`` (stored as ``""``) covers everything.

No grant, no access. A user's rights are those of its own grants, of its groups' and of
`ANYONE`'s. Members of the built-in group `ADMIN_GROUP` may also ask a daemon who is
connected (`mirror-admin who`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mirror import paths

READ = "read"
MIRROR = "mirror"
RIGHTS = (READ, MIRROR)
#: The principal every peer is, authenticated or not.
ANYONE = "anyone"
#: The group whose members may use `mirror-admin who`.
ADMIN_GROUP = "admin"
#: A MIRROR grant's server that stands for every content server.
ANY_SERVER = "*"


def normalize_prefix(text: str) -> str:
    """A grant's prefix as stored: wire-path form, ``""`` for the whole export. Raises
    `ValueError` for a path that could never be requested."""
    text = text.strip("/")
    if text in ("", "."):
        return ""
    try:
        return paths.join_parts(paths.parse_wire_path(text))
    except paths.UnsafePath as e:
        raise ValueError(f"{text!r}: {e}") from None


def _split(prefix: str) -> paths.Parts:
    return tuple(prefix.split("/")) if prefix else ()


def covers(prefix: str, parts: paths.Parts) -> bool:
    """Whether the grant prefix ``prefix`` covers the path ``parts``."""
    p = _split(prefix)
    return parts[: len(p)] == p


@dataclass(frozen=True)
class Grant:
    principal: str  # a user's name, "@group", or ANYONE
    right: str
    prefix: str
    server: str = ANY_SERVER  # MIRROR grants: HOST:PORT of the content server, or "*"


@dataclass(frozen=True)
class Rules:
    """The accounts database as read at one moment."""

    #: Key fingerprint -> user name.
    users: dict[str, str] = field(default_factory=dict)
    #: User name -> the groups it is in.
    groups_of: dict[str, frozenset[str]] = field(default_factory=dict)
    grants: tuple[Grant, ...] = ()

    def user(self, fingerprint: str | None) -> str | None:
        """The name of the user holding the key ``fingerprint``, or None."""
        return None if fingerprint is None else self.users.get(fingerprint)

    def principals(self, user: str | None) -> frozenset[str]:
        """What grants of ``user`` (None: an anonymous peer) apply to."""
        if user is None:
            return frozenset({ANYONE})
        groups = self.groups_of.get(user, frozenset())
        return frozenset({ANYONE, user} | {f"@{g}" for g in groups})

    def anyone_may_read(self) -> bool:
        """Whether a peer without a client certificate has anything to read."""
        return any(g.principal == ANYONE and g.right == READ for g in self.grants)

    def is_admin(self, user: str | None) -> bool:
        return user is not None and ADMIN_GROUP in self.groups_of.get(user, frozenset())

    def reader(self, user: str | None) -> Reader:
        """What ``user`` may read (None: anonymous)."""
        who = self.principals(user)
        return Reader(tuple(_split(g.prefix) for g in self.grants
                            if g.right == READ and g.principal in who))

    def may_mirror(self, user: str | None, server: str, parts: paths.Parts) -> bool:
        """Whether ``user`` may submit a job mirroring ``parts`` of ``server`` (HOST:PORT)."""
        who = self.principals(user)
        return any(g.right == MIRROR and g.principal in who
                   and g.server in (ANY_SERVER, server) and covers(g.prefix, parts)
                   for g in self.grants)


@dataclass(frozen=True)
class Reader:
    """The READ prefixes of one peer: what it may read, and what it may see in a listing."""

    prefixes: tuple[paths.Parts, ...]

    def may_read(self, parts: paths.Parts) -> bool:
        """Whether the file or directory ``parts`` is under a READ prefix."""
        return any(parts[: len(p)] == p for p in self.prefixes)

    def may_see(self, parts: paths.Parts, is_dir: bool) -> bool:
        """Whether a listing shows ``parts``: what may be read, and the directories leading
        to a READ prefix (so that a grant on ``a/b`` can be reached by listing ``.``; their
        other contents stay hidden)."""
        if self.may_read(parts):
            return True
        return is_dir and any(len(p) > len(parts) and p[: len(parts)] == parts
                              for p in self.prefixes)


#: What a daemon without an accounts database applies: everything may be read.
class Unrestricted:
    def may_read(self, parts: paths.Parts) -> bool:
        return True

    def may_see(self, parts: paths.Parts, is_dir: bool) -> bool:
        return True
