"""mirror.hashing: the one digest of file contents is BLAKE3-256, whole or chunk by chunk."""

from __future__ import annotations

import hashlib
import threading

from twisted.trial.unittest import SynchronousTestCase

from mirror.hashing import (
    BESIDE_MIN,
    DIGEST_NAME,
    DIGEST_SIZE,
    digest_of,
    new_hasher,
    update_beside,
)

# From BLAKE3's official test vectors (test_vectors.json: input byte i is i % 251); the
# 102,400-byte one spans many 1 KiB chunks, hence the tree part of the algorithm.
VECTORS = {
    0: "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
    102400: "bc3e3d41a1146b069abffad3c0d44860cf664390afce4d9661f7902e7943e085",
}


def vector_input(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


class DigestTests(SynchronousTestCase):
    def test_known_answers(self) -> None:
        # The wire carries BLAKE3-256: peers built on any BLAKE3 library must agree.
        for n, want in VECTORS.items():
            self.assertEqual(digest_of(vector_input(n)).hex(), want, n)
        self.assertEqual(digest_of(b"abc").hex(),
                         "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85")
        self.assertEqual((DIGEST_NAME, DIGEST_SIZE), ("BLAKE3", 32))

    def test_not_sha256(self) -> None:
        self.assertNotEqual(digest_of(b"abc"), hashlib.sha256(b"abc").digest())

    def test_incremental_equals_whole(self) -> None:
        # Senders and receivers hash chunk by chunk, in pieces of any size and type.
        data = vector_input(102400)
        for step in (1, 1000, 1024, 4096, 65536, 102400):
            h = new_hasher()
            view = memoryview(data)
            for i in range(0, len(data), step):
                h.update(view[i:i + step])
            self.assertEqual(h.digest(), digest_of(data), step)
            self.assertEqual(len(h.digest()), DIGEST_SIZE)

    def test_hashers_are_independent(self) -> None:
        a, b = new_hasher(), new_hasher()
        a.update(b"x")
        self.assertEqual(b.digest(), digest_of(b""))


class _Recorder:
    """A hasher double: records what it was fed and from which thread."""

    def __init__(self) -> None:
        self.fed: list[bytes] = []
        self.threads: set[int] = set()

    def update(self, data: bytes | memoryview) -> None:
        self.threads.add(threading.get_ident())
        self.fed.append(bytes(data))


class UpdateBesideTests(SynchronousTestCase):
    def test_big_input_is_hashed_in_another_thread_in_order(self) -> None:
        pieces = [bytes([i]) * (BESIDE_MIN // 2) for i in range(3)]
        recorder = _Recorder()
        update_beside(recorder, pieces)()  # type: ignore[arg-type]
        self.assertEqual(recorder.fed, pieces)
        self.assertNotIn(threading.get_ident(), recorder.threads)

    def test_small_input_is_hashed_at_once(self) -> None:
        recorder = _Recorder()
        wait = update_beside(recorder, [b"ab", b"c"])  # type: ignore[arg-type]
        self.assertEqual((recorder.fed, recorder.threads), ([b"ab", b"c"], {threading.get_ident()}))
        wait()

    def test_same_digest_as_in_one_call(self) -> None:
        data = vector_input(3 * BESIDE_MIN + 5)
        hasher = new_hasher()
        view = memoryview(data)
        update_beside(hasher, [view[:7], view[7 : 2 * BESIDE_MIN], view[2 * BESIDE_MIN :]])()
        update_beside(hasher, [b"tail"])()
        self.assertEqual(hasher.digest(), digest_of(data + b"tail"))

    def test_a_failure_is_raised_by_the_wait(self) -> None:
        class Broken:
            def update(self, data: bytes) -> None:
                raise ValueError("broken hasher")

        wait = update_beside(Broken(), [bytes(BESIDE_MIN)])  # type: ignore[arg-type]
        self.assertRaises(ValueError, wait)
