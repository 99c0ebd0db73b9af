"""Writing verified chunks of a multi-source file, and hashing the whole file as it grows.

Blocking: `ChunkAssembler.put` runs in the disk threads, several at once. It checks a chunk
against its expected hash (the origin's, from HASHES) and writes it at its offset into the
temporary file. The whole-file digest is computed in file order as the prefix of written
chunks grows: a chunk that arrives in order is hashed from memory; when a late chunk closes
a gap, the chunks already written after it are read back from the file (the page cache),
each at most once. So the commit checks the digest of the bytes written, as for a file
streamed in order, without reading the whole file again.

For a swarm (issue 14), the chunks written and verified so far are `written`: a partial
holder would serve them from the temporary file (`PartialFile.read_at`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from mirror import hashing
from mirror.mirror_server.store import PartialFile
from mirror.wire.chunk_hashes import ChunkHashes


class ChunkAssembler:
    """The temporary file of one multi-source download and its running whole-file hash."""

    def __init__(self, partial: PartialFile, hashes: ChunkHashes) -> None:
        self.partial = partial
        self.hashes = hashes
        self._lock = threading.Lock()
        self._whole = hashing.new_hasher()
        #: Chunks below this are in ``_whole``; chunks written at or above it, not yet.
        self._next = 0
        self._ahead: set[int] = set()
        #: Chunks written and verified (any order).
        self.written: set[int] = set()

    def put(self, index: int, pieces: Sequence[bytes]) -> bool:
        """Verify chunk ``index`` and write it; False (nothing written) if its bytes do not
        match the origin's hash."""
        hasher = hashing.new_hasher()
        for piece in pieces:
            hasher.update(piece)
        if hasher.digest() != self.hashes.hashes[index]:
            return False
        offset, _ = self.hashes.chunk_range(index)
        self.partial.write_at(offset, pieces)
        with self._lock:
            self.written.add(index)
            if index != self._next:
                self._ahead.add(index)
                return True
            for piece in pieces:
                self._whole.update(piece)
            self._next += 1
            while self._next in self._ahead:
                self._ahead.discard(self._next)
                self._whole.update(self.partial.read_at(*self.hashes.chunk_range(self._next)))
                self._next += 1
        return True

    def commit(self) -> None:
        """Place the file if every chunk was written and the whole digest matches
        (`PartialFile.commit` raises `StoreError` otherwise)."""
        with self._lock:
            done = self._next * self.hashes.chunk_size
            self.partial.hashed_by(self._whole, min(done, self.hashes.file_size))
        self.partial.commit(self.hashes.header, self.hashes.digest)
