"""The one place where a name from the network becomes a local path.

Two halves:

- validation: `parse_wire_path`, `parse_request_path`, `parse_user_path` turn untrusted bytes
  or text into a tuple of safe components, or raise `UnsafePath` saying why;
- confinement: `open_parent_dir` / `open_dir` (and `open_or_make_dir`, the mirror store's,
  which makes missing directories) walk those components one by one under a root
  directory file descriptor with ``O_NOFOLLOW``, so that no symlink (at any level) and no
  rename race can lead outside the root. ``realpath()`` and string-prefix checks are not used:
  both have been bypassed in real tools.
"""

from __future__ import annotations

import errno
import os
import re
import stat

from mirror.text import printable

MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255
#: Prefix of the mirror server's own temporary files; never accepted from the network.
TEMP_PREFIX = ".mirror-tmp-"
#: The mirror server's state directory (``MIRROR_DIR/.mirror-state``); the name is reserved
#: like `TEMP_PREFIX`: never accepted from the network, so never listed, served or mirrored
#: into, and never deleted.
STATE_DIR_NAME = ".mirror-state"

Parts = tuple[str, ...]


class UnsafePath(ValueError):
    """A name from the network that must not be used as a path."""


#: What a name must not contain: C0 and C1 control characters, DEL, backslash.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def _check_text(text: str) -> None:
    # One regular-expression scan (C speed): every listed name of a tree passes here.
    bad = _FORBIDDEN.search(text)
    if bad is None:
        return
    ch = bad.group()
    if ch == "\\":
        raise UnsafePath("backslash in name")
    raise UnsafePath(f"control character U+{ord(ch):04X} in name")


def _decode(raw: bytes | str) -> str:
    if isinstance(raw, str):
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            raise UnsafePath("name is not valid UTF-8") from None
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafePath("name is not valid UTF-8") from None


#: One component that every rule of `_parse_checked` accepts, whatever its bytes: not ``.``
#: or ``..``, not reserved, no forbidden character, at most 63 characters (so at most 252
#: bytes of UTF-8, under `MAX_COMPONENT_BYTES`).
_SAFE_PART = (r"(?!\.\.?(?:/|\Z))(?!" + re.escape(TEMP_PREFIX) + r")(?!"
              + re.escape(STATE_DIR_NAME) + r"(?:/|\Z))[^/\x00-\x1f\x7f-\x9f\\]{1,63}")
_SAFE_PATH = re.compile(f"{_SAFE_PART}(?:/{_SAFE_PART})*")
#: Characters of a path `_SAFE_PATH` may take: at most 4 bytes each, within `MAX_PATH_BYTES`.
_SAFE_PATH_CHARS = MAX_PATH_BYTES // 4


def parse_wire_path(raw: bytes | str) -> Parts:
    """Validate a non-empty relative wire path and return its components.

    Raises `UnsafePath` for anything that could escape a root or confuse the receiver.
    """
    text = _decode(raw)
    # Every listed name passes here: one regular-expression match settles the usual name
    # (C speed); anything it does not match gets the rules one by one, and their message.
    if len(text) <= _SAFE_PATH_CHARS and _SAFE_PATH.fullmatch(text):
        return tuple(text.split("/"))
    return _parse_checked(text)


def _parse_checked(text: str) -> Parts:
    """`parse_wire_path`'s rules one by one, on decoded text."""
    if not text:
        raise UnsafePath("empty name")
    if len(text.encode("utf-8")) > MAX_PATH_BYTES:
        raise UnsafePath(f"name longer than {MAX_PATH_BYTES} bytes")
    if text.startswith("/"):
        raise UnsafePath("absolute name")
    _check_text(text)
    parts = tuple(text.split("/"))
    for part in parts:
        if part == "":
            raise UnsafePath("empty path component")
        if part in (".", ".."):
            raise UnsafePath(f"'{part}' path component")
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise UnsafePath(f"path component longer than {MAX_COMPONENT_BYTES} bytes")
        if is_reserved_name(part):
            raise UnsafePath(f"name uses the reserved prefix {TEMP_PREFIX!r}"
                             if part.startswith(TEMP_PREFIX) else
                             f"name {STATE_DIR_NAME!r} is reserved")
    return parts


def is_reserved_name(name: str) -> bool:
    """A component the mirror server keeps for itself (temporary files, its state
    directory): refused from the network, skipped when deleting."""
    return name.startswith(TEMP_PREFIX) or name == STATE_DIR_NAME


