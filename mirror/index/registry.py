"""What the index stores, behind one small interface: `Registry`.

Two backends implement it on the same SQL (`mirror.index.sql`): SQLite (one file, the
default) and PostgreSQL (several index daemons sharing one registry); `mirror.index.database`
opens either. Every method returns a Deferred: database calls never run on the reactor thread.

A node's registration is a lease: it lasts until ``expires`` (seconds on the index's clock)
unless renewed; an expired node is in no answer and is purged by `Registry.expire`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred

from mirror.index.codec import FileRecord, Holder


class RegistryLimit(Exception):
    """A bound of the registry was reached (nodes, files per node); the text says which."""


class NotRegistered(Exception):
    """The node has no live registration (never made, withdrawn, or expired)."""


@dataclass(frozen=True)
class Limits:
    """Bounds of one registry: live nodes, and files one node may register."""

    max_nodes: int = 10_000
    max_files_per_node: int = 10_000_000


@dataclass(frozen=True)
class Query:
    """Holders of a path (a file, or every file below a directory; ``""``: all) or of a
    digest. Exactly one of the two is set."""

    path: str | None = None
    digest: str | None = None


#: Where a streamed answer goes on from: the (path, node) of the last row sent.
Cursor = tuple[str, str]


@dataclass(frozen=True)
class NodeLease:
    """One live node as the status page shows it."""

    node: str
    address: str
    files: int
    #: Seconds since its last renewal, and until its lease runs out.
    age: float
    expires_in: float


@dataclass(frozen=True)
class Overview:
    """The registry at a glance (the index's web site): live nodes and files, and the
    first ``limit`` live nodes by name."""

    nodes: int
    files: int
    files_with_digest: int
    leases: list[NodeLease]


class Registry(Protocol):
    """The index's store. ``node`` is always the identity the index established for the
    connection (`mirror.index.identity`), never a value read from a request: a node can
    change only its own registrations."""

    def hello(self, node: str, address: str, now: float, lease: float) -> Deferred[bool]:
        """Register (or re-register) ``node`` at ``address`` until ``now + lease``.
        True if it still had a live registration (its files are kept); False if it starts
        empty. Fails with `RegistryLimit` when the index holds its most nodes."""
        ...

    def renew(self, node: str, now: float, lease: float) -> Deferred[None]:
        """Extend a live lease; fails with `NotRegistered` if it has run out."""
        ...

    def begin(self, node: str) -> Deferred[None]:
        """Start a full listing: files not sent again before `end` are then removed."""
        ...

    def put(self, node: str, files: Sequence[FileRecord]) -> Deferred[int]:
        """Add or change files; the number the node then holds. `RegistryLimit` beyond
        the files one node may hold (nothing of the batch is kept)."""
        ...

    def remove(self, node: str, paths: Sequence[str]) -> Deferred[int]:
        """Remove files (unknown ones are ignored); the number the node then holds."""
        ...

    def end(self, node: str) -> Deferred[int]:
        """End a full listing: remove what it did not name; the number removed."""
        ...

    def withdraw(self, node: str) -> Deferred[None]:
        """Remove the node and all its files (a clean stop)."""
        ...

    def holders(self, query: Query, now: float, after: Cursor | None,
                limit: int) -> Deferred[list[Holder]]:
        """Up to ``limit`` live holders matching ``query``, in (path, node) order, after
        ``after`` (the previous page's last row)."""
        ...

    def expire(self, now: float) -> Deferred[int]:
        """Purge the nodes whose lease ran out, with their files; how many nodes."""
        ...

    def overview(self, now: float, limit: int) -> Deferred[Overview]:
        """Live nodes and files, counted, and the first ``limit`` live nodes' leases."""
        ...
