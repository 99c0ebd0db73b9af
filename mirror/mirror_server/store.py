"""The mirror store: where fetched files land, atomically and verified.

Everything here is blocking and runs in the disk thread pool. A file is written to a
temporary name (`paths.TEMP_PREFIX` + random) in its final directory, its size and BLAKE3
are checked, its mode and mtime are set, and only then is it renamed over the final name: a
final name holds the complete old version or the complete new one, never a partial file. On
any failure the temporary file is removed.

Every local path is reached through `mirror.paths` (component by component, no symlink
followed) under the store's root, ``MIRROR_DIR/HOST_PORT``.
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import stat
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from mirror import hashing, paths
from mirror.wire import frames

#: Permission bits a mirrored file may get: the source's, without set-user-ID and
#: set-group-ID. A content server is not trusted to plant setuid executables owned by the
#: mirror's user (often root).
_FILE_MODE_BITS = 0o1777


class StoreError(Exception):
    """Writing a file failed; the message is for users (no traceback)."""


def _describe(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on device"
    if e.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return e.strerror or str(e)


#: Directory descriptors kept open for reuse by all the stores of one mirror service (a
#: job has one store per source, and jobs run at once): beyond this, directories are opened
#: per use. A per-store limit alone let four sources of 300 directories hold 1,024
#: descriptors, the usual ``ulimit -n``, and every later file failed with "Too many open
#: files".
MAX_CACHED_DIRS_TOTAL = 256


class DescriptorBudget:
    """How many directory descriptors the stores sharing it may keep open for reuse.

    The mirror service owns one and hands it to each of its stores; stores call it from the
    disk threads, hence the lock.
    """

    def __init__(self, limit: int = MAX_CACHED_DIRS_TOTAL) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._used = 0

    @property
    def used(self) -> int:
        """Descriptors cached now by the stores sharing this budget."""
        return self._used

    def take(self) -> bool:
        """One more descriptor may be kept (True, and counted), or not (False)."""
        with self._lock:
            if self._used >= self.limit:
                return False
            self._used += 1
            return True

    def give_back(self, n: int) -> None:
        """``n`` cached descriptors were closed."""
        with self._lock:
            self._used -= n


class MirrorStore:
    """Files of one content server under ``base_dir/top`` (``top`` = ``HOST_PORT``).

    Directory descriptors it keeps open for reuse count against ``budget``, shared with the
    other stores of the same service.
    """

    def __init__(self, base_dir: str, top: str, budget: DescriptorBudget) -> None:
        if len(paths.parse_wire_path(top)) != 1:
            raise paths.UnsafePath(f"{top!r} is not a single path component")
        base = os.open(base_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.root_fd = paths.open_or_make_dir(base, (top,), mode=0o755)
        finally:
            os.close(base)
        self.budget = budget
        self._dirs: dict[paths.Parts, int] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            for fd in self._dirs.values():
                os.close(fd)
            self.budget.give_back(len(self._dirs))
            self._dirs.clear()
        os.close(self.root_fd)

    @contextmanager
    def _dir(self, parts: paths.Parts, create: bool = True) -> Iterator[int]:
        if not parts:
            yield self.root_fd
            return
        with self._lock:
            fd = self._dirs.get(parts)
        if fd is not None:
            yield fd
            return
        fd = (paths.open_or_make_dir(self.root_fd, parts, mode=0o700) if create
              else paths.open_dir(self.root_fd, parts))
        with self._lock:
            cached = parts not in self._dirs and self.budget.take()
            if cached:
                self._dirs[parts] = fd
        try:
            yield fd
        finally:
            if not cached:
                os.close(fd)

    def make_dir(self, parts: paths.Parts) -> None:
        """Create the directory ``parts`` (and its parents) if missing."""
        try:
            with self._dir(parts):
                pass
        except OSError as e:
            raise StoreError(f"cannot create directory: {_describe(e)}") from None

    def is_current(self, parts: paths.Parts, size: int, mtime_ns: int) -> bool:
        """The quick check: a regular file with this size and mtime is already in place."""
        try:
            with self._dir(parts[:-1], create=False) as fd:
                st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except (OSError, paths.UnsafePath):
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == size and st.st_mtime_ns == mtime_ns

    def set_dir_meta(self, parts: paths.Parts, mode: int, mtime_ns: int) -> None:
        """Give a directory the source's mode and mtime (after its contents are written).

        The owner keeps rwx whatever the source says: a read-only (0o555) or closed (0o000)
        source directory would otherwise make every later update inside it fail (for a
        non-root daemon) and hide its temporary files from the start-up sweep.
        """
        try:
            with self._dir(parts, create=False) as fd:
                os.fchmod(fd, (mode & 0o7777) | 0o700)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
        except OSError as e:
            raise StoreError(f"cannot set directory attributes: {_describe(e)}") from None

    def create(self, parts: paths.Parts) -> PartialFile:
        """A new temporary file beside ``parts``, to be committed or discarded."""
        try:
            with self._dir(parts[:-1]) as dir_fd:
                return PartialFile(self, parts, os.dup(dir_fd))
        except OSError as e:
            raise StoreError(f"cannot create temporary file: {_describe(e)}") from None
        except paths.UnsafePath as e:
            # A parent in the mirror is a file or a symlink (planted, or left by an earlier
            # job): refused, never followed, and reported like any other store failure.
            raise StoreError(f"cannot create temporary file: {e}") from None

    def write_whole(self, parts: paths.Parts, data: bytes | memoryview,
                    header: frames.FileHeader, digest: bytes) -> None:
        """Write, verify and place a small file in one call (one thread hop)."""
        partial = self.create(parts)
        try:
            partial.write((data,))
            partial.commit(header, digest)
        except BaseException:
            partial.discard()
            raise

    def write_many(self, files: Sequence[tuple[paths.Parts, frames.BundleItem]]
                   ) -> list[str | None]:
        """`write_whole` for each file of a bundle answer, in one call (one thread hop for
        a bundle of small files): per file None once it is in place, or why not."""
        problems: list[str | None] = []
        for parts, item in files:
            header = item.header
            try:
                if header is None:
                    raise StoreError(item.error or "no file in the answer")
                self.write_whole(parts, item.data, header, item.digest)
            except StoreError as e:
                problems.append(str(e))
            except OSError as e:
                problems.append(_describe(e))
            else:
                problems.append(None)
        return problems


_temp_names = itertools.count()
_temp_tag = secrets.token_hex(4)


def _temp_name() -> str:
    """A fresh temporary name; O_EXCL on creation makes any collision an error, not a clobber.

    A random tag per process plus a counter: ``secrets`` per file cost more than the write.
    """
    return f"{paths.TEMP_PREFIX}{os.getpid()}-{_temp_tag}-{next(_temp_names)}"


class PartialFile:
    """A temporary file being filled; `commit` verifies and renames it into place."""

    def __init__(self, store: MirrorStore, parts: paths.Parts, dir_fd: int) -> None:
        self._dir_fd = dir_fd
        self.parts = parts
        self.name = parts[-1]
        self.temp_name = _temp_name()
        self._hash = hashing.new_hasher()
        self.size = 0
        try:
            self._fd = os.open(
                self.temp_name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dir_fd,
            )
        except BaseException:
            os.close(dir_fd)
            raise

    def write(self, pieces: Sequence[bytes | memoryview]) -> None:
        """Append ``pieces``; a big batch is hashed in another thread during the write."""
        hashed = hashing.update_beside(self._hash, pieces)
        try:
            for piece in pieces:
                view = memoryview(piece)
                while view:
                    view = view[os.write(self._fd, view):]
                self.size += len(piece)
        except OSError as e:
            raise StoreError(f"write failed: {_describe(e)}") from None
        finally:
            # Waited for whatever happened: the next write (or a commit) uses the hasher.
            hashed()

    def commit(self, header: frames.FileHeader, digest: bytes) -> None:
        """Verify size and digest, set mode and mtime, rename over the final name."""
        if self.size != header.size:
            raise StoreError(f"size mismatch: got {self.size} bytes, expected {header.size}")
        if self._hash.digest() != digest:
            raise StoreError(f"{hashing.DIGEST_NAME} mismatch: the data does not match the "
                             "server's digest")
        fd, self._fd = self._fd, -1
        try:
            os.fchmod(fd, header.mode & _FILE_MODE_BITS)
            os.utime(fd, ns=(header.mtime_ns, header.mtime_ns))
        except OSError as e:
            os.close(fd)
            raise StoreError(f"cannot set attributes: {_describe(e)}") from None
        try:
            # close() reports delayed write errors (NFS, some full filesystems).
            os.close(fd)
        except OSError as e:
            raise StoreError(f"close failed: {_describe(e)}") from None
        try:
            os.rename(self.temp_name, self.name, src_dir_fd=self._dir_fd,
                      dst_dir_fd=self._dir_fd)
        except IsADirectoryError:
            raise StoreError("a directory is in the way of the file") from None
        except OSError as e:
            raise StoreError(f"cannot rename into place: {_describe(e)}") from None
        os.close(self._dir_fd)
        self._dir_fd = -1

    def discard(self) -> None:
        """Remove the temporary file; safe to call after a failed commit, or twice."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._dir_fd >= 0:
            try:
                os.unlink(self.temp_name, dir_fd=self._dir_fd)
            except FileNotFoundError:
                pass
            os.close(self._dir_fd)
            self._dir_fd = -1