def parse_request_path(raw: bytes | str) -> Parts:
    """Validate the path of a LIST or FETCH request: ``""`` (the whole export) or a wire path.

    Strict, as it comes off the network; `parse_user_path` is the tolerant form for what
    users type.
    """
    return () if raw in ("", b"") else parse_wire_path(raw)


def parse_user_path(raw: bytes | str) -> Parts:
    """Validate a path a user typed (a SPEC's PATH); ``()`` means the whole export.

    ``""``, ``"."`` and ``"/"`` name the export root; one leading and one trailing ``/`` are
    tolerated (users type them); everything else follows `parse_wire_path`.
    """
    text = _decode(raw)
    if text in ("", ".", "/"):
        return ()
    if text.startswith("/"):
        text = text[1:]
    if text.endswith("/"):
        text = text[:-1]
    return parse_wire_path(text)


def join_parts(parts: Parts) -> str:
    """The wire form of validated components."""
    return "/".join(parts)


#: Flags that open a directory and refuse a symlink in its place.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir(root_fd: int, parts: Parts) -> int:
    """Open the directory ``parts`` under ``root_fd`` without following any symlink.

    Never creates anything (the content server's LIST and FETCH leave the export as it is).
    Raises `UnsafePath` if a component exists but is not a real directory (a symlink, a
    file), `FileNotFoundError` if one is missing. The caller closes the returned fd.
    """
    return _walk_dirs(root_fd, parts, None)


def open_or_make_dir(root_fd: int, parts: Parts, mode: int = 0o755) -> int:
    """`open_dir`, making missing directories (``mode``, subject to umask) on the way.

    For the mirror store, which builds the tree it receives; never for an export.
    """
    return _walk_dirs(root_fd, parts, mode)


def _walk_dirs(root_fd: int, parts: Parts, make_mode: int | None) -> int:
    """Open ``parts`` component by component; missing ones are made if ``make_mode`` is set."""
    # A new descriptor, not os.dup(): a duplicate shares the directory's read position, so
    # two walks listing through duplicates at once would each see part of it.
    fd = os.open(".", DIR_FLAGS, dir_fd=root_fd)
    try:
        for part in parts:
            try:
                nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if make_mode is None:
                    raise
                try:
                    os.mkdir(part, make_mode, dir_fd=fd)
                except FileExistsError:
                    pass  # made concurrently: the open below checks what it is
                nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(f"'{part}' is not a directory (a file or a link)") from None
                raise
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_parent_dir(root_fd: int, parts: Parts) -> int:
    """Open the directory that holds ``parts[-1]``; see `open_dir` (nothing is created)."""
    return open_dir(root_fd, parts[:-1])


def open_regular_file(root_fd: int, parts: Parts) -> tuple[int, os.stat_result]:
    """Open a regular file under ``root_fd`` for reading, refusing links and special files
    (see `open_regular_file_at`)."""
    parent = open_parent_dir(root_fd, parts)
    try:
        return open_regular_file_at(parent, parts[-1])
    finally:
        os.close(parent)


def open_regular_file_at(parent_fd: int, name: str) -> tuple[int, os.stat_result]:
    """Open the regular file ``name`` in the directory ``parent_fd`` (from `open_parent_dir`
    or `open_dir`; ``name`` one validated component) for reading: the form for many files
    of one directory, which opens the directory once.

    ``O_NONBLOCK`` keeps a FIFO from blocking the open; anything not a regular file is closed
    again and refused with `UnsafePath`.
    """
    # Refuse what is visibly not a regular file before opening it: opening some devices
    # has side effects. The fstat below still decides (the name may be swapped between).
    mode = os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode
    if stat.S_ISLNK(mode):
        raise UnsafePath("is a symbolic link")
    if not stat.S_ISREG(mode):
        raise UnsafePath("not a regular file")
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=parent_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafePath("is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath("not a regular file")
        return fd, st
    except BaseException:
        os.close(fd)
        raise


#: A name quoted in an error message is cut to this many characters, so that the reason
#: after it survives the 1024-byte cap of an ERROR frame.
DISPLAY_NAME_LIMIT = 200


def display_name(raw: bytes | str) -> str:
    """A name from the network as shown in an error message (`mirror.text.printable`'s rule,
    `DISPLAY_NAME_LIMIT` characters). Never used to reach a file."""
    return printable(raw, DISPLAY_NAME_LIMIT)
