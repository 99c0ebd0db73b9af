"""Symbolic link targets from the network: which are well formed, and which are safe.

A link target is not a path the mirror opens (`mirror.paths` owns those): it is the text a
symlink holds, resolved later by whoever follows the link. Two checks, both pure:

- `parse_target`: the target is an untrusted, bounded string: 1 to `MAX_TARGET_BYTES`
  bytes of valid UTF-8, no NUL and no control character. The content server sends only such
  targets (others are counted as not exported); the mirror server refuses any other.
- `check_safe`: rsync's ``--safe-links``: the target, resolved from the link's directory,
  stays inside the mirrored tree (``MIRROR_DIR/HOST_PORT/PATH`` of the SPEC). An absolute
  target is unsafe; so is one whose leading ``..`` climb above the tree.

Hazard: a lexical check alone is not enough once links may point at links. With
``d/l -> ..`` (safe: the tree's top), ``x -> d/l/..`` looks like ``d`` lexically but the
kernel resolves ``d/l`` first, then ``..`` of *that*: the directory above the tree (the
class of rsync CVE-2024-12088). So ``..`` is allowed only at the start of a target: a
target climbs through the real directories above the link (the mirror never places
anything through a link, so those are directories), then only descends. By induction
every link placed resolves inside the tree, whatever links it passes through.
"""

from __future__ import annotations

from mirror import paths
from mirror.text import printable

#: Longest target (PATH_MAX, 4096, less the terminating NUL).
MAX_TARGET_BYTES = 4095
#: A target quoted in a message is cut to this many characters.
SHOWN_TARGET = 120


class UnsafeTarget(ValueError):
    """A link target that will not be placed; the message says why."""


def show_target(raw: bytes | str) -> str:
    """A target as quoted in messages (`mirror.text.printable`'s rule, cut short)."""
    return printable(raw, SHOWN_TARGET)


def parse_target(raw: bytes) -> str:
    """Validate a link target as received; return it as text, or raise `UnsafeTarget`."""
    if not raw:
        raise UnsafeTarget("empty link target")
    if len(raw) > MAX_TARGET_BYTES:
        raise UnsafeTarget(f"link target longer than {MAX_TARGET_BYTES} bytes")
    if b"\0" in raw:
        raise UnsafeTarget("NUL in link target")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeTarget("link target is not valid UTF-8") from None
    for ch in text:
        code = ord(ch)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            raise UnsafeTarget(f"control character U+{code:04X} in link target")
    return text


def check_safe(link: paths.Parts, tree: paths.Parts, target: str) -> None:
    """Raise `UnsafeTarget` unless ``target``, the target of the link at the wire path
    ``link``, resolved from the link's directory, stays inside ``tree`` (the SPEC's path;
    ``link`` is below it) without ever climbing above it, and climbs only at its start
    (see the module docstring)."""
    if link[: len(tree)] != tree or len(link) <= len(tree):
        raise UnsafeTarget("link is not inside the mirrored tree")
    if target.startswith("/"):
        raise UnsafeTarget(f"absolute target '{show_target(target)}'")
    depth = len(link) - 1 - len(tree)  # directories between the tree's top and the link
    descended = False
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if descended:
                raise UnsafeTarget(f"target '{show_target(target)}' climbs ('..') after a "
                                   "name: it could leave the tree through another link")
            depth -= 1
            if depth < 0:
                raise UnsafeTarget(f"target '{show_target(target)}' leads outside the "
                                   "mirrored tree")
        else:
            descended = True
