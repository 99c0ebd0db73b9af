"""Multi-source download end to end in memory: an origin and serving mirrors (real content
server protocols) on a `MemoryNetwork`, one of them lying."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from zope.interface import provider

from mirror.hashing import digest_of
from mirror.job_options import JobOptions
from mirror.mirror_server.chunk_assembly import ChunkAssembler
from mirror.mirror_server.multi_source import Holder
from mirror.mirror_server.store import StoreError
from mirror.wire import frames
from mirror.wire.chunk_hashes import ChunkHashes
from tests.unit.test_mirror_job import JobTestCase, Observer, source
from tests.unit.test_store import MTIME, StoreTestCase

MiB = 1 << 20
SIZE = 6 * MiB + 12345
ORIGIN = ("10.0.0.1", 7000)
TOP = "10.0.0.1_7000"


class MultiSourceCase(JobTestCase):
    settings = {"workers": 2, "queue_size": 10, "multi_source_threshold": MiB,
                "holders": (("10.0.0.2", 7000), ("10.0.0.3", 7000), ("10.0.0.4", 7000))}

    def setUp(self) -> None:
        super().setUp()
        self.data = random.Random(5).randbytes(SIZE)
        self.fetches: list[tuple[str, str]] = []
        origin = self.tree("origin", "", self.data)
        self.serve(origin, *ORIGIN)

    def tree(self, name: str, prefix: str, data: bytes) -> Path:
        root = self.base / name
        where = root / prefix if prefix else root
        where.mkdir(parents=True)
        (where / "big").write_bytes(data)
        (where / "small").write_bytes(b"small file")
        os.utime(where / "big", ns=(1_600_000_000_000_000_000,) * 2)
        return root

    def holder(self, host: str, data: bytes | None = None) -> None:
        self.serve(self.tree(host, TOP, self.data if data is None else data), host, 7000)

    def run_with(self, options: JobOptions | None = None) -> Observer:
        observer = Observer()
        job = self.service.submit([source()], observer, options)
        self.network.run_until(job.finished)
        return observer

    def placed(self) -> bytes:
        return (self.mirror / TOP / "big").read_bytes()


class MultiSourceJob(MultiSourceCase):
    def test_from_all_holders_with_a_liar(self) -> None:
        self.holder("10.0.0.2")
        self.holder("10.0.0.3")
        bad = bytearray(self.data)
        for i in range(MiB, SIZE, MiB):
            bad[i + 7] ^= 0xFF  # every chunk but the first is corrupt
        self.holder("10.0.0.4", bytes(bad))
        observer = self.run_with()
        self.assertEqual(observer.finished, [True], observer.errors)
        self.assertEqual(self.placed(), self.data)
        self.assertEqual((self.mirror / TOP / "big").stat().st_mtime_ns,
                         1_600_000_000_000_000_000)
        run = observer.done[0]
        by_holder = run.holder_bytes
        self.assertEqual(sum(by_holder.values()), SIZE)
        # Chunks came from the origin and both honest mirrors; at most the liar's first
        # (good) chunk from it.
        for name in ("10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"):
            self.assertGreater(by_holder.get(name, 0), 0, by_holder)
        self.assertLessEqual(by_holder.get("10.0.0.4:7000", 0), MiB)
        self.assertEqual(run.stats.total, SIZE + len(b"small file"))
        self.assertEqual(self.service.jobs, {})

    def test_holders_that_cannot_serve_are_dropped(self) -> None:
        # 10.0.0.2 does not hold the file; 10.0.0.3 has another version; nobody at .4.
        self.serve(self.tree("empty", "other", b"x"), "10.0.0.2", 7000)
        self.holder("10.0.0.3", self.data[:-1])
        observer = self.run_with()
        self.assertEqual(observer.finished, [True], observer.errors)
        self.assertEqual(self.placed(), self.data)
        self.assertEqual(observer.done[0].holder_bytes, {"10.0.0.1:7000": SIZE})

    def test_chunk_every_mirror_spoils_comes_from_the_origin(self) -> None:
        """The origin's hashes are the truth: every mirror's first chunk is corrupt."""
        bad = bytes(b ^ 1 for b in self.data[:MiB]) + self.data[MiB:]
        for host in ("10.0.0.2", "10.0.0.3", "10.0.0.4"):
            self.holder(host, bad)
        observer = self.run_with()
        self.assertEqual(observer.finished, [True], observer.errors)
        self.assertEqual(self.placed(), self.data)

    def test_job_can_turn_it_off(self) -> None:
        self.holder("10.0.0.2")
        asked: list[int] = []
        factory: Any = self.network._servers[ORIGIN]
        proto_class = factory.protocol

        class Watching(proto_class):  # type: ignore[misc, valid-type]
            def stringReceived(self, frame: bytes) -> None:
                asked.append(frames.split_frame(frame)[0])
                super().stringReceived(frame)

        factory.protocol = Watching
        observer = self.run_with(JobOptions(multi_source=False))
        self.assertEqual(observer.finished, [True], observer.errors)
        self.assertEqual(self.placed(), self.data)
        self.assertNotIn(frames.HASHES, asked)
        self.assertEqual(observer.done[0].holder_bytes, {})


    def test_origin_without_hashes_falls_back_to_a_single_source(self) -> None:
        """An older content server drops a connection that sends an unknown opcode: the
        file is fetched the usual way, on the shared connections."""
        self.holder("10.0.0.2")
        factory: Any = self.network._servers[ORIGIN]

        class Old(factory.protocol):  # type: ignore[misc]
            def stringReceived(self, frame: bytes) -> None:
                if frames.split_frame(frame)[0] == frames.HASHES:
                    self.frameError("unknown opcode 0x4")
                    return
                super().stringReceived(frame)

        factory.protocol = Old
        observer = self.run_with()
        self.assertEqual(observer.finished, [True], observer.errors)
        self.assertEqual(self.placed(), self.data)
        self.assertEqual(observer.done[0].holder_bytes, {})


    def test_holder_announcing_a_wrong_chunk_size_is_dropped_at_once(self) -> None:
        """A holder whose FILE header announces more than the chunk (then says nothing) is
        given up on when the header arrives, not after a stall timeout."""
        self.holder("10.0.0.2")
        factory: Any = self.network._servers[("10.0.0.2", 7000)]

        class Boasting(factory.protocol):  # type: ignore[misc]
            async def _serve_fetch(self, request_id: int, payload: bytes) -> None:
                offset, length, _, _ = frames.decode_fetch(payload)
                header = frames.FileHeader(4 * length, SIZE, 1, 0o644)
                self._send(frames.frame(frames.FILE, request_id, frames.encode_file(header)))

        factory.protocol = Boasting
        said: list[str] = []

        @provider(ILogObserver)
        def hear(event: dict[str, Any]) -> None:
            said.append(formatEvent(event))

        globalLogPublisher.addObserver(hear)
        self.addCleanup(globalLogPublisher.removeObserver, hear)
        observer = self.run_with()
        self.assertEqual(observer.finished, [True], observer.errors)
        self.assertEqual(self.placed(), self.data)
        self.assertNotIn("10.0.0.2:7000", observer.done[0].holder_bytes)
        self.assertTrue(any("holder 10.0.0.2:7000 dropped" in line and "for a chunk of" in line
                            for line in said), said)


    def test_finder_failing_means_a_single_source(self) -> None:
        class Down:
            def holders(self, path: str, digest: bytes) -> Deferred[list[Holder]]:
                return fail(ConnectionRefusedError("index down"))

        self.service.holder_finder = Down()
        observer = self.run_with()
        self.assertEqual(observer.finished, [True], observer.errors)
        self.assertEqual(self.placed(), self.data)
        self.assertEqual(observer.done[0].holder_bytes, {})

    def test_finder_is_asked_with_the_network_path_and_digest(self) -> None:
        self.holder("10.0.0.2")
        asked: list[tuple[str, bytes]] = []

        class Recording:
            def holders(self, path: str, digest: bytes) -> Deferred[list[Holder]]:
                asked.append((path, digest))
                return succeed([Holder("10.0.0.2", 7000, path)])

        self.service.holder_finder = Recording()
        observer = self.run_with()
        self.assertEqual(observer.finished, [True], observer.errors)
        self.assertEqual(asked, [(f"{TOP}/big", digest_of(self.data))])
        self.assertIn("10.0.0.2:7000", observer.done[0].holder_bytes)


class NoOtherHolder(MultiSourceCase):
    settings = {"workers": 2, "queue_size": 10, "multi_source_threshold": MiB}

    def test_single_source_without_holders(self) -> None:
        observer = self.run_with()
        self.assertEqual(observer.finished, [True], observer.errors)
        self.assertEqual(self.placed(), self.data)
        self.assertEqual(observer.done[0].holder_bytes, {})


class Assembly(StoreTestCase):
    """`ChunkAssembler`: chunks verified and written in any order; the whole file's digest
    computed in order as its prefix grows; placed only if it matches."""

    def make(self, data: bytes, digest: bytes | None = None) -> ChunkAssembler:
        hashes = ChunkHashes(len(data), MTIME, 0o640, digest or digest_of(data), 1000, tuple(
            digest_of(data[i:i + 1000]) for i in range(0, len(data), 1000)))
        return ChunkAssembler(self.store.create(("f",)), hashes)

    def test_out_of_order_then_placed(self) -> None:
        data = os.urandom(4500)
        asm = self.make(data)
        for index in (3, 1, 0, 4, 2):
            self.assertTrue(asm.put(index, [data[index * 1000:index * 1000 + 400],
                                            data[index * 1000 + 400:index * 1000 + 1000]]))
        asm.commit()
        self.assertEqual(self.read("f"), data)
        self.assertEqual(os.stat(self.path("f")).st_mtime_ns, MTIME)

    def test_bad_chunk_is_not_written(self) -> None:
        data = os.urandom(2000)
        asm = self.make(data)
        self.assertFalse(asm.put(0, [b"\0" * 1000]))
        self.assertEqual(asm.written, set())
        self.assertEqual(asm.partial.read_at(0, 1000), b"")

    def test_missing_chunk_places_nothing(self) -> None:
        data = os.urandom(3000)
        asm = self.make(data)
        asm.put(0, [data[:1000]])
        asm.put(2, [data[2000:]])
        with self.assertRaises(StoreError):
            asm.commit()
        asm.partial.discard()
        self.assertFalse(os.path.exists(self.path("f")))
        self.assertEqual(self.temporaries(), [])

    def test_whole_digest_must_match(self) -> None:
        """Chunks that match their hashes are not enough: the whole file is checked too."""
        data = os.urandom(2000)
        asm = self.make(data, digest=digest_of(b"another file"))
        asm.put(1, [data[1000:]])
        asm.put(0, [data[:1000]])
        with self.assertRaises(StoreError):
            asm.commit()
        asm.partial.discard()
        self.assertFalse(os.path.exists(self.path("f")))
