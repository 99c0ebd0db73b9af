"""Sample trees for tests and the demo, and a byte-for-byte tree comparison."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mirror.demo import make_sample_tree

__all__ = ["make_sample_tree", "tree_listing", "assert_same_tree"]


def tree_listing(root: Path) -> dict[str, tuple[str, int, int, bytes | None]]:
    """path -> (kind, mode, mtime_ns, content) for every directory and regular file."""
    out: dict[str, tuple[str, int, int, bytes | None]] = {}
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
