"""The digest of file contents: BLAKE3-256, the only one on the wire (FILE_END) and in caches.

Every hasher of file bytes comes from `new_hasher`, so the algorithm is chosen here and
nowhere else. BLAKE3 is cryptographic (a peer cannot forge bytes to match a digest) and fast
on any x86-64 without depending on SHA instructions (bench/NOTES.md: several times SHA-256's
speed where SHA-NI is missing). Its ``update`` releases the GIL on large buffers, so hashing
in the disk threads runs beside the reactor; one thread per hasher (the default
``max_threads=1``): more did not help on the chunk sizes used here (bench/NOTES.md).
"""

from __future__ import annotations

from blake3 import blake3

#: Name used in messages to users ("BLAKE3 mismatch").
DIGEST_NAME = "BLAKE3"
#: Bytes in a digest: FILE_END's whole payload (doc/protocol.md).
DIGEST_SIZE = 32

Hasher = blake3


def new_hasher() -> Hasher:
    """A fresh incremental hasher: ``update`` it per chunk, then ``digest()``."""
    return blake3()


def digest_of(data: bytes | memoryview) -> bytes:
    """The digest of ``data`` in one call (a small file, a test's expected value)."""
    return blake3(data).digest()
