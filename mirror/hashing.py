"""The digest of file contents: BLAKE3-256, the only one on the wire (FILE_END) and in caches.

Every hasher of file bytes comes from `new_hasher`, so the algorithm is chosen here and
nowhere else. BLAKE3 is cryptographic (a peer cannot forge bytes to match a digest) and fast
on any x86-64 without depending on SHA instructions (bench/NOTES.md: several times SHA-256's
speed where SHA-NI is missing). Its ``update`` releases the GIL on large buffers, so hashing
in the disk threads runs beside the reactor; one thread per hasher (the default
``max_threads=1``): more did not help on the chunk sizes used here (bench/NOTES.md). A
writer hashes big batches in a helper thread beside its own disk write (`update_beside`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

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


#: Inputs at least this long are hashed beside the caller's own work (`update_beside`).
BESIDE_MIN = 256 * 1024
#: Helper threads of `update_beside`: as many as the mirror server's disk threads.
BESIDE_THREADS = 4

#: Made on first use: most processes importing this module hash only small inputs.
_helpers: ThreadPoolExecutor | None = None


def _update_all(hasher: Hasher, pieces: Sequence[bytes | memoryview]) -> None:
    for piece in pieces:
        hasher.update(piece)


def update_beside(hasher: Hasher, pieces: Sequence[bytes | memoryview]) -> Callable[[], None]:
    """Start ``hasher.update`` over ``pieces`` (in order); returns the call that waits for
    it to end and raises what it raised.

    At least `BESIDE_MIN` bytes are hashed in a helper thread while the caller writes the
    same pieces to disk: both drop the GIL, so a disk thread's write and hash take the
    longer of the two instead of their sum (bench/NOTES.md, "Big files"). Smaller inputs are
    hashed at once. The caller must wait before it uses ``hasher`` again or lets the pieces
    go: a hasher is never used by two threads at once.
    """
    global _helpers
    if sum(len(piece) for piece in pieces) < BESIDE_MIN:
        _update_all(hasher, pieces)
        return _nothing
    if _helpers is None:
        _helpers = ThreadPoolExecutor(max_workers=BESIDE_THREADS, thread_name_prefix="hash")
    return _helpers.submit(_update_all, hasher, pieces).result


def _nothing() -> None:
    pass
