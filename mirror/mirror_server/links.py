"""Symbolic links in the mirror: rsync's ``--links --safe-links`` (or ``--no-links``).

`SourceLinks` is what a SPEC's manager (`mirror.mirror_server.job.SourceRun`) does with the
link entries of its listing: each target is validated (`mirror.link_targets.parse_target`:
a malformed one is a failure, as an unsafe name is) and checked for safety
(`mirror.link_targets.check_safe`): an absolute target, or one that leads outside
``MIRROR_DIR/HOST_PORT/PATH``, is skipped, counted and reported, never placed. With
``--no-links`` every link is skipped (counted, not reported one by one).

Placing (`place_link`, blocking, in the disk threads) never follows a link and never writes
through one: the parent is opened component by component with ``O_NOFOLLOW``
(`mirror.paths`), the link is made under a temporary ``.mirror-tmp-`` name beside its
target and renamed over it, so the final name holds the old entry or the new link, never
nothing; a rename replaces a file or a link at the final name as a name, without following
it. An identical link already in place is left alone.

`make_dir` lets a directory of the source replace a link the mirror holds at its name (the
source turned a link into a directory): the link is removed as a link, never followed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from typing import Protocol

from twisted.logger import Logger

from mirror import link_targets, paths
from mirror.mirror_server.store import MirrorStore, StoreError, _temp_name
from mirror.threads import Threads
from mirror.wire import frames
from mirror.wire.control import SourceRequest

#: Links mirrored when they are safe (rsync --links --safe-links), the default.
LINKS_SAFE = "safe"
#: No link mirrored; each is counted as skipped (rsync --no-links).
LINKS_SKIP = "skip"
LINKS_MODES = (LINKS_SAFE, LINKS_SKIP)
#: Skipped links reported one by one per SPEC; later ones are only counted.
MAX_REPORTED_SKIPS = 1000


def place_link(root_fd: int, parts: paths.Parts, target: str, mtime_ns: int) -> bool:
    """Make ``parts`` (under ``root_fd``) a symbolic link to ``target``, atomically; False
    if that link was already there (its mtime is set if it differs), True if placed.

    Raises `StoreError` (a directory in the way, a failed system call) or `paths.UnsafePath`
    (a parent is not a directory: a file or a link, never followed).
    """
    parent = paths.open_dir(root_fd, parts[:-1])
    name = parts[-1]
    try:
        try:
            st: os.stat_result | None = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            if os.readlink(name, dir_fd=parent) == target:
                if st.st_mtime_ns != mtime_ns:
                    os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=parent,
                             follow_symlinks=False)
                return False
        elif st is not None and stat.S_ISDIR(st.st_mode):
            raise StoreError("a directory is in the way of the link")
        temp = _temp_name()
        os.symlink(target, temp, dir_fd=parent)
        try:
            os.utime(temp, ns=(mtime_ns, mtime_ns), dir_fd=parent, follow_symlinks=False)
            # rename() replaces the name: a file or link there is never followed.
            os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            try:
                os.unlink(temp, dir_fd=parent)
            except FileNotFoundError:
                pass
            raise
        return True
    except OSError as e:
        raise StoreError(f"cannot place link: {e.strerror or e}") from None
    finally:
        os.close(parent)


def make_dir(store: MirrorStore, parts: paths.Parts) -> bool:
    """`MirrorStore.make_dir` (True if it made the directory), first removing a symbolic
    link the mirror holds at ``parts`` (as a link: never followed); anything else in the
    way fails as before."""
    try:
        return store.make_dir(parts)
    except (StoreError, paths.UnsafePath):
        if not _remove_link(store.root_fd, parts):
            raise
    return store.make_dir(parts)


def _remove_link(root_fd: int, parts: paths.Parts) -> bool:
    """Remove ``parts`` if it is a symbolic link; True if one was removed."""
    try:
        parent = paths.open_dir(root_fd, parts[:-1])
    except (OSError, paths.UnsafePath):
        return False
    try:
        if not stat.S_ISLNK(os.stat(parts[-1], dir_fd=parent, follow_symlinks=False).st_mode):
            return False
        os.unlink(parts[-1], dir_fd=parent)  # unlinkat: the link itself
        return True
    except OSError:
        return False
    finally:
        os.close(parent)


def _place_all(root_fd: int, links: Sequence[tuple[paths.Parts, str, int]]
               ) -> list[bool | str]:
    """`place_link` for each link (one thread call per batch): placed, current, or why not."""
    results: list[bool | str] = []
    for parts, target, mtime_ns in links:
        try:
            results.append(place_link(root_fd, parts, target, mtime_ns))
        except (StoreError, paths.UnsafePath) as e:
            results.append(str(e))
    return results


class LinkRun(Protocol):
    """What `SourceLinks` uses of its SPEC's manager (`mirror.mirror_server.job.SourceRun`,
    which imports this module: stated here rather than imported)."""

    index: int
    label: str
    request: SourceRequest
    store: MirrorStore | None
    failed: int
    skipped: int

    @property
    def threads(self) -> Threads: ...

    def error(self, path: str | None, message: str) -> None: ...

    def link_skipped(self, path: str | None, message: str) -> None: ...


class SourceLinks:
    """The link entries of one SPEC: checked, placed or skipped, counted."""

    log = Logger()

    def __init__(self, run: LinkRun, mode: str = LINKS_SAFE) -> None:
        if mode not in LINKS_MODES:
            raise ValueError(f"unknown links mode {mode!r}")
        self.run = run
        self.mode = mode
        #: Links placed (new or changed) in this job.
        self.placed = 0
        #: Links not placed: unsafe targets, or every link with ``--no-links``.
        self.skipped = 0
        #: LISTs ask for link entries until a content server refuses the option.
        self.requested = True

    def refused_by_server(self, code: int | None) -> bool:
        """A LIST that asked for links failed with ``code``: True if that is an older
        content server refusing the option (ERROR 3, bad request), to be asked again
        without it; its links are then counted as not exported, and a notice says so."""
        if not self.requested or code != frames.E_BAD_REQUEST:
            return False
        self.requested = False
        self._notice(None, "the content server does not list symbolic links (an older "
                           "version): links not mirrored, counted as not exported")
        return True

    def _notice(self, path: str | None, message: str) -> None:
        run = self.run
        self.log.info("{source}: {path}: {message}", source=run.label, path=path or "-",
                      message=message)
        run.link_skipped(path, message)

    async def take(self, links: Sequence[tuple[paths.Parts, frames.Entry]]) -> None:
        """Check the links of one ENTRIES batch (their names already checked by the
        manager) and place the safe ones."""
        run = self.run
        tree = paths.parse_request_path(run.request.path)
        wanted: list[tuple[paths.Parts, str, int]] = []
        for parts, entry in links:
            path = paths.join_parts(parts)
            if self.mode == LINKS_SKIP:
                self.skipped += 1
                continue
            try:
                target = link_targets.parse_target(entry.target)
            except link_targets.UnsafeTarget as e:
                run.failed += 1
                run.error(path, f"link refused: {e}")
                continue
            try:
                link_targets.check_safe(parts, tree, target)
            except link_targets.UnsafeTarget as e:
                self.skipped += 1
                if self.skipped <= MAX_REPORTED_SKIPS:
                    self._notice(path, f"unsafe link skipped: {e}")
                continue
            wanted.append((parts, target, entry.mtime_ns))
        if not wanted:
            return
        assert run.store is not None  # opened before the listing starts
        results = await run.threads.run(_place_all, run.store.root_fd, wanted)
        for (parts, _target, _mtime), result in zip(wanted, results, strict=True):
            if result is True:
                self.placed += 1
            elif result is False:
                run.skipped += 1  # already current
            else:
                run.failed += 1
                run.error(paths.join_parts(parts), str(result))

    def finish(self) -> None:
        """The SPEC is done: say how many skipped links were not reported one by one."""
        unshown = self.skipped - MAX_REPORTED_SKIPS
        if self.mode == LINKS_SAFE and unshown > 0:
            self._notice(None, f"{unshown} more unsafe links skipped")
