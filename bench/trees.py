"""Scan a directory tree and check that a mirror of it is complete and correct."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 1 << 20


class MismatchError(Exception):
    """A destination tree does not match its source."""


@dataclass
class Tree:
    """Relative paths of a tree's regular files (with sizes) and directories."""

    files: dict[str, int] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


def scan(root: Path) -> Tree:
    """Walk `root` without following links; anything but files and directories is an error."""
    tree = Tree()
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel if rel else root) as entries:
            for entry in entries:
                path = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    tree.dirs.add(path)
                    stack.append(path)
                elif entry.is_file(follow_symlinks=False):
                    tree.files[path] = entry.stat(follow_symlinks=False).st_size
                else:
                    raise MismatchError(f"{root / path}: neither a regular file nor a directory")
    return tree


def check_tree(source: Tree, dest: Path) -> None:
    """Raise MismatchError unless `dest` has exactly the source's files, sizes and directories."""
    if not dest.is_dir():
        raise MismatchError(f"{dest}: destination missing")
    got = scan(dest)
    problems: list[str] = []
    missing = source.files.keys() - got.files.keys()
    extra = got.files.keys() - source.files.keys()
    resized = [p for p in source.files.keys() & got.files.keys() if source.files[p] != got.files[p]]
    for label, paths in (("missing", missing), ("unexpected", extra), ("wrong size", resized)):
        if paths:
            problems.append(f"{len(paths)} {label} file(s), e.g. {sorted(paths)[:3]}")
    if source.dirs != got.dirs:
        problems.append(f"directories differ: missing {sorted(source.dirs - got.dirs)[:3]}, "
                        f"unexpected {sorted(got.dirs - source.dirs)[:3]}")
    if problems:
        raise MismatchError(f"{dest}: got {len(got.files)} files / {got.total_bytes} bytes, "
                            f"expected {len(source.files)} / {source.total_bytes}: "
                            + "; ".join(problems))


def check_bytes(source: Tree, src_root: Path, dest: Path) -> None:
    """Raise MismatchError unless every file under `dest` equals its source byte for byte."""
    for rel in sorted(source.files):
        with open(src_root / rel, "rb") as a, open(dest / rel, "rb") as b:
            offset = 0
            while True:
                x, y = a.read(CHUNK), b.read(CHUNK)
                if x != y:
                    raise MismatchError(f"{dest / rel}: content differs from the source "
                                        f"in bytes {offset}..{offset + max(len(x), len(y))}")
                if not x:
                    break
                offset += len(x)
