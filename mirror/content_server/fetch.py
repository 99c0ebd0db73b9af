"""FETCH: reading a file range, hashing it while it is read, and noticing changes.

`RangeReader` is blocking and runs in the disk thread pool: it reads with ``pread`` and hashes
in the same thread call (BLAKE3 releases the GIL on large buffers), so the reactor only moves
finished chunks to the socket.

Hashing is a large part of what serving a large file costs (bench/NOTES.md), so the digest
(`mirror.hashing`) of a whole file is remembered in a `DigestCache`,
keyed on what any write to the file changes: device, inode, size, mtime and ctime (ctime
cannot be set by users). A file served again unchanged is then read without hashing. The
receiver verifies every byte against the digest either way; a file whose bytes changed
underneath an unchanged key (disk corruption) then fails verification instead of being
delivered with a digest computed from the corrupted bytes.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from mirror import hashing, paths
from mirror.wire import frames
from mirror.wire.chunk_hashes import ChunkHashes

CHUNK_SIZE = 256 * 1024
#: Chunk of a streamed range while few streams share the connection: each chunk costs a
#: thread hop and a Deferred, and a big file then needs a quarter as many (bench/NOTES.md,
#: "Big files"). The content server falls back to `CHUNK_SIZE` when many streams share one
#: connection, so that a client holding them all pins at most about one chunk each.
BIG_CHUNK_SIZE = 1 << 20


class FileChanged(Exception):
    """The file was modified or truncated while it was being sent."""


StatKey = tuple[int, int, int, int, int]
#: Chunk hashes the cache of HASHES answers holds in all (32 bytes each: 32 MiB).
MAX_CACHED_HASHES = 1 << 20


def _stat_key(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class DigestCache:
    """Digests of whole files, by `_stat_key`; least recently used ones go first.

    Shared by the disk threads, hence the lock.
    """

    def __init__(self, max_entries: int = 65536) -> None:
        self.max_entries = max_entries
        self._digests: OrderedDict[StatKey, bytes] = OrderedDict()
        self._lock = threading.Lock()
        #: Lookups that found a digest, and those that did not (for /metrics).
        self.hits = 0
        self.misses = 0
        #: HASHES answers, on the same keys (content_server/hashes.py).
        self.chunks = ChunkHashCache()

    def __len__(self) -> int:
        return len(self._digests)

    def get(self, key: StatKey) -> bytes | None:
        with self._lock:
            digest = self._digests.get(key)
            if digest is not None:
                self.hits += 1
                self._digests.move_to_end(key)
            else:
                self.misses += 1
            return digest

    def put(self, key: StatKey, digest: bytes) -> None:
        with self._lock:
            self._digests[key] = digest
            self._digests.move_to_end(key)
            while len(self._digests) > self.max_entries:
                self._digests.popitem(last=False)


class ChunkHashCache:
    """`ChunkHashes` by stat key, least recently used first out; at most ``max_hashes``
    hashes in all. Shared by the disk threads, hence the lock."""

    def __init__(self, max_hashes: int = MAX_CACHED_HASHES) -> None:
        self.max_hashes = max_hashes
        self._entries: OrderedDict[StatKey, ChunkHashes] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: StatKey) -> ChunkHashes | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def chunk_hash(self, key: StatKey, offset: int, size: int) -> bytes | None:
        """The cached hash of the range ``[offset, offset+size)`` of the file ``key`` if that
        range is one of its HASHES chunks: a FETCH of it then needs no hashing."""
        with self._lock:
            found = self._entries.get(key)
        if found is None or offset % found.chunk_size:
            return None
        index = offset // found.chunk_size
        if index >= found.count or found.chunk_range(index) != (offset, size):
            return None
        return found.hashes[index]

    def put(self, key: StatKey, value: ChunkHashes) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._held -= old.count
            self._entries[key] = value
            self._held += value.count
            while self._held > self.max_hashes and len(self._entries) > 1:
                _, dropped = self._entries.popitem(last=False)
                self._held -= dropped.count



class RangeReader:
    """Reads ``[offset, offset+length)`` of a regular file under the root, hashing as it goes."""

    def __init__(self, root_fd: int, parts: paths.Parts, offset: int, length: int,
                 cache: DigestCache | None = None, parent_fd: int | None = None) -> None:
        # Given ``parent_fd`` (the directory holding ``parts``, opened by the caller for
        # many files), only the last component is opened.
        self._fd, st = (paths.open_regular_file(root_fd, parts) if parent_fd is None
                        else paths.open_regular_file_at(parent_fd, parts[-1]))
        self._stat = st
        if offset > st.st_size:
            os.close(self._fd)
            raise ValueError(f"offset {offset} beyond the end of the file ({st.st_size} bytes)")
        self.size = min(length, st.st_size - offset)
        self._pos = offset
        self._left = self.size
        # Only whole files are cached: a range's digest is of that range.
        self._cache = cache if offset == 0 and self.size == st.st_size else None
        self._cached = self._cache.get(_stat_key(st)) if self._cache is not None else None
        if self._cache is None and cache is not None:
            # A range that is a HASHES chunk of the file (multi-source download): its
            # hash is known, as a whole file's digest may be.
            self._cached = cache.chunks.chunk_hash(_stat_key(st), offset, self.size)
        self._hash = hashing.new_hasher() if self._cached is None else None

    @property
    def header(self) -> frames.FileHeader:
        st = self._stat
        return frames.FileHeader(self.size, st.st_size, st.st_mtime_ns, st.st_mode & 0o7777)

    @property
    def done(self) -> bool:
        return self._left == 0

    def read(self, max_bytes: int = CHUNK_SIZE) -> bytes:
        """The next chunk, hashed; raises `FileChanged` if the file ends early."""
        want = min(max_bytes, self._left)
        data = os.pread(self._fd, want, self._pos)
        if len(data) < want:
            raise FileChanged("file was truncated while being sent")
        if self._hash is not None:
            self._hash.update(data)
        self._pos += want
        self._left -= want
        return data

    def read_next(self, max_bytes: int = CHUNK_SIZE) -> tuple[bytes, bytes | None]:
        """The next chunk, and with the last one the digest (`finish`): a stream's last
        chunk and its check share one thread call."""
        data = self.read(max_bytes)
        return data, (self.finish() if self.done else None)

    def read_all_small(self) -> bytes:
        """The whole (small) range in one call: one thread hop for a small file."""
        return self.read(self._left) if self._left else b""

    def finish(self) -> bytes:
        """The digest, once the file is proven unchanged since it was opened."""
        key = _stat_key(os.fstat(self._fd))
        if key != _stat_key(self._stat):
            raise FileChanged("file changed while being sent")
        if self._cached is not None:
            return self._cached
        # Without a cached digest or chunk hash, __init__ made the hash.
        assert self._hash is not None
        digest = self._hash.digest()
        if self._cache is not None:
            self._cache.put(key, digest)
        return digest

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def open_range(
    root_fd: int, parts: paths.Parts, offset: int, length: int,
    cache: DigestCache | None = None, small: int = CHUNK_SIZE, parent_fd: int | None = None,
) -> RangeReader | tuple[frames.FileHeader, bytes, bytes]:
    """Open a range for FETCH (blocking).

    A range of at most ``small`` bytes is read, hashed, checked and closed in this same call
    (one thread hop per small file) and returned as ``(header, data, digest)``; a larger one
    returns the open `RangeReader` for streaming. ``parent_fd``: see `RangeReader`.
    """
    reader = RangeReader(root_fd, parts, offset, length, cache, parent_fd)
    if reader.size > small:
        return reader
    try:
        data = reader.read_all_small()
        return reader.header, data, reader.finish()
    finally:
        reader.close()


#: Maps what serving a file raised to the (error code, message) its client is told.
Describe = Callable[[BaseException, str], tuple[int, str]]


def read_bundle(
    root_fd: int, request_id: int, wants: Sequence[tuple[int, bytes]], start: int,
    describe: Describe, max_items: int, readable: Callable[[paths.Parts], bool] | None = None,
) -> tuple[bytes, int]:
    """Answer files ``start``... of a FETCH_MANY (blocking): one complete BUNDLE frame and
    the index of the first file it leaves for the next one.

    Each file is opened, read, hashed and checked as a small FETCH is (`open_range`); one
    that is not a valid path, is larger than `frames.BUNDLE_FILE_MAX`, or whose size is not
    the listed one, gets an error item instead. The frame stays within
    `frames.MAX_BUNDLE_FRAME` (judged on the listed sizes, which the files must match) and
    holds at most ``max_items`` files; it always holds at least one. A file ``readable``
    refuses gets the error item of a missing one.

    Files of one directory (a bundle mostly holds neighbours in listing order) share one
    open of it. Their digests skip the `DigestCache`: hashing a small file costs less than
    the cache's lock, and thousands of them would evict the big files' digests.
    """
    items: list[bytes] = []
    room = frames.MAX_BUNDLE_FRAME - 5
    index = start
    end = min(len(wants), start + max_items)
    parents = _Parents(root_fd)
    try:
        while index < end:
            size, raw = wants[index]
            # An error item is at most ~1 KiB: reserve as much for a file that turns out bad.
            need = frames.BUNDLE_ITEM_OVERHEAD + max(min(size, frames.BUNDLE_FILE_MAX), 1100)
            if items and need > room:
                break
            items.append(_bundle_item(parents, index, size, raw, describe, readable))
            room -= len(items[-1])
            index += 1
    finally:
        parents.close()
    body = b"".join(items)
    return frames.frame_head(frames.BUNDLE, request_id, len(body)) + body, index


class _Parents:
    """The directory of the last file of a bundle, kept open for the next (same parent)."""

    def __init__(self, root_fd: int) -> None:
        self._root_fd = root_fd
        self._parts: paths.Parts | None = None
        self._fd = -1

    def fd_for(self, parts: paths.Parts) -> int:
        parent = parts[:-1]
        if parent != self._parts:
            self.close()
            self._fd = paths.open_parent_dir(self._root_fd, parts)
            self._parts = parent
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._parts = -1, None


def _bundle_item(parents: _Parents, index: int, size: int, raw: bytes, describe: Describe,
                 readable: Callable[[paths.Parts], bool] | None = None) -> bytes:
    try:
        parts = paths.parse_wire_path(raw)
        if readable is not None and not readable(parts):
            raise FileNotFoundError(raw)
        if size > frames.BUNDLE_FILE_MAX:
            raise ValueError(f"listed size {size} too large for FETCH_MANY (at most "
                             f"{frames.BUNDLE_FILE_MAX} bytes)")
        opened = open_range(-1, parts, 0, frames.TO_END, None, small=size,
                            parent_fd=parents.fd_for(parts))
        if isinstance(opened, RangeReader):
            opened.close()
            raise FileChanged(f"file changed: listed with {size} bytes, now "
                              f"{opened.header.file_size}")
        header, data, digest = opened
        if header.file_size != size:
            raise FileChanged(f"file changed: listed with {size} bytes, now {header.file_size}")
    except Exception as e:
        code, message = describe(e, paths.display_name(raw))
        return frames.encode_bundle_error(index, code, message)
    return frames.encode_bundle_file(index, header, digest, data)
