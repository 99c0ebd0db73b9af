"""LIST: walking the exported tree, confined to the root, in bounded batches, resumable.

`TreeWalker` is blocking (it runs in the disk thread pool) and resumable twice over: each
`next_batch` call returns at most about ``max_bytes`` of encoded entries, so the protocol can
stop asking while the client is not reading; and a new walker can start after a *cursor*, the
last name a client received, so a client may close a listing and take it up again later.

The listing's canonical order (doc/protocol.md): each directory before its contents, names
sorted within a directory (by code point, which for valid UTF-8 is byte order). Whatever the
depth, a walker holds one directory descriptor (three for a moment while it enters a
directory: its parent, it, and the duplicate ``os.listdir`` reads through) and, per level it
is inside, the directory's path, identity and the names not listed
yet: names only, never their stat results. Climbing back up opens ``..`` from the directory
just finished and checks it is the (st_dev, st_ino) recorded on the way down; if not (a
directory was moved meanwhile), the parent is opened again from the root by its path, so the
walk never leaves the root.

Only "it is gone or is no longer a directory" (ENOENT, ENOTDIR, ELOOP: removed, or replaced
by a file or a link since it was read) is passed over silently, counted as ``skipped``. Any
other failure (EACCES, EMFILE, EIO, ...) becomes an error entry for that path, so the client
knows its copy is incomplete, and the walk goes on with the rest.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from mirror import link_targets, paths
from mirror.wire import frames

#: errno values meaning "removed, or replaced by a file or a link": skipped silently.
_GONE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})


def _gone(exc: BaseException) -> bool:
    return isinstance(exc, paths.UnsafePath) or (
        isinstance(exc, OSError) and exc.errno in _GONE)


def _reason(exc: BaseException) -> tuple[int, str]:
    """(error code, reason) for an error entry."""
    if isinstance(exc, OSError):
        code = frames.E_NOT_ALLOWED if exc.errno in (errno.EACCES, errno.EPERM) else frames.E_IO
        return code, exc.strerror or str(exc)
    return frames.E_IO, str(exc)


def _open_child(name: str, dir_fd: int) -> int:
    """Open the directory ``name`` of ``dir_fd``, never through a link (one place, where
    tests inject errors)."""
    return os.open(name, paths.DIR_FLAGS, dir_fd=dir_fd)


class _Level:
    """A directory the walk is inside: its names still to list, in reverse (popped last)."""

    __slots__ = ("parts", "ident", "names")

    def __init__(self, parts: paths.Parts, ident: tuple[int, int], names: list[str]) -> None:
        self.parts = parts
        self.ident = ident
        self.names = names


class TreeWalker:
    """Depth-first walk of ``parts`` under ``root_fd``; special files are skipped, and so are
    symlinks unless ``links`` (then each is listed with its target, never followed; one whose
    target `mirror.link_targets.parse_target` refuses is skipped).

    With ``cursor`` (validated wire path components, ``parts`` a prefix of it), the walk starts
    right after the cursor in canonical order, whether or not the cursor still exists. Raises
    `FileNotFoundError` or `paths.UnsafePath` from the constructor when the requested path is
    missing or not a plain file or directory.
    """

    def __init__(self, root_fd: int, parts: paths.Parts,
                 cursor: paths.Parts | None = None, links: bool = False,
                 visible: Callable[[paths.Parts, bool], bool] | None = None) -> None:
        self.links = links
        #: What the peer may see (`mirror.security.rights.Reader.may_see`): the rest is left
        #: out silently (not even counted as skipped), and never entered.
        self.visible = visible
        self.count = 0
        self.skipped = 0
        self.errors = 0
        self._root_fd = root_fd
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._stack: list[_Level] = []
        #: Descriptor of the directory of ``_stack[-1]`` (-1 when the stack is empty).
        self._fd = -1
        if parts:
            parent = paths.open_parent_dir(root_fd, parts)
            try:
                st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    if visible is not None and not visible(parts, False):
                        raise FileNotFoundError(paths.join_parts(parts))
                    if cursor is None:
                        self._emit(parts, st)
                    return
                if not stat.S_ISDIR(st.st_mode):
                    raise paths.UnsafePath("not a regular file or directory")
                if cursor is None:
                    self._emit(parts, st)
                fd = paths.open_dir(parent, parts[-1:])
            finally:
                os.close(parent)
        else:
            # open_dir opens the root afresh: a dup of root_fd would share its read offset
            # with LISTs of the root running at the same time in other threads.
            fd = paths.open_dir(root_fd, ())
        try:
            self._enter(parts, fd, cursor[len(parts):] if cursor else ())
        except BaseException:
            self.close()
            raise

    # -- moving around ---------------------------------------------------------------------

    def _read_level(self, parts: paths.Parts, fd: int, after: str | None) -> _Level:
        st = os.fstat(fd)
        names = os.listdir(fd)
        if after is not None:
            names = [n for n in names if n > after]
        names.sort(reverse=True)  # popped from the end: ascending
        return _Level(parts, (st.st_dev, st.st_ino), names)

    def _push(self, level: _Level, fd: int) -> None:
        """Make ``fd`` (the directory of ``level``) the current one; only it stays open."""
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._stack.append(level)

    def _enter(self, parts: paths.Parts, fd: int, rest: paths.Parts) -> None:
        """Start at the directory ``parts`` (open as ``fd``): from its first name if ``rest``
        is empty, else after the cursor ``parts + rest``, re-descending the cursor's path."""
        try:
            level = self._read_level(parts, fd, rest[0] if rest else None)
        except BaseException:
            os.close(fd)
            raise
        self._push(level, fd)
        for i, name in enumerate(rest):
            child = parts + rest[: i + 1]
            try:
                fd = _open_child(name, self._fd)
            except OSError as e:
                if not _gone(e):
                    self._error(child, e)
                return  # gone or a file now: nothing of it is left to list
            try:
                level = self._read_level(child, fd, rest[i + 1] if i + 1 < len(rest) else None)
            except OSError as e:
                os.close(fd)
                self._error(child, e)
                return
            self._push(level, fd)

    def _descend(self, child: paths.Parts, name: str) -> None:
        """Enter the directory ``name`` of the current one (just listed as ``child``)."""
        try:
            fd = _open_child(name, self._fd)
        except OSError as e:
            if _gone(e):
                self.skipped += 1  # replaced by a link or removed since: never followed
            else:
                self._error(child, e)
            return
        try:
            level = self._read_level(child, fd, None)
        except OSError as e:
            os.close(fd)
            self._error(child, e)
            return
        self._push(level, fd)

    def _climb(self) -> None:
        """The current directory is done: go back to its parent, if the walk has one."""
        done_fd, self._fd = self._fd, -1
        self._stack.pop()
        try:
            while self._stack:
                level = self._stack[-1]
                fd = -1
                if done_fd >= 0:
                    fd = self._open_dotdot(done_fd, level.ident)
                    os.close(done_fd)
                    done_fd = -1
                if fd < 0:
                    try:
                        fd = paths.open_dir(self._root_fd, level.parts)
                    except (OSError, paths.UnsafePath) as e:
                        self._stack.pop()
                        if not _gone(e):
                            self._error(level.parts, e, "cannot go on listing")
                        continue
                self._fd = fd
                return
        finally:
            if done_fd >= 0:
                os.close(done_fd)

    @staticmethod
    def _open_dotdot(fd: int, ident: tuple[int, int]) -> int:
        """``..`` of ``fd`` if it is the directory ``ident``, else -1."""
        try:
            parent = os.open("..", paths.DIR_FLAGS, dir_fd=fd)
        except OSError:
            return -1
        try:
            st = os.fstat(parent)
        except OSError:
            os.close(parent)
            return -1
        if (st.st_dev, st.st_ino) != ident:
            os.close(parent)  # moved meanwhile: the caller opens the path from the root
            return -1
        return parent

    # -- output ----------------------------------------------------------------------------

    def _emit(self, parts: paths.Parts, st: os.stat_result) -> None:
        kind = frames.KIND_DIR if stat.S_ISDIR(st.st_mode) else frames.KIND_FILE
        size = 0 if kind == frames.KIND_DIR else st.st_size
        name = paths.join_parts(parts).encode("utf-8")
        self._add(frames.encode_entry(kind, st.st_mode, size, st.st_mtime_ns, name))
        self.count += 1

    def _emit_link(self, parts: paths.Parts, name: str, st: os.stat_result) -> None:
        """List the link ``name`` of the current directory with its target (read, never
        followed). A target that is not a valid one on the wire is skipped and counted."""
        try:
            target = os.readlink(os.fsencode(name), dir_fd=self._fd)
        except OSError as e:
            if e.errno in _GONE or e.errno == errno.EINVAL:
                self.skipped += 1  # removed, or no longer a link, since it was examined
            else:
                self._error(parts, e, "cannot read link")
            return
        try:
            link_targets.parse_target(target)
        except link_targets.UnsafeTarget:
            self.skipped += 1
            return
        name_bytes = paths.join_parts(parts).encode("utf-8")
        self._add(frames.encode_link_entry(name_bytes, target, st.st_mtime_ns))
        self.count += 1

    def _error(self, parts: paths.Parts, exc: BaseException, what: str = "cannot list") -> None:
        path = paths.join_parts(parts)
        code, reason = _reason(exc)
        self._add(frames.encode_error_entry(code, path.encode("utf-8"),
                                            f"{what} {path or '.'}: {reason}"))
        self.errors += 1

    def _add(self, entry: bytes) -> None:
        self._pending.append(entry)
        self._pending_bytes += len(entry)

    def next_batch(self, max_bytes: int = 64 * 1024) -> bytes | None:
        """Encoded entries for one ENTRIES frame, or None when the walk is complete."""
        while self._stack and self._pending_bytes < max_bytes:
            level = self._stack[-1]
            if not level.names:
                self._climb()
                continue
            name = level.names.pop()
            try:
                # The whole path, so that the total-length limit holds too.
                child = paths.parse_wire_path(paths.join_parts(level.parts + (name,)))
            except paths.UnsafePath:
                self.skipped += 1  # not representable safely on the wire (or reserved)
                continue
            try:
                st = os.stat(name, dir_fd=self._fd, follow_symlinks=False)
            except OSError as e:
                if e.errno in _GONE:
                    self.skipped += 1  # vanished since the directory was read
                else:
                    self._error(child, e)
                continue
            if self.visible is not None and not self.visible(child, stat.S_ISDIR(st.st_mode)):
                continue
            if stat.S_ISDIR(st.st_mode):
                self._emit(child, st)
                self._descend(child, name)
            elif stat.S_ISREG(st.st_mode):
                self._emit(child, st)
            elif self.links and stat.S_ISLNK(st.st_mode):
                self._emit_link(child, name, st)
            else:
                self.skipped += 1  # symlinks, FIFOs, sockets, devices: never listed
        if not self._pending:
            return None
        batch = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        return batch

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._stack.clear()
