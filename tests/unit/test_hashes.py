"""HASHES: chunk size rule, the server's answer, and a client fed nonsense."""

from __future__ import annotations

import os
import struct

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mirror import hashing
from mirror.content_server.hashes import ChunkHashCache
from mirror.hashing import digest_of
from mirror.mirror_server.content_client import ContentClientProtocol, TransferError
from mirror.mirror_server.hashes_request import request_hashes
from mirror.testing import StepThreads
from mirror.wire import chunk_hashes, frames
from mirror.wire.chunk_hashes import MAX_CHUNKS, MIN_CHUNK, ChunkHashes, chunk_size_for
from tests.unit.helpers import connect_server, fetch_result, make_factory, parse_frames

MiB = 1 << 20


class ChunkSizeRule(SynchronousTestCase):
    def test_power_of_two_at_least_one_mib_at_most_65536_chunks(self) -> None:
        self.assertEqual(chunk_size_for(0), MIN_CHUNK)
        self.assertEqual(chunk_size_for(10 * MiB), MIN_CHUNK)
        self.assertEqual(chunk_size_for(MAX_CHUNKS * MiB), MIN_CHUNK)
        self.assertEqual(chunk_size_for(MAX_CHUNKS * MiB + 1), 2 * MiB)
        for size in (1, 5 * MiB + 3, 1 << 40, (1 << 64) - 1):
            c = chunk_size_for(size)
            self.assertEqual(c & (c - 1), 0)
            self.assertLessEqual(chunk_hashes.chunk_count(size, c), MAX_CHUNKS)

    def test_cache_is_bounded_by_hashes_held(self) -> None:
        cache = ChunkHashCache(max_hashes=5)
        for i in range(4):
            cache.put((i, 0, 0, 0, 0), ChunkHashes(0, 0, 0, b"d" * 32, MiB, (b"h" * 32,) * 2))
        self.assertEqual(len(cache), 2)
        self.assertIsNone(cache.get((0, 0, 0, 0, 0)))


class ServerHashes(SynchronousTestCase):
    def setUp(self) -> None:
        root = self.mktemp()
        os.makedirs(root)
        self.data = os.urandom(2 * MiB + 1234)
        with open(os.path.join(root, "f"), "wb") as f:
            f.write(self.data)
        self.factory = make_factory(root)
        self.addCleanup(os.close, self.factory.root_fd)
        self.rig = connect_server(self.factory)

    def ask(self, rid: int, path: bytes = b"f") -> list[tuple[int, int, bytes]]:
        self.rig.send(frames.HASHES, rid, path)
        return [f for f in self.rig.log.take() if f[1] == rid]

    def test_answer(self) -> None:
        got = self.ask(1)
        self.assertEqual([op for op, _, _ in got], [frames.HASHES_HEAD, frames.HASH_LIST])
        head = chunk_hashes.decode_head(got[0][2], 1 << 40)
        self.assertEqual((head.file_size, head.chunk_size, head.count), (len(self.data), MiB, 3))
        self.assertEqual(head.digest, digest_of(self.data))
        expected = b"".join(digest_of(self.data[i:i + MiB]) for i in range(0, len(self.data), MiB))
        self.assertEqual(got[1][2], expected)
        # Cached beside the digests: the whole-file digest serves FETCH too.
        self.assertEqual(len(self.factory.chunk_hashes), 1)
        self.assertEqual(len(self.factory.digests), 1)

    def test_chunk_fetched_after_hashes_is_not_hashed_again(self) -> None:
        self.ask(1)
        made: list[int] = []
        real = hashing.new_hasher

        def counting() -> hashing.Hasher:
            made.append(1)
            return real()

        self.patch(hashing, "new_hasher", counting)
        self.rig.fetch(2, "f", offset=MiB, length=MiB)
        r = fetch_result(self.rig.log.take(), 2)
        self.assertEqual((r.data, r.digest), (self.data[MiB:2 * MiB], digest_of(r.data)))
        self.assertEqual(made, [])
        # Any other range is hashed as it is read.
        self.rig.fetch(3, "f", offset=MiB + 1, length=MiB)
        r = fetch_result(self.rig.log.take(), 3)
        self.assertEqual(r.digest, digest_of(self.data[MiB + 1:2 * MiB + 1]))
        self.assertEqual(made, [1])

    def test_errors(self) -> None:
        for rid, path, code in [(1, b"missing", frames.E_NOT_FOUND),
                                (2, b"../f", frames.E_NOT_ALLOWED),
                                (3, b"", frames.E_BAD_REQUEST)]:
            got = self.ask(rid, path)
            self.assertEqual(len(got), 1)
            self.assertEqual(got[0][0], frames.ERROR)
            self.assertEqual(frames.decode_error(got[0][2])[0], code)

    def test_deadline_of_its_own(self) -> None:
        """A hash not done within --hashes-timeout is answered busy, and told to stop."""
        threads = StepThreads()
        self.factory.threads = threads
        self.factory.settings.hashes_timeout = 5.0
        self.rig.send(frames.HASHES, 1, b"f")
        self.rig.clock.advance(6)
        threads.run_all()
        got = [f for f in self.rig.log.take() if f[1] == 1]
        self.assertEqual(got[0][0], frames.ERROR)
        code, message = frames.decode_error(got[0][2])
        self.assertEqual(code, frames.E_BUSY)
        self.assertIn("within 5 s", message)
        self.assertEqual(len(self.factory.chunk_hashes), 0)


