"""The content server's digest cache: a file served again unchanged is not hashed again, and
any change to it (even one that restores size and mtime) is noticed."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from mirror import hashing
from mirror.content_server import fetch
from mirror.content_server.fetch import DigestCache, FileChanged, RangeReader, open_range
from mirror.hashing import digest_of
from mirror.wire.frames import TO_END

BODY = os.urandom(3 * fetch.CHUNK_SIZE + 17)


class DigestCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = self.mktemp()
        os.mkdir(self.root)
        self.path = os.path.join(self.root, "f")
        with open(self.path, "wb") as f:
            f.write(BODY)
        self.root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, self.root_fd)
        self.cache = DigestCache()
        self.hashers = 0
        real = hashing.new_hasher

        def counting_hasher() -> hashing.Hasher:
            self.hashers += 1
            return real()

        self.patch(hashing, "new_hasher", counting_hasher)  # the module fetch uses

    def serve(self, offset: int = 0, length: int = TO_END) -> tuple[bytes, bytes]:
        reader = RangeReader(self.root_fd, ("f",), offset, length, self.cache)
        try:
            data = b"".join(reader.read() for _ in range(-(-reader.size // fetch.CHUNK_SIZE)))
            return data, reader.finish()
        finally:
            reader.close()

    def test_second_send_is_not_hashed(self) -> None:
        first = self.serve()
        second = self.serve()
        self.assertEqual(first, (BODY, digest_of(BODY)))
        self.assertEqual(second, first)
        self.assertEqual(self.hashers, 1)

    def test_rewrite_with_same_size_and_mtime_is_hashed_again(self) -> None:
        self.serve()
        st = os.stat(self.path)
        new = bytes(b ^ 0xFF for b in BODY)
        with open(self.path, "r+b") as f:
            f.write(new)
        os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns))  # ctime still moves
        data, digest = self.serve()
        self.assertEqual((data, digest), (new, digest_of(new)))
        self.assertEqual(self.hashers, 2)

    def test_ranges_are_not_cached(self) -> None:
        self.serve()
        data, digest = self.serve(offset=5, length=100)
        self.assertEqual(digest, digest_of(BODY[5:105]))
        self.assertEqual(self.hashers, 2)

    def test_read_next_gives_the_digest_with_the_last_chunk(self) -> None:
        reader = RangeReader(self.root_fd, ("f",), 0, TO_END, self.cache)
        self.addCleanup(reader.close)
        got = [reader.read_next(fetch.CHUNK_SIZE) for _ in range(4)]
        self.assertEqual([digest for _, digest in got], [None, None, None, digest_of(BODY)])
        self.assertEqual(b"".join(data for data, _ in got), BODY)

    def test_read_next_checks_the_file_with_the_last_chunk(self) -> None:
        reader = RangeReader(self.root_fd, ("f",), 0, TO_END, self.cache)
        self.addCleanup(reader.close)
        reader.read_next(len(BODY) - 1)
        os.chmod(self.path, 0o600)  # changes only the ctime
        self.assertRaises(FileChanged, reader.read_next, 1)

    def test_change_while_sending_a_cached_file_is_reported(self) -> None:
        self.serve()
        reader = RangeReader(self.root_fd, ("f",), 0, TO_END, self.cache)
        self.addCleanup(reader.close)
        reader.read()
        os.chmod(self.path, 0o600)  # changes only the ctime
        self.assertRaises(FileChanged, reader.finish)

    def test_small_files_through_open_range(self) -> None:
        small = os.path.join(self.root, "s")
        with open(small, "wb") as f:
            f.write(b"small")
        for _ in range(2):
            small_file = open_range(self.root_fd, ("s",), 0, TO_END, self.cache)
            assert isinstance(small_file, tuple), "not read in one call"
            header, data, digest = small_file
            self.assertEqual((data, digest), (b"small", digest_of(b"small")))
        self.assertEqual(self.hashers, 1)

    def test_least_recently_used_entries_go_first(self) -> None:
        cache = DigestCache(max_entries=2)
        cache.put((1,) * 5, b"a")
        cache.put((2,) * 5, b"b")
        cache.get((1,) * 5)
        cache.put((3,) * 5, b"c")
        self.assertEqual([cache.get((i,) * 5) for i in (1, 2, 3)], [b"a", None, b"c"])
