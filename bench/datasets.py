"""Seeded benchmark datasets, generated on tmpfs once and reused while their marker matches."""
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

MiB = 1 << 20
GiB = 1 << 30
BLOCK = 4 * MiB
MARKER_FORMAT = 1


@dataclass(frozen=True)
class Spec:
    """A dataset: `files` files of `total` bytes in all, spread over `dirs` directories.

    `content` is "random" (seeded SHAKE-128 stream per file), "repeated" (one seeded 1 MiB
    random block written over and over), and `sizes` is "equal" or "lognormal".
    """

    name: str
    files: int
    dirs: int
    total: int
    sizes: str = "equal"
    content: str = "random"


FULL = {
    "big": Spec("big", files=1, dirs=0, total=GiB),
    "small": Spec("small", files=10_000, dirs=100, total=10_000 * 4096),
    "mixed": Spec("mixed", files=2_000, dirs=20, total=800_000_000, sizes="lognormal"),
    "memory": Spec("memory", files=1, dirs=0, total=4 * GiB, content="repeated"),
}
QUICK = {
    "big": Spec("big", files=1, dirs=0, total=32 * MiB),
    "small": Spec("small", files=300, dirs=10, total=300 * 4096),
    "mixed": Spec("mixed", files=200, dirs=5, total=40_000_000, sizes="lognormal"),
    "memory": Spec("memory", files=1, dirs=0, total=256 * MiB, content="repeated"),
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
    """Sizes of the spec's files, summing exactly to `spec.total`."""
    if spec.sizes == "equal":
        size, rest = divmod(spec.total, spec.files)
        return [size + (1 if i < rest else 0) for i in range(spec.files)]
    rng = random.Random(f"{seed}/{spec.name}/sizes")
    raw = [rng.lognormvariate(0.0, LOGNORMAL_SIGMA) for _ in range(spec.files)]
    scale = spec.total / sum(raw)
    sizes = [max(1, round(r * scale)) for r in raw]
    largest = sizes.index(max(sizes))
    sizes[largest] += spec.total - sum(sizes)
    return sizes


def file_path(spec: Spec, index: int) -> str:
    """Relative path of file `index`: top level for a one-file dataset, else round-robin in dirs."""
    if spec.dirs == 0:
        return f"{spec.name}.bin"
    return f"d{index % spec.dirs:03d}/f{index:05d}.bin"


def _write_file(path: Path, size: int, key: str, content: str) -> None:
    with open(path, "wb") as f:
        if content == "repeated":
            block = hashlib.shake_128(key.encode()).digest(MiB)
            whole, rest = divmod(size, MiB)
            for _ in range(whole):
                f.write(block)
            f.write(block[:rest])
            return
        for n, offset in enumerate(range(0, size, BLOCK)):
            f.write(hashlib.shake_128(f"{key}/{n}".encode()).digest(min(BLOCK, size - offset)))


def generate(spec: Spec, root: Path, seed: int) -> None:
    """(Re)create `root / spec.name` from scratch."""
    target = root / spec.name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for d in range(spec.dirs):
        (target / f"d{d:03d}").mkdir()
    for i, size in enumerate(file_sizes(spec, seed)):
        rel = file_path(spec, i)
        _write_file(target / rel, size, f"{seed}/{spec.name}/{rel}", spec.content)


def ensure(spec: Spec, root: Path, markers: Path, seed: int) -> Dataset:
    """Return the dataset, generating it unless its marker and file count/bytes still match."""
    marker = markers / f"{spec.name}.json"
    expected = {"format": MARKER_FORMAT, "seed": seed, "spec": asdict(spec)}
    target = root / spec.name
    if marker.exists() and target.is_dir() and json.loads(marker.read_text()) == expected:
        tree = scan(target)
        if len(tree.files) == spec.files and tree.total_bytes == spec.total:
            print(f"  {spec.name}: reusing {spec.files} files, {spec.total / 1e6:.1f} MB")
            return Dataset(spec, root, tree)
    marker.unlink(missing_ok=True)
    started = time.perf_counter()
    generate(spec, root, seed)
    tree = scan(target)
    if len(tree.files) != spec.files or tree.total_bytes != spec.total:
        raise RuntimeError(f"{target}: generated {len(tree.files)} files / {tree.total_bytes} "
                           f"bytes, expected {spec.files} / {spec.total}")
    markers.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(expected))
    print(f"  {spec.name}: generated {spec.files} files, {spec.total / 1e6:.1f} MB "
          f"in {time.perf_counter() - started:.1f} s")
    return Dataset(spec, root, tree)
