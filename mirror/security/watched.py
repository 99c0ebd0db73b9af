"""A small configuration file read again when it changes (sshd reads authorized_keys at each
login): revoking a key or adding a pin needs no restart.

`WatchedFile.refresh` is blocking (a ``stat``, and a read when the file changed): daemons run
it in a thread. A line that does not parse is an error when the file is first loaded (so the
operator sees it at once) and skipped with a warning on a later reload, as sshd skips it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

#: Parses a file's text: the value, and the problems found ("FILE:LINE: ...").
Parser = Callable[[str, str], tuple[T, list[str]]]


class ConfigFileError(Exception):
    """A file that is missing, unreadable or malformed; the message names it."""


class WatchedFile(Generic[T]):
    """The parsed contents of ``path``, re-read when its inode, size or mtime changes."""

    def __init__(self, path: str, parse: Parser[T], empty: T, forget: bool = True) -> None:
        """``forget``: whether a file that cannot be read any more holds nothing (an
        allow-list: fail closed) or what it last held (pins: a vanished file must not
        turn a pinned host into one that may be reached in clear)."""
        # Absolute: a daemonised twistd may change its directory after reading its flags.
        self.path = os.path.abspath(path)
        self._parse = parse
        self._empty = empty
        self._forget = forget
        self._stamp: tuple[int, int, int] | None = None
        self.value: T = empty
        #: Problems found by the last reload (for the caller to log).
        self.problems: list[str] = []

    def load(self) -> T:
        """First read: `ConfigFileError` if the file is missing, unreadable or malformed."""
        try:
            changed = self.refresh()
        except OSError as e:
            raise ConfigFileError(f"{self.path}: {(e.strerror or str(e)).lower()}") from None
        if changed and self.problems:
            raise ConfigFileError(self.problems[0])
        return self.value

    def refresh(self) -> bool:
        """Read the file again if it changed; True if it did. A file that cannot be read
        raises the `OSError` (see ``forget`` for what it holds then)."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp == self._stamp:
                return False
            with open(self.path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            self._stamp = None
            if self._forget:
                self.value = self._empty
            raise
        self.value, self.problems = self._parse(text, self.path)
        self._stamp = stamp
        return True


def content_lines(text: str) -> list[tuple[int, list[str]]]:
    """The non-blank, non-comment lines of ``text`` (``#`` starts a comment line), as their
    line numbers and whitespace-separated fields."""
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            lines.append((number, fields))
    return lines
