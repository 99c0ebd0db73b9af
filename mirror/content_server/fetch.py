"""FETCH: reading a file range, hashing it while it is read, and noticing changes.

`RangeReader` is blocking and runs in the disk thread pool: it reads with ``pread`` and hashes
in the same thread call (hashlib releases the GIL on large buffers), so the reactor only moves
finished chunks to the socket.
"""

from __future__ import annotations

import hashlib
import os

from mirror import paths
from mirror.wire import frames

CHUNK_SIZE = 256 * 1024


class FileChanged(Exception):
    """The file was modified or truncated while it was being sent."""


class RangeReader:
    """Reads ``[offset, offset+length)`` of a regular file under the root, hashing as it goes."""

    def __init__(self, root_fd: int, parts: paths.Parts, offset: int, length: int) -> None:
        self._fd, st = paths.open_regular_file(root_fd, parts)
        self._stat = st
        if offset > st.st_size:
            os.close(self._fd)
            raise ValueError(f"offset {offset} beyond the end of the file ({st.st_size} bytes)")
        self.size = min(length, st.st_size - offset)
        self._pos = offset
        self._left = self.size
        self._hash = hashlib.sha256()

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
        self._hash.update(data)
        self._pos += want
        self._left -= want
        return data

    def read_all_small(self) -> bytes:
        """The whole (small) range in one call: one thread hop for a small file."""
        return self.read(self._left) if self._left else b""

    def finish(self) -> bytes:
        """The digest, once the file is proven unchanged since it was opened."""
        st = os.fstat(self._fd)
        if st.st_size != self._stat.st_size or st.st_mtime_ns != self._stat.st_mtime_ns:
            raise FileChanged("file changed while being sent")
        return self._hash.digest()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def open_range(
    root_fd: int, parts: paths.Parts, offset: int, length: int, small: int = CHUNK_SIZE
) -> RangeReader | tuple[frames.FileHeader, bytes, bytes]:
    """Open a range for FETCH (blocking).

    A range of at most ``small`` bytes is read, hashed, checked and closed in this same call
    (one thread hop per small file) and returned as ``(header, data, digest)``; a larger one
    returns the open `RangeReader` for streaming.
    """
    reader = RangeReader(root_fd, parts, offset, length)
    if reader.size > small:
        return reader
    try:
        data = reader.read_all_small()
        return reader.header, data, reader.finish()
    finally:
        reader.close()
