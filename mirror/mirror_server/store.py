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
from typing import TYPE_CHECKING

from mirror import hashing, paths
from mirror.mirror_server.durable import Durability
from mirror.wire import frames

if TYPE_CHECKING:
    from mirror.mirror_server.placement import PlacementObserver

#: Permission bits a mirrored file may get: the source's, without set-user-ID and
#: set-group-ID. A content server is not trusted to plant setuid executables owned by the
#: mirror's user (often root).
_FILE_MODE_BITS = 0o1777


def quick_check(st: os.stat_result, size: int, mtime_ns: int) -> bool:
    """rsync's quick check: ``st`` is a regular file of this size and mtime."""
    return stat.S_ISREG(st.st_mode) and st.st_size == size and st.st_mtime_ns == mtime_ns


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
    other stores of the same service. ``durability`` says whether commits are fsynced
    (`mirror.mirror_server.durable`; by default they are).
    """

    def __init__(self, base_dir: str, top: str, budget: DescriptorBudget,
                 durability: Durability | None = None, *, create: bool = True,
                 observer: PlacementObserver | None = None) -> None:
        if len(paths.parse_wire_path(top)) != 1:
            raise paths.UnsafePath(f"{top!r} is not a single path component")
        base = os.open(base_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # create=False (a dry run): FileNotFoundError if ``top`` is missing.
            self.root_fd = (paths.open_or_make_dir(base, (top,), mode=0o755) if create
                            else paths.open_dir(base, (top,)))
        finally:
            os.close(base)
        self.budget = budget
        #: Read once: daemons do not change their umask while running, and reading it per
        #: bundle cost more than the ``fchmod`` it saves.
        self.umask = process_umask()
        self.durability = durability if durability is not None else Durability()
        self._dirs: dict[paths.Parts, int] = {}
        self._lock = threading.Lock()
        self.top = top
        #: Told of each file placed or removed (`mirror.mirror_server.placement`).
        self.observer = observer

    def file_placed(self, parts: paths.Parts, digest: bytes, dir_fd: int | None = None
                    ) -> None:
        """A verified file took its final name ``parts`` (in ``dir_fd``, if given): tell
        the observer, with its stat after the rename (its ctime as a later walk sees it)."""
        if self.observer is None:
            return
        try:
            st = (os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
                  if dir_fd is not None else self.lstat(parts))
        except OSError:
            return  # already replaced or removed by someone else: nothing to tell
        if st is not None and stat.S_ISREG(st.st_mode):
            self.observer.placed(self.top, parts, st, digest)

    def file_removed(self, parts: paths.Parts) -> None:
        """The file at ``parts`` was removed (--delete): tell the observer."""
        if self.observer is not None:
            self.observer.removed(self.top, parts)

    def close(self) -> None:
        with self._lock:
            for fd in self._dirs.values():
                os.close(fd)
            self.budget.give_back(len(self._dirs))
            self._dirs.clear()
        os.close(self.root_fd)

    @contextmanager
    def _dir(self, parts: paths.Parts, create: bool = True) -> Iterator[int]:
        fd, borrowed = self._open_dir(parts, create)
        try:
            yield fd
        finally:
            if not borrowed:
                os.close(fd)

    def _open_dir(self, parts: paths.Parts, create: bool = True) -> tuple[int, bool]:
        """A descriptor of the directory ``parts`` and whether it is borrowed (cached, or
        the root: not to be closed); `_dir` is the safe form, this the fast one for the
        per-file path."""
        if not parts:
            return self.root_fd, True
        # A dict read needs no lock (atomic under the GIL); writes take it.
        fd = self._dirs.get(parts)
        if fd is not None:
            return fd, True
        fd = (paths.open_or_make_dir(self.root_fd, parts, mode=0o700) if create
              else paths.open_dir(self.root_fd, parts))
        with self._lock:
            cached = parts not in self._dirs and self.budget.take()
            if cached:
                self._dirs[parts] = fd
        return fd, cached

    def make_dir(self, parts: paths.Parts) -> bool:
        """Create the directory ``parts`` (and its parents) if missing; True if this call
        made it (it was empty then: the job need not quick-check the files listed in it)."""
        try:
            made = False
            if parts:
                with self._dir(parts[:-1]) as parent:
                    try:
                        os.mkdir(parts[-1], 0o700, dir_fd=parent)
                        made = True
                    except FileExistsError:
                        pass  # whatever it is, the open below checks it
            with self._dir(parts):
                pass
            return made
        except OSError as e:
            raise StoreError(f"cannot create directory: {_describe(e)}") from None

    def is_current(self, parts: paths.Parts, size: int, mtime_ns: int) -> bool:
        """The quick check: a regular file with this size and mtime is already in place."""
        st = self.lstat(parts) if parts else None
        return st is not None and quick_check(st, size, mtime_ns)

    def lstat(self, parts: paths.Parts) -> os.stat_result | None:
        """What is at ``parts`` now, a link not followed; None if nothing is there (or a
        parent is not a directory)."""
        if not parts:
            return os.fstat(self.root_fd)
        try:
            with self._dir(parts[:-1], create=False) as fd:
                return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except (OSError, paths.UnsafePath):
            return None

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

    def adopt(self, src_dir_fd: int, src_name: str, parts: paths.Parts) -> None:
        """Rename a complete, verified file from another directory (the state directory's
        partials, `mirror.mirror_server.partials`) over the final name ``parts``.

        Raises `StoreError`, or the `OSError` EXDEV when the two are on different file
        systems (the caller then copies)."""
        try:
            with self._dir(parts[:-1]) as fd:
                os.rename(src_name, parts[-1], src_dir_fd=src_dir_fd, dst_dir_fd=fd)
                try:
                    self.durability.directory(fd)  # the rename on disk
                except OSError as e:
                    raise StoreError(f"cannot sync the directory: {_describe(e)}") from None
        except IsADirectoryError:
            raise StoreError("a directory is in the way of the file") from None
        except paths.UnsafePath as e:
            raise StoreError(f"cannot rename into place: {e}") from None
        except OSError as e:
            if e.errno == errno.EXDEV:
                raise
            raise StoreError(f"cannot rename into place: {_describe(e)}") from None

    def write_whole(self, parts: paths.Parts, data: bytes | memoryview,
                    header: frames.FileHeader, digest: bytes, umask: int | None = None,
                    sync_dir: bool = True) -> None:
        """Write, verify and place a small file in one call (one thread hop); without
        ``sync_dir`` the caller syncs its directory (`write_many`).

        The temporary file borrows the directory's descriptor (no ``dup`` per file: it is
        done with before the directory can be closed). Given the process's ``umask``
        (`process_umask`), a file whose mode it leaves intact is created with that mode: no
        ``fchmod``."""
        try:
            dir_fd, borrowed = self._open_dir(parts[:-1])
            try:
                partial = PartialFile(self, parts, dir_fd, owns_dir=False,
                                      mode=_exact_mode(header.mode, umask))
                try:
                    partial.write((data,))
                    partial.commit(header, digest, sync_dir)
                except BaseException:
                    partial.discard()
                    raise
            finally:
                if not borrowed:
                    os.close(dir_fd)
        except OSError as e:
            raise StoreError(f"cannot create temporary file: {_describe(e)}") from None
        except paths.UnsafePath as e:
            raise StoreError(f"cannot create temporary file: {e}") from None

    def write_many(self, files: Sequence[tuple[paths.Parts, frames.BundleItem]]
                   ) -> list[str | None]:
        """`write_whole` for each file of a bundle answer, in one call (one thread hop for
        a bundle of small files): per file None once it is in place, or why not.

        Each directory is synced once, after all its files of the bundle are renamed into
        it: a file counts as placed only then."""
        problems: list[str | None] = []
        umask = self.umask
        placed: dict[paths.Parts, list[int]] = {}
        for parts, item in files:
            header = item.header
            try:
                if header is None:
                    raise StoreError(item.error or "no file in the answer")
                self.write_whole(parts, item.data, header, item.digest, umask, sync_dir=False)
            except StoreError as e:
                problems.append(str(e))
            except OSError as e:
                problems.append(_describe(e))
            else:
                placed.setdefault(parts[:-1], []).append(len(problems))
                problems.append(None)
        if self.durability.enabled:
            for parent, indexes in placed.items():
                problem = self._sync_dir(parent)
                for i in indexes:
                    problems[i] = problem
        return problems

    def _sync_dir(self, parts: paths.Parts) -> str | None:
        """Sync the directory ``parts``; None, or why it failed."""
        try:
            with self._dir(parts, create=False) as fd:
                self.durability.directory(fd)
        except (OSError, paths.UnsafePath) as e:
            why = _describe(e) if isinstance(e, OSError) else str(e)
            return f"cannot sync the directory: {why}"
        return None


def _exact_mode(mode: int, umask: int | None) -> int | None:
    """``mode`` if a file created with it under ``umask`` gets exactly it (the umask takes
    nothing, no special bits, owner-writable); None if unknown or not."""
    mode &= _FILE_MODE_BITS
    if umask is None or mode & (umask | 0o7000) or not mode & 0o200:
        return None
    return mode


_temp_names = itertools.count()


def _new_temp_tag() -> str:
    return f"{paths.TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-"


_temp_tag = _new_temp_tag()


def _after_fork() -> None:
    global _temp_tag
    _temp_tag = _new_temp_tag()


os.register_at_fork(after_in_child=_after_fork)


def _temp_name() -> str:
    """A fresh temporary name; O_EXCL on creation makes any collision an error, not a clobber.

    The process id and a random tag (made once per process: ``secrets`` or ``getpid`` per
    file cost as much as a write), plus a counter.
    """
    return f"{_temp_tag}{next(_temp_names)}"


def process_umask() -> int | None:
    """The process's umask, read without changing it (``os.umask`` would, for every
    thread at once); None where ``/proc`` does not say."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