def head_frame(rid: int, size: int, chunk: int, count: int) -> bytes:
    return frames.frame(frames.HASHES_HEAD, rid, struct.pack(">QqH32sQI", size, 1, 0o644,
                                                             b"d" * 32, chunk, count))


class HostileHashesServer(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.client = ContentClientProtocol(clock=self.clock, name="srv:1", stall_timeout=30,
                                            max_file_size=1 << 40)
        self.transport = StringTransport()
        self.client.makeConnection(self.transport)
        self.d = request_hashes(self.client, "f")
        self.rid = parse_frames(self.transport.value())[-1][1]

    def message(self) -> str:
        return str(self.failureResultOf(self.d, TransferError).value)

    def test_good_answer(self) -> None:
        self.client.dataReceived(head_frame(self.rid, 2 * MiB + 1, MiB, 3))
        self.client.dataReceived(frames.frame(frames.HASH_LIST, self.rid, b"a" * 64))
        self.assertNoResult(self.d)
        self.client.dataReceived(frames.frame(frames.HASH_LIST, self.rid, b"b" * 32))
        result = self.successResultOf(self.d)
        self.assertEqual(result.hashes, (b"a" * 32, b"a" * 32, b"b" * 32))
        self.assertEqual(result.chunk_range(2), (2 * MiB, 1))

    def test_empty_file_needs_no_list(self) -> None:
        self.client.dataReceived(head_frame(self.rid, 0, MiB, 0))
        self.assertEqual(self.successResultOf(self.d).hashes, ())

    def test_huge_count_refused_before_anything_is_held(self) -> None:
        self.client.dataReceived(head_frame(self.rid, 2 * MiB, MiB, 2**32 - 1))
        self.assertIn("announced", self.message())
        self.assertFalse(self.transport.disconnected)

    def test_chunk_size_not_the_rule(self) -> None:
        self.client.dataReceived(head_frame(self.rid, 10 * MiB, 4096, 2560))
        self.assertIn("not the protocol's", self.message())

    def test_size_over_the_limit(self) -> None:
        self.client.dataReceived(head_frame(self.rid, 1 << 50, 1 << 34, 65536))
        self.assertIn("exceeds the limit", self.message())

    def test_more_hashes_than_announced(self) -> None:
        self.client.dataReceived(head_frame(self.rid, MiB, MiB, 1))
        self.client.dataReceived(frames.frame(frames.HASH_LIST, self.rid, b"a" * 64))
        self.assertIn("only 1 expected", self.message())

    def test_partial_hash(self) -> None:
        self.client.dataReceived(head_frame(self.rid, MiB, MiB, 1))
        self.client.dataReceived(frames.frame(frames.HASH_LIST, self.rid, b"a" * 31))
        self.assertIn("whole number", self.message())

    def test_list_before_head(self) -> None:
        self.client.dataReceived(frames.frame(frames.HASH_LIST, self.rid, b"a" * 32))
        self.assertIn("unexpected response", self.message())

    def test_truncated_head_breaks_the_connection(self) -> None:
        self.client.dataReceived(frames.frame(frames.HASHES_HEAD, self.rid, b"x" * 10))
        self.assertIn("protocol error", self.message())
        self.assertTrue(self.transport.disconnected)

    def test_silence_is_a_stall(self) -> None:
        self.client.dataReceived(head_frame(self.rid, 2 * MiB, MiB, 2))
        self.clock.advance(200)
        self.assertIn("stalled", self.message())
