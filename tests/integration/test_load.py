"""Load: many clients on one content server, many jobs on one mirror server, at once.

Every byte is checked (BLAKE3 against the source files), and every job's figures (files,
bytes, sum of squares, hence mean and variance) against the sizes of the files it was given.
"""

from __future__ import annotations

import random
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from mirror.hashing import digest_of, new_hasher
from mirror.mirror_server.content_client import ContentClientProtocol, FlowControl
from mirror.stats import SizeStats
from mirror.wire import frames
from tests.integration.conftest import run_job, source
from tests.trees import assert_same_tree

CLIENTS = 200
JOBS = 20
SERVERS = 4


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


class HashSink:
    """A FETCH sink that hashes and counts what arrives, as a receiver would store it."""

    def __init__(self) -> None:
        self.hash = new_hasher()
        self.size = 0

    def head(self, header: frames.FileHeader, flow: FlowControl) -> None:
        self.header = header

    def data(self, piece: memoryview) -> None:
        self.hash.update(piece)
        self.size += len(piece)


# -- 200 clients on one content server ------------------------------------------------------


def _content_tree(root: Path) -> dict[str, bytes]:
    """Files of many sizes: empty, small (answered in one piece) and streamed ones."""
    rnd = random.Random(200)
    files = {}
    sizes = [0, 1, 100, 4096, 65_535, 65_536, 200_000, 262_144, 262_145, 700_000, 1_500_000]
    for i in range(30):
        size = sizes[i] if i < len(sizes) else rnd.randrange(0, 120_000)
        name = f"d{i % 4}/sub{i % 3}/file{i:02d}.bin"
        files[name] = rnd.randbytes(size)
        _write(root / name, files[name])
    return files


async def _one_client(port: int, files: dict[str, bytes], digests: dict[str, bytes],
                      seed: int) -> int:
    rnd = random.Random(seed)
    client = ContentClientProtocol(reactor, name="load client")
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=30), client)
    try:
        listed: dict[str, int] = {}

        def entries(batch: list[frames.Entry]) -> None:
            for e in batch:
                if not e.is_dir:
                    listed[e.name.decode()] = e.size

        count, skipped = await client.list("", entries)
        assert skipped == 0
        assert listed == {name: len(data) for name, data in files.items()}, (count, skipped)
        # A few whole files, and one range, all in flight at once on this connection.
        names = rnd.sample(sorted(files), 4)
        sinks = [HashSink() for _ in names]
        fetches = [client.fetch(name, sink) for name, sink in zip(names, sinks, strict=True)]
        big = "d2/sub1/file10.bin"
        offset = rnd.randrange(0, len(files[big]))
        range_sink = HashSink()
        fetches.append(client.fetch(big, range_sink, offset, 300_000))
        results = await defer.gatherResults(fetches, consumeErrors=True)
        # results has one more (the range): zip stops at the whole files.
        for name, sink, (header, digest) in zip(names, sinks, results, strict=False):
            assert sink.size == header.size == len(files[name])
            assert sink.hash.digest() == digest == digests[name], name
        header, digest = results[-1]
        want = files[big][offset : offset + 300_000]
        assert header.size == range_sink.size == len(want)
        assert range_sink.hash.digest() == digest == digest_of(want)
        return sum(s.size for s in sinks) + range_sink.size
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_200_concurrent_clients_on_one_content_server(tmp_path: Path,
                                                            start_content_server):
    files = _content_tree(tmp_path / "root")
    digests = {name: digest_of(data) for name, data in files.items()}
    port, factory = start_content_server(str(tmp_path / "root"))
    start = reactor.seconds()
    received = await defer.gatherResults(
        [defer.Deferred.fromCoroutine(_one_client(port, files, digests, seed))
         for seed in range(CLIENTS)], consumeErrors=True).addTimeout(60, reactor)
    assert len(received) == CLIENTS and all(received)
    print(f"{CLIENTS} clients, {sum(received)} bytes in {reactor.seconds() - start:.2f} s")


# -- 20 jobs on one mirror server -----------------------------------------------------------