def _sweep_dir(fd: int) -> tuple[int, list[str]]:
    """Remove the temporaries directly in ``fd``; return how many, and its subdirectories."""
    removed = 0
    subdirs = []
    with os.scandir(fd) as it:
        for entry in it:
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.name)
                elif (entry.name.startswith(paths.TEMP_PREFIX)
                      and (entry.is_file(follow_symlinks=False) or entry.is_symlink())):
                    # A link is removed as a link (unlinkat never follows it): a link
                    # being placed is made under a temporary name too.
                    os.unlink(entry.name, dir_fd=fd)
                    removed += 1
            except OSError:
                pass
    return removed, subdirs


class SweepStopped(Exception):
    """The sweep climbed back into a directory that is not the one it came down from."""

    def __init__(self, message: str, removed: int) -> None:
        super().__init__(message)
        #: Temporary files removed before it stopped.
        self.removed = removed


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def sweep_temporaries(base_dir: str) -> int:
    """Remove temporary files left by a mirror server that was killed; returns how many.

    Walks without following symlinks; only regular files with the reserved prefix go. The
    walk is iterative and holds one directory open at a time, entering children by name
    (``O_NOFOLLOW``) and leaving through ``..``: a legal wire path is up to 2,048 directories
    deep, too deep for ``os.fwalk`` (one recursion and one open descriptor per level) and
    for full path names (``PATH_MAX``).

    Hazard: ``..`` is wherever the directory is *now*. If one the walk is inside is renamed
    out of ``base_dir`` meanwhile, climbing would lead outside and sweep directories there
    that happen to bear the names still to visit. So each level's (st_dev, st_ino) is
    recorded on the way down (a few bytes a level, not a descriptor) and checked after each
    climb; on a mismatch the sweep raises `SweepStopped` (the rest waits for the next
    start). Until that climb it may still finish the subdirectories, listed while inside
    ``base_dir``, of directories that moved along with it.
    """
    fd = os.open(base_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        removed, subdirs = _sweep_dir(fd)
        # Per level: the directory's identity, and its subdirectories still to visit.
        pending = [(_identity(fd), subdirs)]
        while pending:
            if not pending[-1][1]:
                pending.pop()
                if pending:
                    parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                                     dir_fd=fd)
                    os.close(fd)
                    fd = parent
                    if _identity(fd) != pending[-1][0]:
                        raise SweepStopped(
                            f"sweeping temporary files in {base_dir} stopped: a directory "
                            f"was moved while the sweep was inside it (removed {removed} "
                            f"files before)", removed)
                continue
            try:
                child = os.open(pending[-1][1].pop(), paths.DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue  # gone, or replaced by a link, since it was listed
            os.close(fd)
            fd = child
            identity = _identity(fd)
            try:
                n, subdirs = _sweep_dir(fd)
            except OSError:
                n, subdirs = 0, []
            removed += n
            pending.append((identity, subdirs))
    finally:
        os.close(fd)
    return removed
