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

from mirror import hashing, paths
from mirror.content_server.fetch import ChunkHashCache, DigestCache, FileChanged, _stat_key
from mirror.wire.chunk_hashes import ChunkHashes, chunk_size_for

__all__ = ["ChunkHashCache", "HashingStopped", "compute_chunk_hashes"]

#: Bytes read per call while hashing (a chunk is at least this big).
READ_SIZE = 1 << 20


class HashingStopped(Exception):
    """The request's deadline passed, or its client left, while the file was being hashed."""


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
