"""HASHES on the content protocol: a file's chunk size and the BLAKE3 hash of each chunk
(doc/protocol.md, "HASHES").

The server chooses the chunk size from the file size alone (`chunk_size_for`: a power of two,
at least `MIN_CHUNK`, at most `MAX_CHUNKS` chunks a file), so a client cannot make it hash a
file twice with other sizes. The answer is one HASHES_HEAD frame, then HASH_LIST frames of at
most `HASHES_PER_FRAME` hashes each until ``count`` hashes have been sent.

Everything decoded here is untrusted: `decode_head` checks that the chunk size is one the rule
allows and that ``count`` matches the size, so a client never holds more than `MAX_CHUNKS`
hashes (2 MiB) for one file, whatever a server announces.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from mirror.hashing import DIGEST_SIZE
from mirror.wire.frames import FileHeader, ProtocolError

#: Smallest chunk, and most chunks a file (doc/protocol.md).
MIN_CHUNK = 1 << 20
MAX_CHUNKS = 65536
#: Hashes in one HASH_LIST frame: 128 KiB, well within a client's 256 KiB frame limit.
HASHES_PER_FRAME = 4096

# file_size, mtime_ns, mode, digest, chunk_size, count
_HEAD = struct.Struct(">QqH32sQI")


def chunk_size_for(file_size: int) -> int:
    """The chunk size of a file of ``file_size`` bytes: the smallest power of two of at
    least `MIN_CHUNK` that cuts it in at most `MAX_CHUNKS` chunks."""
    size = MIN_CHUNK
    while -(-file_size // size) > MAX_CHUNKS:
        size <<= 1
    return size


def chunk_count(file_size: int, chunk_size: int) -> int:
    return -(-file_size // chunk_size)


@dataclass(frozen=True)
class ChunkHashes:
    """A file as its origin describes it: size, mtime, mode, whole digest, chunk hashes."""

    file_size: int
    mtime_ns: int
    mode: int
    digest: bytes
    chunk_size: int
    hashes: tuple[bytes, ...]

    @property
    def count(self) -> int:
        return len(self.hashes)

    def chunk_range(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk ``index``."""
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.file_size - offset)

    @property
    def header(self) -> FileHeader:
        """The FILE header of the whole file (what a commit sets)."""
        return FileHeader(self.file_size, self.file_size, self.mtime_ns, self.mode)


def encode_head(h: ChunkHashes) -> bytes:
    return _HEAD.pack(h.file_size, h.mtime_ns, h.mode & 0o7777, h.digest, h.chunk_size,
                      h.count)


def encode_hash_frames(hashes: tuple[bytes, ...]) -> list[bytes]:
    """HASH_LIST payloads: the hashes, `HASHES_PER_FRAME` a frame."""
    return [b"".join(hashes[i:i + HASHES_PER_FRAME])
            for i in range(0, len(hashes), HASHES_PER_FRAME)]


@dataclass(frozen=True)
class Head:
    """A decoded, checked HASHES_HEAD."""

    file_size: int
    mtime_ns: int
    mode: int
    digest: bytes
    chunk_size: int
    count: int


def decode_head(payload: bytes, max_file_size: int) -> Head:
    """Raises `ProtocolError` for a frame of the wrong size, `ValueError` for values no
    honest server sends (the request fails; the framing is intact)."""
    if len(payload) != _HEAD.size:
        raise ProtocolError("bad HASHES_HEAD frame")
    file_size, mtime_ns, mode, digest, chunk_size, count = _HEAD.unpack(payload)
    if file_size > max_file_size:
        raise ValueError(f"file size {file_size} exceeds the limit of {max_file_size} bytes")
    if chunk_size != chunk_size_for(file_size):
        raise ValueError(f"chunk size {chunk_size} is not the protocol's for {file_size} "
                         f"bytes ({chunk_size_for(file_size)})")
    if count != chunk_count(file_size, chunk_size):
        raise ValueError(f"{count} chunk hashes announced for {file_size} bytes in chunks of "
                         f"{chunk_size}")
    return Head(file_size, mtime_ns, mode & 0o7777, digest, chunk_size, count)


def decode_hash_list(payload: bytes, room: int) -> list[bytes]:
    """The hashes of one HASH_LIST frame; ``room`` is how many are still expected.
    Raises `ValueError` for an empty frame, a partial hash, or more hashes than expected."""
    if not payload or len(payload) % DIGEST_SIZE:
        raise ValueError(f"HASH_LIST of {len(payload)} bytes is not a whole number of hashes")
    n = len(payload) // DIGEST_SIZE
    if n > room:
        raise ValueError(f"{n} chunk hashes sent, only {room} expected")
    return [payload[i:i + DIGEST_SIZE] for i in range(0, len(payload), DIGEST_SIZE)]
