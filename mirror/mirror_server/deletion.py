"""``--delete``: what a SPEC's listing no longer has is removed from the mirror (issue 12).

Three parts, all blocking (they run in the disk threads) except `DeletionGate`:

- `TreeMerge` compares the listing, entry by entry as it streams in (canonical order: a
  directory before its contents, names sorted), with the local directories, each read
  sorted when the listing enters it. It keeps the unmatched local names of the directories
  along the current path only, so its memory grows with depth (and the width of those
  directories), not with the tree. Local names the listing skipped over are *candidates*:
  the roots of extraneous subtrees, recorded (not descended) until the listing is over.
- `remove_tree` removes a candidate, deepest first, or only counts what it would remove
  (the plan, and a dry run). It walks with one directory descriptor, entering children by
  name with ``O_NOFOLLOW`` and climbing through ``..`` checked against the identity
  recorded on the way down, as the start-up sweep does: a symbolic link is removed as a
  link, never followed, and a directory moved away meanwhile stops the walk rather than
  lead outside the subtree.
- `DeletionGate` holds the deletions of a job until every SPEC has planned its own, so that
  ``--max-delete`` is a limit on the job: over it, nothing is deleted anywhere.

Never removed: names reserved by `mirror.paths.is_reserved_name` (the temporary files of
transfers in progress, the state directory), paths excluded by the job's filters (and so
a directory holding one), anything outside the SPEC's subtree.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred

from mirror import paths

#: ``(path under the store's root, is_dir) -> True`` for a path that must be kept.
Protected = Callable[[paths.Parts, bool], bool]

DIR = "dir"
FILE = "file"
LINK = "link"
OTHER = "other"


def kind_of_mode(mode: int) -> str:
    """``dir``, ``file``, ``link`` or ``other`` for an ``st_mode``."""
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISLNK(mode):
        return LINK
    return OTHER


class DeletionStopped(Exception):
    """A directory was moved while the walk was inside it: the walk stopped there."""


def read_local_dir(root_fd: int, parts: paths.Parts) -> list[tuple[str, bool]]:
    """The entries of the local directory ``parts`` as ``(name, is_dir)``, sorted by name
    (the listing's order), reserved names left out; ``[]`` if it cannot be opened without
    following a link."""
    try:
        fd = paths.open_dir(root_fd, parts)
    except (OSError, paths.UnsafePath):
        return []
    try:
        with os.scandir(fd) as it:
            found = []
            for entry in it:
                if paths.is_reserved_name(entry.name):
                    continue
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                found.append((entry.name, is_dir))
    finally:
        os.close(fd)
    found.sort()
    return found


class _Level:
    """One local directory on the current path: its sorted entries, and how far the
    listing got in it."""

    __slots__ = ("parts", "entries", "index")

    def __init__(self, parts: paths.Parts, entries: list[tuple[str, bool]]) -> None:
        self.parts = parts
        self.entries = entries
        self.index = 0


class MergeLost(Exception):
    """An entry whose directory is not on the merge's path (only after an entry was left
    out of the merge, which a listing error explains): the merge cannot go on."""


class TreeMerge:
    """The streaming comparison of one SPEC's listing with the local tree.

    ``read_dir(parts)`` gives a local directory's entries as `read_local_dir` does,
    ``kind_of(parts)`` the kind of what is at ``parts`` (None if nothing), ``protected``
    which local paths are never candidates (excluded by the filters). Candidates go to
    ``sink`` if given, else to `candidates`.
    """

    def __init__(self, root: paths.Parts,
                 read_dir: Callable[[paths.Parts], list[tuple[str, bool]]],
                 kind_of: Callable[[paths.Parts], str | None],
                 protected: Protected,
                 sink: Callable[[paths.Parts, bool], None] | None = None) -> None:
        self.root = root
        self._read_dir = read_dir
        self._kind_of = kind_of
        self._protected = protected
        self._levels: list[_Level] = []
        self._started = False
        #: Local paths the listing did not have, and whether each is a directory.
        self.candidates: list[tuple[paths.Parts, bool]] = []
        self._sink = sink or (lambda parts, is_dir: self.candidates.append((parts, is_dir)))

    @property
    def depth(self) -> int:
        """Directories held (for the tests of the memory bound)."""
        return len(self._levels)

    def entry(self, parts: paths.Parts, is_dir: bool) -> str | None:
        """Take the next listed entry (in canonical order); return what is at the same
        path locally: `DIR`, `FILE` (anything else but, for the root, ``link``/``other``)
        or None."""
        self._start(parts)
        if parts == self.root:
            local = self._kind_of(parts)
        else:
            parent = parts[:-1]
            while self._levels and self._levels[-1].parts != parent:
                self._close(self._levels.pop())
            if not self._levels:
                raise MergeLost(f"{paths.join_parts(parts)}: its directory is not on the "
                                "merge's path")
            local = self._advance(self._levels[-1], parts[-1])
        if is_dir:
            self._levels.append(_Level(parts, self._read_dir(parts) if local == DIR else []))
        return local

    def _start(self, first: paths.Parts | None) -> None:
        # A listing of the whole export has no entry for its root (the empty path): the
        # root's level is opened before its first entry, or at the end of an empty one.
        if self._started:
            return
        self._started = True
        if first != self.root and not self.root:
            local = self._kind_of(self.root)
            self._levels.append(_Level(self.root,
                                       self._read_dir(self.root) if local == DIR else []))

    def finish(self) -> None:
        """The listing is complete: whatever was not met is a candidate."""
        self._start(None)
        while self._levels:
            self._close(self._levels.pop())

    def _advance(self, level: _Level, name: str) -> str | None:
        entries = level.entries
        i = level.index
        while i < len(entries) and entries[i][0] < name:
            self._candidate(level.parts + (entries[i][0],), entries[i][1])
            i += 1
        local = None
        if i < len(entries) and entries[i][0] == name:
            # Only "a directory or not" matters here (a type change); FILE stands for any
            # other kind, as a stat per matched file would cost more than the rest.
            local = DIR if entries[i][1] else FILE
            i += 1
        level.index = i
        return local

    def _close(self, level: _Level) -> None:
        for name, is_dir in level.entries[level.index:]:
            self._candidate(level.parts + (name,), is_dir)
        level.entries = []

    def _candidate(self, parts: paths.Parts, is_dir: bool) -> None:
        if not self._protected(parts, is_dir):
            self._sink(parts, is_dir)


@dataclass
class Removal:
    """What `remove_tree` removed (or, counting only, would remove)."""

    entries: int = 0
    bytes: int = 0
    #: ``(path, reason)`` of what could not be removed.
    problems: list[tuple[paths.Parts, str]] = field(default_factory=list)

    def add(self, other: Removal) -> None:
        self.entries += other.entries
        self.bytes += other.bytes
        self.problems += other.problems


class _Walk:
    """One directory of `remove_tree`'s walk: what is left to do in it."""

    __slots__ = ("parts", "identity", "names", "kept")

    def __init__(self, parts: paths.Parts, identity: tuple[int, int], names: list[str],
                 kept: bool) -> None:
        self.parts = parts
        self.identity = identity
        self.names = names
        #: Something in it stays (reserved, protected, or not removable): it stays too.
        self.kept = kept


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _names(fd: int) -> tuple[list[str], bool]:
    """The names in directory ``fd`` but reserved ones, and whether there were any."""
    names = []
    reserved = False
    with os.scandir(fd) as it:
        for entry in it:
            if paths.is_reserved_name(entry.name):
                reserved = True
            else:
                names.append(entry.name)
    return names, reserved


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def remove_tree(root_fd: int, target: paths.Parts, protected: Protected,
                count_only: bool = False,
                removed: Callable[[paths.Parts], None] | None = None) -> Removal:
    """Remove ``target`` (under ``root_fd``, never ``()``) and, if it is a directory,
    everything in it, deepest first; with ``count_only``, only count. ``removed`` is told
    of each regular file unlinked (`MirrorStore.file_removed`: the index hears of it).

    A directory holding something kept (a reserved name, a ``protected`` path, an entry
    that could not be removed) is kept; counts are of what is (or would be) removed.
    Raises `DeletionStopped` if the walk found itself outside where it came down.
    """
    result = Removal()
    try:
        fd = paths.open_dir(root_fd, target[:-1])
    except FileNotFoundError:
        return result
    except (OSError, paths.UnsafePath) as e:
        reason = _reason(e) if isinstance(e, OSError) else str(e)
        result.problems.append((target, f"cannot reach its directory: {reason}"))
        return result
    try:
        # The first level is the target's parent, with the target as its only name.
        levels = [_Walk(target[:-1], _identity(fd), [target[-1]], False)]
        while levels:
            level = levels[-1]
            if level.names:
                name = level.names.pop()
                child = level.parts + (name,)
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    result.problems.append((child, _reason(e)))
                    level.kept = True
                    continue
                is_dir = stat.S_ISDIR(st.st_mode)
                if protected(child, is_dir):
                    level.kept = True
                    continue
                if not is_dir:
                    # A link is removed as a link: unlink never follows it.
                    if not count_only:
                        try:
                            os.unlink(name, dir_fd=fd)
                        except FileNotFoundError:
                            continue
                        except OSError as e:
                            result.problems.append((child, _reason(e)))
                            level.kept = True
                            continue
                    result.entries += 1
                    if stat.S_ISREG(st.st_mode):
                        result.bytes += st.st_size
                        if removed is not None and not count_only:
                            removed(child)
                    continue
                try:
                    sub = os.open(name, paths.DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    # Gone, or swapped for a link since the stat: never followed.
                    if e.errno != errno.ENOENT:
                        result.problems.append((child, _reason(e)))
                        level.kept = True
                    continue
                try:
                    names, reserved = _names(sub)
                    identity = _identity(sub)
                except OSError as e:
                    os.close(sub)
                    result.problems.append((child, _reason(e)))
                    level.kept = True
                    continue
                os.close(fd)
                fd = sub
                levels.append(_Walk(child, identity, names, reserved))
                continue
            levels.pop()
            if not levels:
                break
            # Hazard: ".." is wherever the directory is now; checked against the identity
            # recorded on the way down before anything is removed there.
            parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = parent
            if _identity(fd) != levels[-1].identity:
                raise DeletionStopped(f"deleting in {paths.join_parts(levels[-1].parts)} "
                                      "stopped: a directory was moved meanwhile")
            if level.kept:
                levels[-1].kept = True
                continue
            if not count_only:
                try:
                    os.rmdir(level.parts[-1], dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        result.problems.append((level.parts, _reason(e)))
                    levels[-1].kept = True  # something new arrived in it: it stays
                    continue
            result.entries += 1
    finally:
        os.close(fd)
    return result


class DeletionGate:
    """The ``--max-delete`` limit of one job: each SPEC with ``--delete`` says how many
    entries it would delete (0 if it will delete nothing), and waits until all have; then
    each may go on, or none if the total is over the limit."""

    def __init__(self, sources: int, limit: int | None) -> None:
        self.limit = limit
        self._waiting = sources
        self.total = 0
        #: False if a SPEC stopped counting once over the limit: `total` is a lower bound.
        self.exact = True
        self._decided: Deferred[bool] = Deferred()

    async def decide(self, planned: int, exact: bool = True) -> bool:
        """Count ``planned`` in (``exact``: or at least that many); True once every SPEC
        has, if the total is within the limit.

        Each SPEC must call this exactly once, whatever happened to it, or the others wait.
        """
        self.total += planned
        self.exact = self.exact and exact
        self._waiting -= 1
        if self._waiting == 0 and not self._decided.called:
            self._decided.callback(self.limit is None or self.total <= self.limit)
        if self.limit is None:
            return True
        result: bool = await _shared(self._decided)
        return result


def _shared(d: Deferred[bool]) -> Deferred[bool]:
    """A Deferred firing with ``d``'s result, leaving ``d`` itself for other waiters."""
    out: Deferred[bool] = Deferred()

    def fire(result: bool) -> bool:
        out.callback(result)
        return result

    d.addCallback(fire)  # at once if ``d`` has fired already
    return out


__all__ = [
    "DeletionGate",
    "DeletionStopped",
    "MergeLost",
    "Removal",
    "TreeMerge",
    "kind_of_mode",
    "read_local_dir",
    "remove_tree",
]
