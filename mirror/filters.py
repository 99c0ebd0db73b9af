"""Include/exclude patterns (``--include``, ``--exclude``, ``--exclude-from``), rsync-style.

One list in command-line order; the first rule whose pattern matches a path decides; a path
no rule matches is included. Paths are the components below the SPEC's path (as rsync
matches against the transfer root), and a pattern is matched so (README, "Filters"):

- without ``/`` (a trailing one aside) and without ``**``: against the last component;
- otherwise against the whole relative path: anchored at the SPEC's path if it starts
  with ``/``, else against any tail of it that starts at a component boundary;
- a trailing ``/`` matches directories only; ``dir/***`` matches ``dir`` and all below it;
- ``*`` is any run of characters within a component, ``**`` any run crossing them, ``?``
  one character (never ``/``), ``[...]`` one of a set (``[!...]`` or ``[^...]``: not in
  it), ``\\`` makes the next character literal.

Standard library only: mirror-init checks the patterns (a bad one is a usage error, exit
status 2) and the mirror server applies them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

#: Longest pattern, in UTF-8 bytes (a wire path is at most 4096).
MAX_PATTERN_BYTES = 4096
#: Most rules in one job.
MAX_RULES = 1000

Parts = tuple[str, ...]


class PatternError(ValueError):
    """A pattern that cannot be used; the message says why."""


class Rule(NamedTuple):
    """One ``--include`` (``include=True``) or ``--exclude`` pattern, as typed. (A named
    tuple: mirror-init imports it, see `mirror.job_options.JobOptions`.)"""

    include: bool
    pattern: str


def _translate(glob: str, whole: str) -> str:
    """The regular expression (without anchors) for the glob ``glob``; ``whole`` is the
    pattern as typed, for error messages."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        ch = glob[i]
        if ch == "*":
            if glob.startswith("**", i):
                j = i
                while j < n and glob[j] == "*":
                    j += 1
                if (i == 0 or glob[i - 1] == "/") and glob.startswith("/", j):
                    # "**/" at a component start: zero or more whole directories, so
                    # "**/*.iso" matches "x.iso" too (rsync's and git's wildmatch).
                    out.append("(?:.*/)?")
                    j += 1
                else:
                    out.append(".*")
                i = j
            else:
                out.append("[^/]*")
                i += 1
        elif ch == "?":
            out.append("[^/]")
            i += 1
        elif ch == "\\":
            if i + 1 >= n:
                raise PatternError(f"bad pattern {whole!r}: ends with a lone '\\'")
            out.append(re.escape(glob[i + 1]))
            i += 2
        elif ch == "[":
            j = i + 1
            negate = j < n and glob[j] in "!^"
            if negate:
                j += 1
            members: list[str] = []
            first = True
            while j < n and (glob[j] != "]" or first):
                first = False
                if glob[j] == "\\" and j + 1 < n:
                    j += 1
                if glob[j] == "/":
                    raise PatternError(f"bad pattern {whole!r}: '/' inside [...]")
                if j + 2 < n and glob[j + 1] == "-" and glob[j + 2] != "]":
                    lo, hi = glob[j], glob[j + 2]
                    if lo > hi:
                        raise PatternError(f"bad pattern {whole!r}: range {lo}-{hi} is "
                                           "reversed")
                    members.append(re.escape(lo) + "-" + re.escape(hi))
                    j += 3
                    continue
                members.append(re.escape(glob[j]))
                j += 1
            if j >= n:
                raise PatternError(f"bad pattern {whole!r}: '[' without its ']'")
            # A set never matches '/': '*' and '?' stay within a component, so does '[...]'.
            out.append("[" + ("^/" if negate else "") + "".join(members) + "]")
            i = j + 1
        else:
            out.append(re.escape(ch))
            i += 1
    return "".join(out)


class Pattern:
    """A compiled pattern: `matches` a relative path (its components) and its kind."""

    __slots__ = ("text", "dirs_only", "_whole", "_regex")

    def __init__(self, text: str) -> None:
        check_pattern_text(text)
        self.text = text
        body = text
        self.dirs_only = False
        suffixes = [""]
        if body.endswith("/***"):
            # rsync's "dir/***": the directory itself and everything below it.
            body = body[:-4]
            suffixes = ["", "/.*"]
            if not body.strip("/"):
                raise PatternError(f"bad pattern {text!r}: nothing before '/***'")
        elif body.endswith("/"):
            self.dirs_only = True
            body = body.rstrip("/")
        if not body or not body.strip("/"):
            raise PatternError(f"bad pattern {text!r}: it names no file or directory")
        anchored = body.startswith("/")
        body = body.lstrip("/")
        self._whole = anchored or "/" in body or "**" in body or len(suffixes) > 1
        core = _translate(body, text)
        prefix = "" if anchored or not self._whole else "(?:.*/)?"
        alternatives = "|".join(core + s for s in suffixes)
        self._regex = re.compile(f"{prefix}(?:{alternatives})", re.DOTALL)

    def matches(self, parts: Parts, is_dir: bool) -> bool:
        """Whether this pattern matches the path ``parts`` (relative to the SPEC's path)."""
        if self.dirs_only and not is_dir:
            return False
        subject = "/".join(parts) if self._whole else parts[-1]
        return self._regex.fullmatch(subject) is not None

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"


def check_pattern_text(text: str) -> None:
    """Refuse a pattern that is empty, too long, or holds control characters or NUL."""
    if not isinstance(text, str) or not text:
        raise PatternError("empty pattern")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise PatternError(f"bad pattern {text!r}: not valid UTF-8") from None
    if size > MAX_PATTERN_BYTES:
        raise PatternError(f"pattern longer than {MAX_PATTERN_BYTES} bytes")
    for ch in text:
        code = ord(ch)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            raise PatternError(f"bad pattern {text!r}: control character U+{code:04X}")


class FilterList:
    """Rules in order; the first that matches a path decides, and no match includes it."""

    def __init__(self, rules: Sequence[Rule] = ()) -> None:
        if len(rules) > MAX_RULES:
            raise PatternError(f"more than {MAX_RULES} include/exclude patterns")
        self.rules = tuple(rules)
        self._compiled = [(r.include, Pattern(r.pattern)) for r in rules]

    def __bool__(self) -> bool:
        return bool(self._compiled)

    def included(self, parts: Parts, is_dir: bool) -> bool:
        """Whether the path ``parts`` (relative to the SPEC's path, not empty) is kept in
        the transfer: fetched, and deleted if the source no longer has it."""
        for include, pattern in self._compiled:
            if pattern.matches(parts, is_dir):
                return include
        return True


def read_exclude_from(lines: Iterable[str], source: str) -> list[Rule]:
    """The rules of an ``--exclude-from`` file, as rsync reads one.

    Blank lines and lines starting with ``#`` or ``;`` are ignored; ``+ PATTERN`` is an
    include, ``- PATTERN`` an exclude, any other line an exclude of the whole line. The line
    end is dropped; other spaces are part of the pattern. ``source`` names the file in
    errors.
    """
    rules = []
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line[0] in "#;":
            continue
        include = False
        if line.startswith(("+ ", "- ")):
            include = line[0] == "+"
            line = line[2:]
        try:
            Pattern(line)
        except PatternError as e:
            raise PatternError(f"{source}, line {number}: {e}") from None
        rules.append(Rule(include, line))
    return rules


__all__ = [
    "MAX_PATTERN_BYTES",
    "MAX_RULES",
    "FilterList",
    "Pattern",
    "PatternError",
    "Rule",
    "check_pattern_text",
    "read_exclude_from",
]
