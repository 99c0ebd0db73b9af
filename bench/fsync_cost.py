"""`python -m bench.fsync_cost`: what durable commits cost (issue 12), with and without fsync,
on a disk-backed directory and on tmpfs.

It drives the mirror server's store the way the workers do, without the network: 2,000
small files (0.5-8 KiB, in 63 directories) written as bundles of 32 (`MirrorStore.write_many`:
one file fsync each, one directory fsync per directory of a bundle), then one 200 MB file
in 1 MiB writes and one commit. The data and digests are prepared before the clock starts;
each figure is the median of ``--runs`` runs, each into a fresh directory. The page cache
is not dropped (that needs root): without fsync the data is still in memory when the run
ends, which is what a mirror server without fsync gets too.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

from mirror.hashing import digest_of
from mirror.mirror_server.durable import Durability
from mirror.mirror_server.store import DescriptorBudget, MirrorStore
from mirror.wire.frames import BundleItem, FileHeader

SMALL_FILES = 2000
BUNDLE = 32
BIG = 200 * 1000 * 1000
CHUNK = 1 << 20
MTIME = 1_700_000_000_000_000_000


def small_files(seed: int = 12) -> list[tuple[tuple[str, ...], BundleItem]]:
    rnd = random.Random(seed)
    files: list[tuple[tuple[str, ...], BundleItem]] = []
    for i in range(SMALL_FILES):
        data = rnd.randbytes(rnd.randrange(512, 8193))
        parts = (f"d{i // 32:02d}", f"f{i:04d}")
        files.append((parts, BundleItem(i, len(data), MTIME, 0o644, digest_of(data), data)))
    return files


def timed(base: str, fsync: bool, work: Callable[[MirrorStore], None]) -> float:
    target = tempfile.mkdtemp(prefix="fsync-cost-", dir=base)
    try:
        store = MirrorStore(target, "h_1", DescriptorBudget(), Durability(enabled=fsync))
        try:
            start = time.perf_counter()
            work(store)
            return time.perf_counter() - start
        finally:
            store.close()
    finally:
        shutil.rmtree(target)


def write_small(files: list[tuple[tuple[str, ...], BundleItem]]) -> Callable[[MirrorStore], None]:
    def work(store: MirrorStore) -> None:
        for d in sorted({parts[0] for parts, _ in files}):
            store.make_dir((d,))
        for i in range(0, len(files), BUNDLE):
            problems = store.write_many(files[i:i + BUNDLE])
            assert problems == [None] * len(problems), problems

    return work


def write_big(chunk: bytes, digest: bytes) -> Callable[[MirrorStore], None]:
    def work(store: MirrorStore) -> None:
        partial = store.create(("big",))
        for _ in range(BIG // CHUNK):
            partial.write([chunk])
        partial.write([chunk[: BIG % CHUNK]])
        partial.commit(FileHeader(BIG, BIG, MTIME, 0o644), digest)

    return work


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fsync_cost", description=__doc__)
    parser.add_argument("--disk", default="/var/tmp", help="a disk-backed directory")
    parser.add_argument("--tmpfs", default="/dev/shm", help="a tmpfs directory")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    files = small_files()
    chunk = random.Random(1).randbytes(CHUNK)
    big_data_digest = digest_of(chunk * (BIG // CHUNK) + chunk[: BIG % CHUNK])
    workloads = [(f"{SMALL_FILES} small files", write_small(files)),
                 ("one 200 MB file", write_big(chunk, big_data_digest))]
    print("| where | workload | fsync (default) | --no-fsync | cost |")
    print("|---|---|---|---|---|")
    for where, base in (("disk (ext4)", args.disk), ("tmpfs", args.tmpfs)):
        for name, work in workloads:
            with_fsync = statistics.median(timed(base, True, work) for _ in range(args.runs))
            without = statistics.median(timed(base, False, work) for _ in range(args.runs))
            print(f"| {where} {base} | {name} | {with_fsync:.2f} s | {without:.2f} s | "
                  f"{with_fsync / without:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
