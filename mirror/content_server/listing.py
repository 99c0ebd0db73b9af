"""LIST: walking the exported tree, confined to the root, in bounded batches.

`TreeWalker` is blocking (it runs in the disk thread pool) and resumable: each
`next_batch` call returns at most about ``max_bytes`` of encoded entries, so the protocol can
stop asking while the client is not reading, and memory stays bounded whatever the tree size
(beyond one directory's names and one open descriptor per level).
"""

from __future__ import annotations

import os
import stat

from mirror import paths
from mirror.wire import frames


class TreeWalker:
    """Depth-first walk of ``parts`` under ``root_fd``; symlinks and special files are skipped.

    Raises `FileNotFoundError` or `paths.UnsafePath` from the constructor when the requested
    path is missing or not a plain file or directory.
    """

    def __init__(self, root_fd: int, parts: paths.Parts) -> None:
        self.count = 0
        self.skipped = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        # Each level: (parts of the directory, its fd, iterator of its sorted entries).
        self._stack: list[tuple[paths.Parts, int, list[tuple[str, os.stat_result]]]] = []
        if not parts:
            # open_dir opens the root afresh: a dup of root_fd would share its read offset
            # with LISTs of the root running at the same time in other threads.
            self._push((), paths.open_dir(root_fd, ()))
            return
        parent = paths.open_parent_dir(root_fd, parts)
        try:
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                self._emit(parts, st)
                self._push(parts, paths.open_dir(parent, parts[-1:]))
            elif stat.S_ISREG(st.st_mode):
                self._emit(parts, st)
            else:
                raise paths.UnsafePath("not a regular file or directory")
        finally:
            os.close(parent)

    def _push(self, parts: paths.Parts, fd: int) -> None:
        children = []
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    try:
                        children.append((entry.name, entry.stat(follow_symlinks=False)))
                    except OSError:
                        self.skipped += 1  # vanished while listing
        except BaseException:
            os.close(fd)
            raise
        children.sort(key=lambda c: c[0], reverse=True)  # popped from the end: ascending
        self._stack.append((parts, fd, children))

    def _emit(self, parts: paths.Parts, st: os.stat_result) -> None:
        kind = frames.KIND_DIR if stat.S_ISDIR(st.st_mode) else frames.KIND_FILE
        size = 0 if kind == frames.KIND_DIR else st.st_size
        name = paths.join_parts(parts).encode("utf-8")
        entry = frames.encode_entry(kind, st.st_mode, size, st.st_mtime_ns, name)
        self._pending.append(entry)
        self._pending_bytes += len(entry)
        self.count += 1

    def next_batch(self, max_bytes: int = 64 * 1024) -> bytes | None:
        """Encoded entries for one ENTRIES frame, or None when the walk is complete."""
        while self._stack and self._pending_bytes < max_bytes:
            parts, fd, children = self._stack[-1]
            if not children:
                self._stack.pop()
                os.close(fd)
                continue
            name, st = children.pop()
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                self.skipped += 1  # symlinks, FIFOs, sockets, devices: never listed
                continue
            try:
                # The whole path, so that the total-length limit holds too.
                child = paths.parse_wire_path(paths.join_parts(parts + (name,)))
            except paths.UnsafePath:
                self.skipped += 1  # not representable safely on the wire (or reserved)
                continue
            self._emit(child, st)
            if stat.S_ISDIR(st.st_mode):
                try:
                    self._push(child, paths.open_dir(fd, (name,)))
                except (OSError, paths.UnsafePath):
                    # Replaced by a link or removed since the scan: keep the entry, skip
                    # its contents rather than follow anything.
                    self.skipped += 1
        if not self._pending:
            return None
        batch = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        return batch

    def close(self) -> None:
        for _, fd, _ in self._stack:
            os.close(fd)
        self._stack.clear()
