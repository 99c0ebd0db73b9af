"""Seeded benchmark datasets, generated on tmpfs: reused while their marker matches, or, for the
million-file ones (`Spec.scratch`), generated for one workload and deleted right after it."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.trees import Tree, scan

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
BLOCK = 4 * MiB
#: Files smaller than a quarter of this take a seeded slice of one shared random pool (fast for
#: many files); larger ones get their own seeded stream; "repeated" files repeat the pool.
POOL = MiB
MARKER_FORMAT = 2


class DatasetError(RuntimeError):
    """A dataset cannot be made here (too few free inodes) or came out wrong."""


@dataclass(frozen=True)
class Spec:
    """A dataset: `files` files spread round-robin over `dirs` leaf directories.

    `dirs` 0 puts one file at the top (`NAME.bin`); `nested` groups the leaf directories in
    top-level ones (`dAAA/dBBB/`), about the square root of `dirs` each. `sizes`: "equal"
    (`total` split evenly), "lognormal" (summing to `total`) or "uniform" (each file from `low`
    to `high` bytes, seeded; `total` unused). `content`: "random"
    (seeded bytes), "repeated" (one seeded 1 MiB random block over and over) or "empty".
    `scratch`: generated for its workload only and deleted after it (million-file trees).
    """

    name: str
    files: int
    dirs: int
    total: int = 0
    sizes: str = "equal"
    content: str = "random"
    low: int = 0
    high: int = 0
    nested: bool = False
    scratch: bool = False


def _uniform(name: str, files: int, dirs: int, low: int, high: int) -> Spec:
    return Spec(name, files, dirs, sizes="uniform", low=low, high=high)


def _million(name: str, files: int, dirs: int, nested: bool) -> Spec:
    return Spec(name, files, dirs, content="empty", nested=nested, scratch=True)


#: Files of the small datasets: 0.5-8 KiB.
SMALL = (512, 8 * KiB)
#: Files of the tiny dataset: 1-64 bytes.
TINY = (1, 64)

FULL = {
    "big": Spec("big", files=1, dirs=0, total=GiB),
    # 50 directories of 200 files: the sources workload names each as one SPEC.
    "small": _uniform("small", 10_000, 50, *SMALL),
    "mixed": Spec("mixed", files=2_000, dirs=20, total=800_000_000, sizes="lognormal"),
    "tiny": _uniform("tiny", 100_000, 100, *TINY),
    "fair": _uniform("fair", 20, 1, *SMALL),
    # The 19 big jobs the fair workload's small job is submitted behind: 100 files of 1 MiB each.
    "fair-big": Spec("fair-big", files=1_900, dirs=19, total=1_900 * MiB, content="repeated"),
    "memory": Spec("memory", files=1, dirs=0, total=4 * GiB, content="repeated"),
    "tree-1m": _million("tree-1m", 1_000_000, 10_000, nested=True),
    "dir-1m": _million("dir-1m", 1_000_000, 1, nested=False),
}
QUICK = {
    "big": Spec("big", files=1, dirs=0, total=32 * MiB),
    "small": _uniform("small", 300, 50, *SMALL),
    "mixed": Spec("mixed", files=200, dirs=20, total=40_000_000, sizes="lognormal"),
    "tiny": _uniform("tiny", 1_000, 10, *TINY),
    "fair": _uniform("fair", 20, 1, *SMALL),
    "fair-big": Spec("fair-big", files=190, dirs=19, total=190 * 64 * KiB, content="repeated"),
    "memory": Spec("memory", files=1, dirs=0, total=256 * MiB, content="repeated"),
    "tree-1m": _million("tree-1m", 2_000, 100, nested=True),
    "dir-1m": _million("dir-1m", 2_000, 1, nested=False),
}
LOGNORMAL_SIGMA = 1.5


@dataclass
class Dataset:
    """A generated dataset: `root / spec.name` holds `tree`."""

    spec: Spec
    root: Path
    tree: Tree

    @property
    def path(self) -> Path:
        return self.root / self.spec.name


def workspace(quick: bool) -> tuple[Path, str]:
    """The benchmark's base directory and a description of where it is: tmpfs when possible."""
    name = "mirror-bench-quick" if quick else "mirror-bench"
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm / name, "tmpfs /dev/shm"
    tmp = Path(tempfile.gettempdir())
    return tmp / name, f"{tmp} (no writable /dev/shm: may be disk-backed, storage speed counts)"


def file_sizes(spec: Spec, seed: int) -> list[int]:
    """Sizes of the spec's files (summing exactly to `spec.total` unless "uniform")."""
    if spec.content == "empty":
        return [0] * spec.files
    if spec.sizes == "equal":
        size, rest = divmod(spec.total, spec.files)
        return [size + (1 if i < rest else 0) for i in range(spec.files)]
    rng = random.Random(f"{seed}/{spec.name}/sizes")
    if spec.sizes == "uniform":
        return [rng.randint(spec.low, spec.high) for _ in range(spec.files)]
    raw = [rng.lognormvariate(0.0, LOGNORMAL_SIGMA) for _ in range(spec.files)]
    scale = spec.total / sum(raw)
    sizes = [max(1, round(r * scale)) for r in raw]
    largest = sizes.index(max(sizes))
    sizes[largest] += spec.total - sum(sizes)
    return sizes


