"""Resumable big files: their partial data in the state directory, so that a transfer cut
by a restart of the mirror server resumes from its verified prefix (rsync's ``--partial``).

A file of at least `RESUME_MIN` bytes is received into ``STATE_DIR/partials/NAME`` rather
than beside its target. After each write its *checkpoint* is taken (in the disk thread that
wrote): the length written and the BLAKE3 digest of those bytes. The job registry records
checkpoints in the journal with its batched commits. Once complete and verified, the file is
renamed from there to its final name (on another file system, copied through a temporary
file beside the target and verified again): a final name still only ever holds a complete,
verified file.

After a restart, a recorded partial whose file has not changed at the source (same size and
mtime) is re-verified before reuse, never trusted: cut to its recorded length, re-hashed,
and compared with the recorded digest. Then only the rest is fetched (a FETCH from that
offset); the server's digest covers the bytes it sent, ours the prefix; the whole file is
checked against its size. A partial that fails any check is deleted and the file fetched
from zero. Partials are deleted when their file is placed or fails, and all those of a job
when it ends, whatever the outcome; the start-up sweep removes only the files no journal
record names.

Blocking, for the disk threads (except `ResumingReceiver`, on the reactor).
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
from collections.abc import Callable, Sequence

from mirror import hashing, paths
from mirror.mirror_server.content_client import FlowControl
from mirror.mirror_server.journal import Journal, PartialRecord
from mirror.mirror_server.receiver import FileReceiver
from mirror.mirror_server.store import (
    _FILE_MODE_BITS,
    MirrorStore,
    PartialFile,
    StoreError,
    _describe,
)
from mirror.threads import Threads
from mirror.wire import frames

#: Name of the partials' directory in the state directory.
PARTIALS_DIR = "partials"
#: Smallest file received resumably (smaller ones are cheap to fetch again).
RESUME_MIN = 4 << 20
#: Bytes read at once when re-verifying or copying a partial.
_CHUNK = 1 << 20

_names = itertools.count()
_tag = secrets.token_hex(4)


class PartialDir:
    """``STATE_DIR/partials``: created mode 0700 if missing; its files, by name."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, PARTIALS_DIR)
        os.makedirs(self.path, mode=0o700, exist_ok=True)

    def _dir_fd(self) -> int:
        return os.open(self.path, paths.DIR_FLAGS)

    def new_name(self, job_id: str, index: int) -> str:
        return f"{job_id}-{index}-{_tag}-{next(_names)}"

    def create(self, name: str, parts: paths.Parts, size: int, mtime_ns: int) -> StatePartial:
        """A new, empty partial for the file ``parts`` of ``size`` and ``mtime_ns``."""
        dir_fd = self._dir_fd()
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dir_fd)
        except OSError as e:
            os.close(dir_fd)
            raise StoreError(f"cannot create partial file: {_describe(e)}") from None
        return StatePartial(dir_fd, fd, name, parts, 0, hashing.new_hasher(), size, mtime_ns)

    def reopen(self, record: PartialRecord, parts: paths.Parts) -> StatePartial | None:
        """The recorded partial, cut to its recorded length and re-verified against its
        recorded digest; None (and the file removed) if it is missing, shorter, or differs."""
        dir_fd = self._dir_fd()
        fd = -1
        try:
            fd = os.open(record.name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            if os.fstat(fd).st_size < record.verified or record.verified > record.size:
                raise ValueError("shorter than recorded")
            os.ftruncate(fd, record.verified)
            hasher = hashing.new_hasher()
            done = 0
            while done < record.verified:
                chunk = os.pread(fd, min(_CHUNK, record.verified - done), done)
                if not chunk:
                    raise ValueError("ended early")
                hasher.update(chunk)
                done += len(chunk)
            if hasher.hexdigest() != record.digest:
                raise ValueError("digest differs from the recorded one")
            os.lseek(fd, record.verified, os.SEEK_SET)
        except (OSError, ValueError):
            if fd >= 0:
                os.close(fd)
            self._unlink(dir_fd, record.name)
            os.close(dir_fd)
            return None
        return StatePartial(dir_fd, fd, record.name, parts, record.verified, hasher,
                            record.size, record.mtime_ns)

    def remove(self, names: Sequence[str]) -> None:
        dir_fd = self._dir_fd()
        try:
            for name in names:
                self._unlink(dir_fd, name)
        finally:
            os.close(dir_fd)

    def sweep(self, keep: set[str]) -> int:
        """Remove the files no journal record names (left by a crash before a commit);
        returns how many. Those of this process (jobs started meanwhile) stay."""
        dir_fd = self._dir_fd()
        removed = 0
        mine = f"-{_tag}-"
        try:
            for name in os.listdir(dir_fd):
                if name not in keep and mine not in name:
                    self._unlink(dir_fd, name)
                    removed += 1
        finally:
            os.close(dir_fd)
        return removed

    @staticmethod
    def _unlink(dir_fd: int, name: str) -> None:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass


class StatePartial(PartialFile):
    """A big file being received into the partials' directory, maybe after a verified
    prefix of ``offset`` bytes; ``checkpoint`` is (length, hex digest) of what is written."""

    def __init__(self, dir_fd: int, fd: int, name: str, parts: paths.Parts, offset: int,
                 whole: hashing.Hasher, file_size: int, mtime_ns: int) -> None:
        # Not PartialFile.__init__: the file is already open, and not beside its target.
        self._dir_fd = dir_fd
        #: PartialFile.discard closes the directory (`PartialFile._release_dir`).
        self._owns_dir = True
        self._mode: int | None = None
        self._fd = fd
        self.parts = parts
        self.name = parts[-1]
        self.temp_name = name
        self.offset = offset
        self.file_size = file_size
        self.mtime_ns = mtime_ns
        #: The bytes of this fetch (the range from ``offset``): what the server's digest is of.
        self._hash = hashing.new_hasher() if offset else whole
        self._whole = whole
        self.size = 0
        self.checkpoint = (offset, whole.copy().hexdigest())
        self.store: MirrorStore | None = None

    @property
    def length(self) -> int:
        """Bytes in the file: the prefix and what was written since."""
        return self.offset + self.size

    def write(self, pieces: Sequence[bytes | memoryview]) -> None:
        super().write(pieces)
        if self._whole is not self._hash:
            for piece in pieces:
                self._whole.update(piece)
        # Taken here, in the thread that wrote, never while a write runs: the reactor only
        # reads the tuple.
        self.checkpoint = (self.length, self._whole.copy().hexdigest())

    def commit(self, header: frames.FileHeader, digest: bytes, sync_dir: bool = True) -> None:
        """Verify (this range against the server's digest, the whole against its size),
        set mode and mtime, fsync, and move into place (the target's directory is always
        synced after: ``sync_dir`` is for `PartialFile`'s callers that batch it)."""
        if self.size != header.size:
            raise StoreError(f"size mismatch: got {self.size} bytes, expected {header.size}")
        if self.length != header.file_size:
            raise StoreError(f"size mismatch: {self.length} bytes in all, expected "
                             f"{header.file_size}")
        if self._hash.digest() != digest:
            raise StoreError(f"{hashing.DIGEST_NAME} mismatch: the data does not match the "
                             "server's digest")
        assert self.store is not None, "the store places the file"
        try:
            os.fchmod(self._fd, header.mode & _FILE_MODE_BITS)
            os.utime(self._fd, ns=(header.mtime_ns, header.mtime_ns))
        except OSError as e:
            raise StoreError(f"cannot set attributes: {_describe(e)}") from None
        try:
            # Data and attributes on disk before the file takes its final name (--no-fsync:
            # nothing); `MirrorStore.adopt` syncs the directory after the rename.
            self.store.durability.file(self._fd)
        except OSError as e:
            raise StoreError(f"fsync failed: {_describe(e)}") from None
        fd, self._fd = self._fd, -1
        try:
            os.close(fd)
        except OSError as e:
            raise StoreError(f"close failed: {_describe(e)}") from None
        try:
            self.store.adopt(self._dir_fd, self.temp_name, self.parts)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise StoreError(f"cannot rename into place: {_describe(e)}") from None
            self._copy_into_place(header)  # (its commit tells the store's observer)
        else:
            self.store.file_placed(self.parts, self._whole.digest())
        self._release_dir()

    def _copy_into_place(self, header: frames.FileHeader) -> None:
        """Another file system: through a temporary file beside the target, verified again
        against the whole file's digest, then the partial goes."""
        assert self.store is not None
        src = os.open(self.temp_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                      dir_fd=self._dir_fd)
        copy = self.store.create(self.parts)
        try:
            done = 0
            while chunk := os.pread(src, _CHUNK, done):
                copy.write((chunk,))
                done += len(chunk)
            whole = frames.FileHeader(done, header.file_size, header.mtime_ns, header.mode)
            copy.commit(whole, self._whole.digest())
        except BaseException:
            copy.discard()
            raise
        finally:
            os.close(src)
        os.unlink(self.temp_name, dir_fd=self._dir_fd)


class ResumingReceiver(FileReceiver):
    """A `FileReceiver` into an open `StatePartial` (new, or a re-verified leftover): the
    fetch is of the range after its prefix, streamed whatever its size. Its ``received``
    starts at the prefix, which counts as progress."""

    def __init__(self, owner: JobPartials, key: tuple[int, str], partial: StatePartial,
                 store: MirrorStore, threads: Threads, on_bytes: Callable[[int], None]
                 ) -> None:
        super().__init__(store, partial.parts, threads, on_bytes)
        partial.store = store
        self._owner = owner
        self._key = key
        self._state_partial = partial
        self.received = partial.offset
        on_bytes(partial.offset)

    def head(self, header: frames.FileHeader, flow: FlowControl) -> None:
        self._flow = flow
        partial = self._state_partial
        if partial.offset and (header.file_size, header.mtime_ns) != (partial.file_size,
                                                                      partial.mtime_ns):
            # Changed at the source since the prefix was saved: never mixed with it.
            self._error = StoreError("changed since its partial transfer; fetched again")
            return
        partial.file_size, partial.mtime_ns = header.file_size, header.mtime_ns
        self._partial = partial

    async def commit(self, header: frames.FileHeader, digest: bytes) -> None:
        try:
            await super().commit(header, digest)
        finally:
            await self._end()

    async def discard(self) -> None:
        await super().discard()
        await self._end()

    async def _end(self) -> None:
        # A partial not handed to the writer yet (no FILE arrived) is removed here too.
        await self._threads.run(self._state_partial.discard)
        self._owner.ended(self._key)


class JobPartials:
    """The resumable transfers of one job: leftovers recorded before a restart, partials
    being written, their checkpoints for the journal."""

    def __init__(self, job_id: str, partial_dir: PartialDir, threads: Threads,
                 journal: Journal | None, leftovers: Sequence[PartialRecord] = ()) -> None:
        self.job_id = job_id
        self.dir = partial_dir
        self.threads = threads
        self.journal = journal
        self.leftovers = {(r.index, r.path): r for r in leftovers}
        self.active: dict[tuple[int, str], StatePartial] = {}
        #: What the journal has of each partial: its record as last saved.
        self._saved: dict[tuple[int, str], PartialRecord] = {
            (r.index, r.path): r for r in leftovers}
        #: Bytes of prefixes reused instead of fetched again (for the log).
        self.reused = 0
        #: Smallest file received resumably.
        self.min_size = RESUME_MIN

    async def open(self, index: int, parts: paths.Parts, size: int, store: MirrorStore,
                   on_bytes: Callable[[int], None]) -> tuple[FileReceiver, int]:
        """A receiver for ``parts``, and the offset to fetch from: after the verified prefix
        of a leftover of this file, or 0."""
        key = (index, paths.join_parts(parts))
        record = self.leftovers.pop(key, None)
        partial = None
        if record is not None:
            if record.size == size:
                partial = await self.threads.run(self.dir.reopen, record, parts)
            else:
                await self.threads.run(self.dir.remove, [record.name])
            if partial is None:
                self._forget(key)
            else:
                self.reused += partial.offset
        if partial is None:
            name = self.dir.new_name(self.job_id, index)
            partial = await self.threads.run(self.dir.create, name, parts, size, 0)
        self.active[key] = partial
        return (ResumingReceiver(self, key, partial, store, self.threads, on_bytes),
                partial.offset)

    def ended(self, key: tuple[int, str]) -> None:
        """The partial of ``key`` was placed or discarded: the journal forgets it."""
        self.active.pop(key, None)
        self._forget(key)

    def _forget(self, key: tuple[int, str]) -> None:
        if self._saved.pop(key, None) is not None and self.journal is not None:
            self.journal.partial_gone(self.job_id, *key)

    def save_checkpoints(self) -> None:
        """Tell the journal the checkpoints that moved since the last call."""
        if self.journal is None:
            return
        for key, partial in list(self.active.items()):
            verified, digest = partial.checkpoint
            saved = self._saved.get(key)
            if saved is not None and saved.verified == verified:
                continue
            if not verified:
                continue  # nothing to resume from yet
            record = PartialRecord(key[0], key[1], partial.temp_name, partial.file_size,
                                   partial.mtime_ns, verified, digest)
            self._saved[key] = record
            self.journal.partial_saved(self.job_id, record)

    async def close(self) -> None:
        """The job ended: every partial of it goes, used or not, whatever the outcome."""
        names = [r.name for r in self.leftovers.values()]
        names += [p.temp_name for p in self.active.values()]
        self.leftovers.clear()
        self.active.clear()
        for key in list(self._saved):
            self._forget(key)
        if names:
            await self.threads.run(self.dir.remove, names)