class PartialFile:
    """A temporary file being filled; `commit` verifies and renames it into place."""

    def __init__(self, store: MirrorStore, parts: paths.Parts, dir_fd: int,
                 owns_dir: bool = True, mode: int | None = None) -> None:
        #: Closed with the file unless borrowed (``owns_dir`` false: the caller keeps it
        #: open until this file is committed or discarded).
        self._owns_dir = owns_dir
        self._dir_fd = dir_fd
        self.parts = parts
        self.name = parts[-1]
        self._durability = store.durability
        self._store = store
        self.temp_name = _temp_name()
        self._hash = hashing.new_hasher()
        self.size = 0
        #: The mode the file was created with, when known to be exact (see
        #: `_exact_mode`); otherwise 0o600 and `commit` sets the mode.
        self._mode = mode
        try:
            self._fd = os.open(
                self.temp_name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600 if mode is None else mode,
                dir_fd=dir_fd,
            )
        except BaseException:
            if owns_dir:
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

    def write_at(self, offset: int, pieces: Sequence[bytes | memoryview]) -> None:
        """Write ``pieces`` one after the other from ``offset`` (multi-source: chunks arrive
        out of order). Not hashed here: see `hashed_by`."""
        try:
            for piece in pieces:
                view = memoryview(piece)
                while view:
                    n = os.pwrite(self._fd, view, offset)
                    view, offset = view[n:], offset + n
        except OSError as e:
            raise StoreError(f"write failed: {_describe(e)}") from None

    def read_at(self, offset: int, length: int) -> bytes:
        """Bytes written at ``offset`` (read back through a descriptor of its own: the
        file is open write-only)."""
        try:
            fd = os.open(self.temp_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=self._dir_fd)
            try:
                return os.pread(fd, length, offset)
            finally:
                os.close(fd)
        except OSError as e:
            raise StoreError(f"cannot read back the file: {_describe(e)}") from None

    def hashed_by(self, hasher: hashing.Hasher, size: int) -> None:
        """The caller wrote ``size`` bytes with `write_at` and hashed them, in file order,
        into ``hasher``: `commit` checks that digest, as for a file written in order."""
        self._hash = hasher
        self.size = size

    def commit(self, header: frames.FileHeader, digest: bytes, sync_dir: bool = True) -> None:
        """Verify size and digest, set mode and mtime, fsync, rename over the final name,
        fsync the directory (unless ``sync_dir`` is False: the caller does it)."""
        if self.size != header.size:
            raise StoreError(f"size mismatch: got {self.size} bytes, expected {header.size}")
        if self._hash.digest() != digest:
            raise StoreError(f"{hashing.DIGEST_NAME} mismatch: the data does not match the "
                             "server's digest")
        fd, self._fd = self._fd, -1
        try:
            if header.mode & _FILE_MODE_BITS != self._mode:
                os.fchmod(fd, header.mode & _FILE_MODE_BITS)
            os.utime(fd, ns=(header.mtime_ns, header.mtime_ns))
        except OSError as e:
            os.close(fd)
            raise StoreError(f"cannot set attributes: {_describe(e)}") from None
        try:
            self._durability.file(fd)  # data and attributes on disk before the rename
        except OSError as e:
            os.close(fd)
            raise StoreError(f"fsync failed: {_describe(e)}") from None
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
        # At its final name now (served by --serve): the observer hears of it.
        self._store.file_placed(self.parts, digest, self._dir_fd)
        try:
            if sync_dir:
                self._durability.directory(self._dir_fd)  # the rename on disk
        except OSError as e:
            raise StoreError(f"cannot sync the directory: {_describe(e)}") from None
        finally:
            self._release_dir()

    def _release_dir(self) -> None:
        if self._owns_dir:
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
            self._release_dir()




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
