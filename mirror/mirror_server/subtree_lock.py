"""The subtrees of running ``--delete`` jobs: another such job on an overlapping subtree is
refused, with the reason, rather than delete what the first one is placing (issue 12).

A subtree is ``(HOST_PORT, path components)``; two overlap when they are of the same
content server directory and one path is the other or lies below it. Jobs without
``--delete`` (dry runs included) take no lock: they never remove anything.
"""

from __future__ import annotations

from collections.abc import Sequence

from mirror import paths

Subtree = tuple[str, paths.Parts]


class SubtreeLocked(Exception):
    """A job could not take its locks; the message says which job holds which subtree."""


def _overlap(a: Subtree, b: Subtree) -> bool:
    if a[0] != b[0]:
        return False
    n = min(len(a[1]), len(b[1]))
    return a[1][:n] == b[1][:n]


def _show(subtree: Subtree) -> str:
    return "/".join((subtree[0],) + subtree[1])


class SubtreeLocks:
    """Which job holds which subtrees; one per mirror service (reactor thread only)."""

    def __init__(self) -> None:
        self._held: dict[str, list[Subtree]] = {}

    def acquire(self, owner: str, subtrees: Sequence[Subtree]) -> None:
        """Lock ``subtrees`` for job ``owner``, all or none; raise `SubtreeLocked` if one
        overlaps a subtree held by another job, or another subtree of the same job."""
        for i, mine in enumerate(subtrees):
            for other in subtrees[:i]:
                if _overlap(mine, other):
                    raise SubtreeLocked(f"--delete with overlapping SPECs ({_show(other)} and "
                                        f"{_show(mine)}): give each subtree once")
            for job, held in self._held.items():
                for theirs in held:
                    if _overlap(mine, theirs):
                        raise SubtreeLocked(
                            f"{_show(mine)} is locked by job {job} (--delete on "
                            f"{_show(theirs)}); try again once it is done")
        self._held[owner] = list(subtrees)

    def release(self, owner: str) -> None:
        """Job ``owner`` is over: its subtrees are free (nothing if it held none)."""
        self._held.pop(owner, None)

    def held(self) -> dict[str, list[Subtree]]:
        """A copy of the locks now held, by job."""
        return {job: list(trees) for job, trees in self._held.items()}
