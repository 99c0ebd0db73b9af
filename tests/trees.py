"""Sample trees for tests and the demo, and a byte-for-byte tree comparison."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path


def make_sample_tree(root: Path, big_size: int = 3 * 1024 * 1024, seed: int = 1) -> Path:
    """Nested directories, empty files and directories, odd but legal names, one big file."""
    rnd = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "docs" / "sub" / "deeper").mkdir(parents=True, exist_ok=True)
    (root / "empty").mkdir(exist_ok=True)
    (root / "docs" / "a.txt").write_text("hello\n")
    (root / "docs" / "empty.txt").write_bytes(b"")
    (root / "docs" / "name with spaces.txt").write_text("spaces\n")
    (root / "docs" / "unicodé ☃.txt").write_text("unicode\n")
    (root / "-leading-dash").write_text("dash\n")
    (root / "..foo").write_text("dots\n")
    (root / "docs" / "sub" / "big.bin").write_bytes(rnd.randbytes(big_size))
    for i in range(20):
        (root / "docs" / "sub" / "deeper" / f"f{i:02d}.dat").write_bytes(
            rnd.randbytes(rnd.randrange(0, 100_000)))
    os.chmod(root / "docs" / "a.txt", 0o640)
    os.chmod(root / "-leading-dash", 0o755)
    return root


def tree_listing(root: Path) -> dict[str, tuple[str, int, int, bytes | None]]:
    """path -> (kind, mode, mtime_ns, content) for every directory and regular file."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns, None)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, p.read_bytes())
    return out


def assert_same_tree(expected: Path, actual: Path) -> None:
    """Same names, kinds, contents, modes and mtimes (of files and directories)."""
    want, got = tree_listing(expected), tree_listing(actual)
    assert sorted(want) == sorted(got), (sorted(set(want) ^ set(got)))
    for rel in want:
        assert want[rel] == got[rel], rel
