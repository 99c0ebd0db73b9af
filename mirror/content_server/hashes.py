"""HASHES: computing a file's chunk hashes off the reactor, and remembering them.

`compute_chunk_hashes` is blocking (it runs in the disk threads): it reads the file once,
hashing each chunk and, unless the `DigestCache` knows it, the whole file, then checks the
file did not change meanwhile. It stops between reads once its ``stop`` event is set (the
request's deadline passed, or the client went away), so an abandoned hash does not hold a
disk thread for the rest of a huge file.

Results are kept in a `ChunkHashCache` beside the digests, on the same key (device, inode,
size, mtime, ctime): a file asked for again unchanged is not read again.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

from mirror import hashing, paths
from mirror.content_server.fetch import DigestCache, FileChanged, StatKey, _stat_key
from mirror.wire.chunk_hashes import ChunkHashes, chunk_size_for

#: Bytes read per call while hashing (a chunk is at least this big).
READ_SIZE = 1 << 20
#: Chunk hashes the cache holds in all (32 bytes each: 32 MiB).
MAX_CACHED_HASHES = 1 << 20


class HashingStopped(Exception):
    """The request's deadline passed, or its client left, while the file was being hashed."""


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


def compute_chunk_hashes(root_fd: int, parts: paths.Parts, digests: DigestCache,
                         cache: ChunkHashCache, stop: threading.Event) -> ChunkHashes:
    """The `ChunkHashes` of the regular file ``parts`` under ``root_fd`` (blocking).

    Raises what opening raises (`FileNotFoundError`, `paths.UnsafePath`, ...),
    `FileChanged` if the file changed while it was read, `HashingStopped` once ``stop``
    is set.
    """
    fd, st = paths.open_regular_file(root_fd, parts)
    try:
        key = _stat_key(st)
        known = cache.get(key)
        if known is not None:
            return known
        size = st.st_size
        chunk = chunk_size_for(size)
        whole_known = digests.get(key)
        whole = hashing.new_hasher() if whole_known is None else None
        hashes: list[bytes] = []
        pos = 0
        while pos < size:
            piece_hash = hashing.new_hasher()
            end = min(size, pos + chunk)
            while pos < end:
                if stop.is_set():
                    raise HashingStopped("hashing stopped")
                data = os.pread(fd, min(READ_SIZE, end - pos), pos)
                if not data:
                    raise FileChanged("file was truncated while being hashed")
                piece_hash.update(data)
                if whole is not None:
                    whole.update(data)
                pos += len(data)
            hashes.append(piece_hash.digest())
        if _stat_key(os.fstat(fd)) != key:
            raise FileChanged("file changed while being hashed")
        if whole is not None:
            digest = whole.digest()
            digests.put(key, digest)
        else:
            assert whole_known is not None
            digest = whole_known
        result = ChunkHashes(size, st.st_mtime_ns, st.st_mode & 0o7777, digest, chunk,
                             tuple(hashes))
        cache.put(key, result)
        return result
    finally:
        os.close(fd)