def _job_trees(roots: list[Path]) -> dict[tuple[int, str], dict[str, int]]:
    """Job j takes jobJJ/a from server j, jobJJ/b from server j+1 and the single file
    jobJJ/c/one.bin from server j+2 (mod SERVERS). Returns (server, subpath) -> {file: size}.
    Each server also has a decoy directory that no job asks for."""
    rnd = random.Random(20)
    plan: dict[tuple[int, str], dict[str, int]] = {}
    for j in range(JOBS):
        for offset, sub in ((0, "a"), (1, "b")):
            server = (j + offset) % SERVERS
            files = {}
            for k in range(rnd.randrange(3, 7)):
                size = rnd.choice([0, rnd.randrange(1, 5000), rnd.randrange(5000, 150_000)])
                name = f"job{j:02d}/{sub}/{'deep/' * (k % 2)}f{k}.dat"
                _write(roots[server] / name, rnd.randbytes(size))
                files[name] = size
            if j % 5 == 0:  # a few streamed files too
                name = f"job{j:02d}/{sub}/big.bin"
                _write(roots[server] / name, rnd.randbytes(rnd.randrange(300_000, 900_000)))
                files[name] = (roots[server] / name).stat().st_size
            plan[(server, f"job{j:02d}/{sub}")] = files
        server = (j + 2) % SERVERS
        name = f"job{j:02d}/c/one.bin"
        _write(roots[server] / name, rnd.randbytes(rnd.randrange(0, 50_000)))
        plan[(server, name)] = {name: (roots[server] / name).stat().st_size}
    for root in roots:
        _write(root / "decoy" / "never.txt", b"not asked for\n")
    return plan


@pytest_twisted.ensureDeferred
async def test_20_simultaneous_jobs_on_one_mirror_server(tmp_path: Path, start_content_server,
                                                         start_mirror_server):
    roots = [tmp_path / f"src{i}" for i in range(SERVERS)]
    plan = _job_trees(roots)
    ports = [start_content_server(str(root))[0] for root in roots]
    mirror_dir = tmp_path / "mirror"
    mport, _ = start_mirror_server(str(mirror_dir))

    jobs: list[list[tuple[int, str]]] = []
    for j in range(JOBS):
        jobs.append([((j + 0) % SERVERS, f"job{j:02d}/a"), ((j + 1) % SERVERS, f"job{j:02d}/b"),
                     ((j + 2) % SERVERS, f"job{j:02d}/c/one.bin")])
    start = reactor.seconds()
    results: list[Any] = await defer.gatherResults(
        [run_job(mport, [source(ports[s], sub) for s, sub in specs], timeout=60)
         for specs in jobs], consumeErrors=True)
    elapsed = reactor.seconds() - start

    for j, (specs, result) in enumerate(zip(jobs, results, strict=True)):
        assert result.ok, (j, result.errors)
        job_stats = SizeStats()
        expected = SizeStats()
        for index, (server, sub) in enumerate(specs):
            sizes = list(plan[(server, sub)].values())
            done = result.source_done[index]
            # The figures of this SPEC: exactly its files.
            assert (done.files, done.bytes, done.sum_sq) == (
                len(sizes), sum(sizes), sum(s * s for s in sizes)), (j, sub)
            assert done.failed == 0 and done.skipped == 0
            job_stats.merge(SizeStats.from_sums(done.files, done.bytes, done.sum_sq))
            for size in sizes:
                expected.add(size)
            # Every file intact (content, mode, mtime) under MIRROR_DIR/HOST_PORT.
            top = mirror_dir / f"127.0.0.1_{ports[server]}"
            if sub.endswith(".bin"):
                assert (top / sub).read_bytes() == (roots[server] / sub).read_bytes()
            else:
                assert_same_tree(roots[server] / sub, top / sub)
        # The job's mean and variance, exactly.
        all_sizes = [size for server, sub in specs for size in plan[(server, sub)].values()]
        n = len(all_sizes)
        mean = Fraction(sum(all_sizes), n)
        variance = sum((Fraction(s) - mean) ** 2 for s in all_sizes) / n
        assert job_stats == expected
        assert job_stats.exact_mean == mean and job_stats.exact_variance == variance, j

    # Nothing beyond what was asked for, and no temporary file left anywhere.
    for server, port in enumerate(ports):
        top = mirror_dir / f"127.0.0.1_{port}"
        assert not (top / "decoy").exists()
        got = {str(p.relative_to(top)) for p in top.rglob("*") if p.is_file()}
        want = {name for (s, _), files in plan.items() if s == server for name in files}
        assert got == want
    assert not [p for p in mirror_dir.rglob(".mirror-tmp-*")]
    total = sum(len(f) for f in plan.values())
    print(f"{JOBS} jobs, {total} files in {elapsed:.2f} s")
