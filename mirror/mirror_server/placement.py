"""The seam through which the mirror store says what it placed and removed.

The store (`mirror.mirror_server.store`) and the deletion (`mirror.mirror_server.deletion`)
run in the disk threads; they call a `PlacementObserver` there, right after a verified file
took its final name or a file was unlinked. `ReactorPlacements` is the observer a daemon
installs: it hops to the reactor thread (``callFromThread``) and hands the change, as a wire
path ``HOST_PORT/PATH`` (where ``--serve`` serves it), to a `PlacementListener` (the index
notifier, `mirror.mirror_server.index_node`). The store itself knows nothing of the index.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from mirror import paths
from mirror.index.digest_store import StatKey, stat_key


class PlacementObserver(Protocol):
    """Told of the store's changes; called in a disk thread (never block long here)."""

    def placed(self, top: str, parts: paths.Parts, st: os.stat_result, digest: bytes) -> None:
        """A verified file with whole-file ``digest`` is at ``top/parts``; ``st`` is its
        stat after the rename."""

    def removed(self, top: str, parts: paths.Parts) -> None:
        """The file at ``top/parts`` was removed (--delete)."""


class PlacementListener(Protocol):
    """What `ReactorPlacements` tells, on the reactor thread."""

    def placed(self, path: str, key: StatKey, digest: str) -> None: ...

    def removed(self, path: str) -> None: ...


def wire_path(top: str, parts: paths.Parts) -> str:
    """Where the serving mirror serves ``parts`` of the store ``top``."""
    return paths.join_parts((top, *parts))


class ReactorPlacements:
    """A `PlacementObserver` that forwards each change to ``listener`` on the reactor
    thread; ``hop`` is the reactor's ``callFromThread`` (a test passes a direct call)."""

    def __init__(self, listener: PlacementListener, hop: Callable[..., Any]) -> None:
        self.listener = listener
        self.hop = hop

    def placed(self, top: str, parts: paths.Parts, st: os.stat_result, digest: bytes) -> None:
        self.hop(self.listener.placed, wire_path(top, parts), stat_key(st), digest.hex())

    def removed(self, top: str, parts: paths.Parts) -> None:
        self.hop(self.listener.removed, wire_path(top, parts))
