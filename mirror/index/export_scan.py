"""What a node exports, as the index should know it: a walk of the tree under a root
descriptor, and the hashing of one file (both run in worker threads).

The walk follows the content server's rules (`mirror.content_server.listing`): directories
and regular files only, no link followed, names that are not valid wire paths and reserved
names (`mirror.paths.is_reserved_name`) skipped, each directory opened relative to its parent
with ``O_NOFOLLOW``.
"""

from __future__ import annotations

import os
import stat

from mirror import paths
from mirror.hashing import new_hasher
from mirror.index.digest_store import StatKey, stat_key

#: What the walk finds: wire path -> stat key (device, inode, size, mtime_ns, ctime_ns).
Snapshot = dict[str, StatKey]


def scan(root_fd: int, limit: int) -> Snapshot:
    """Every regular file under ``root_fd`` (at most ``limit``; more are left out)."""
    found: Snapshot = {}
    stack: list[tuple[int, str]] = [(os.dup(root_fd), "")]
    try:
        while stack:
            fd, prefix = stack.pop()
            try:
                with os.scandir(fd) as entries:
                    listed = list(entries)
            except OSError:
                os.close(fd)
                continue
            for entry in sorted(listed, key=lambda e: e.name):
                name = entry.name
                wire = f"{prefix}{name}"
                try:
                    paths.parse_wire_path(wire)
                    st = entry.stat(follow_symlinks=False)
                except (paths.UnsafePath, OSError):
                    continue
                if stat.S_ISREG(st.st_mode):
                    if len(found) < limit:
                        found[wire] = stat_key(st)
                elif stat.S_ISDIR(st.st_mode):
                    try:
                        child = os.open(name, paths.DIR_FLAGS, dir_fd=fd)
                    except OSError:
                        continue
                    stack.append((child, wire + "/"))
            os.close(fd)
    finally:
        for fd, _ in stack:
            os.close(fd)
    return found


class Hashing:
    """One file being hashed, piece by piece (so a rate limit can pause between pieces)."""

    def __init__(self, root_fd: int, path: str, expected: StatKey) -> None:
        self.fd, st = paths.open_regular_file(root_fd, paths.parse_wire_path(path))
        self.key = stat_key(st)
        self.expected = expected
        self.hasher = new_hasher()
        self.done = False

    def step(self, size: int) -> int:
        """Hash up to ``size`` more bytes; the number hashed (0: end of file)."""
        data = os.read(self.fd, size)
        self.hasher.update(data)
        return len(data)

    def finish(self) -> str | None:
        """The digest, if the file was not changed while it was hashed (else None)."""
        try:
            unchanged = stat_key(os.fstat(self.fd)) == self.key == self.expected
        finally:
            self.close()
        return self.hasher.hexdigest() if unchanged else None

    def close(self) -> None:
        if not self.done:
            self.done = True
            os.close(self.fd)