def dir_path(spec: Spec, index: int) -> str:
    """Relative path of leaf directory `index`."""
    if not spec.nested:
        return f"d{index:03d}"
    group = max(1, round(spec.dirs ** 0.5))
    return f"d{index // group:03d}/d{index % group:03d}"


def file_path(spec: Spec, index: int) -> str:
    """Relative path of file `index`: top level for a one-file dataset, else round-robin in dirs."""
    if spec.dirs == 0:
        return f"{spec.name}.bin"
    width = len(str(spec.files - 1))
    return f"{dir_path(spec, index % spec.dirs)}/f{index:0{width}d}.bin"


def inodes_needed(spec: Spec) -> int:
    """Inodes the dataset takes (files and every directory, itself included)."""
    tops = len({dir_path(spec, d).split("/")[0] for d in range(spec.dirs)}) if spec.nested else 0
    return spec.files + spec.dirs + tops + 1


def check_inodes(where: Path, needed: int, what: str) -> None:
    """Raise DatasetError unless the file system of `where` has `needed` free inodes."""
    st = os.statvfs(where)
    if st.f_files and st.f_favail < needed:
        raise DatasetError(
            f"{what} needs {needed:,} free inodes on the file system of {where}, which has "
            f"{st.f_favail:,} of {st.f_files:,}: free some (other benchmark data left in "
            f"/dev/shm?) or run on a larger file system")


def _write_file(path: Path, size: int, key: str, content: str, pool: bytes) -> None:
    if content == "empty":
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        return
    with open(path, "wb") as f:
        if content == "repeated":
            block = pool
            whole, rest = divmod(size, MiB)
            for _ in range(whole):
                f.write(block)
            f.write(block[:rest])
            return
        if size < POOL // 4:
            # Seeded slices of one pool: different bytes per file, no hashing per file.
            start = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest())
            start %= len(pool) - size
            f.write(pool[start:start + size])
            return
        for n, offset in enumerate(range(0, size, BLOCK)):
            f.write(hashlib.shake_128(f"{key}/{n}".encode()).digest(min(BLOCK, size - offset)))


def _write_empty_files(target: Path, spec: Spec) -> None:
    """A million empty files fast: one directory descriptor per leaf, open/close per file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    width = len(str(spec.files - 1))
    for d in range(spec.dirs):
        fd = os.open(target / dir_path(spec, d), os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(d, spec.files, spec.dirs):
                os.close(os.open(f"f{i:0{width}d}.bin", flags, 0o644, dir_fd=fd))
        finally:
            os.close(fd)


def generate(spec: Spec, root: Path, seed: int) -> None:
    """(Re)create `root / spec.name` from scratch."""
    target = root / spec.name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for d in range(spec.dirs):
        (target / dir_path(spec, d)).mkdir(parents=True)
    if spec.content == "empty" and spec.dirs:
        _write_empty_files(target, spec)
        return
    pool = hashlib.shake_128(f"{seed}/{spec.name}/pool".encode()).digest(POOL)
    for i, size in enumerate(file_sizes(spec, seed)):
        rel = file_path(spec, i)
        _write_file(target / rel, size, f"{seed}/{spec.name}/{rel}", spec.content, pool)


def expected_total(spec: Spec, seed: int) -> int:
    """Bytes the dataset holds."""
    return sum(file_sizes(spec, seed)) if spec.sizes == "uniform" else (
        0 if spec.content == "empty" else spec.total)


def ensure(spec: Spec, root: Path, markers: Path, seed: int, copies: int = 1) -> Dataset:
    """Return the dataset, generating it unless its marker and file count/bytes still match.

    Before generating, check that the file system has inodes for the dataset and `copies`
    mirrors of it.
    """
    marker = markers / f"{spec.name}.json"
    expected = {"format": MARKER_FORMAT, "seed": seed, "spec": asdict(spec)}
    target = root / spec.name
    if marker.exists() and target.is_dir() and json.loads(marker.read_text()) == expected:
        tree = scan(target)
        if len(tree.files) == spec.files and tree.total_bytes == expected_total(spec, seed):
            print(f"  {spec.name}: reusing {spec.files} files, {tree.total_bytes / 1e6:.1f} MB")
            return Dataset(spec, root, tree)
    marker.unlink(missing_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    check_inodes(root, inodes_needed(spec) * (1 + copies) + 10_000, f"dataset {spec.name}")
    started = time.perf_counter()
    generate(spec, root, seed)
    made = time.perf_counter() - started
    tree = scan(target)
    if len(tree.files) != spec.files or tree.total_bytes != expected_total(spec, seed):
        raise DatasetError(f"{target}: generated {len(tree.files)} files / {tree.total_bytes} "
                           f"bytes, expected {spec.files} / {expected_total(spec, seed)}")
    markers.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(expected))
    print(f"  {spec.name}: generated {spec.files} files, {tree.total_bytes / 1e6:.1f} MB "
          f"in {made:.1f} s (scanned in {time.perf_counter() - started - made:.1f} s)",
          flush=True)
    return Dataset(spec, root, tree)


def remove(dataset: Dataset, markers: Path) -> None:
    """Delete a dataset and its marker."""
    (markers / f"{dataset.spec.name}.json").unlink(missing_ok=True)
    shutil.rmtree(dataset.path, ignore_errors=True)
