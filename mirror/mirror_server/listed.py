"""The order of a LIST, checked with memory proportional to depth (issue 9).

A content server lists a tree in *canonical order* (doc/protocol.md): each directory before
its contents, names sorted within a directory. For paths split into components, that is
exactly Python's tuple order of the components, each compared as a ``str`` (by code point),
as the content server's walker sorts them (``mirror/content_server/listing.py``): a path's
contents follow it (a tuple is less than any tuple it is a prefix of), and ``a/z`` comes
before ``a b`` (``"a" < "a b"``), which comparing the joined strings would get wrong. For the
valid UTF-8 of wire paths, code-point order and the protocol's "by their UTF-8 bytes" agree
(UTF-8 preserves code-point order, and wire paths hold no lone surrogates).

So each accepted entry must come strictly after the previous one: a name listed twice, a
directory listed after entries inside it, any entry out of order is refused. Because all
contents of a directory come right after it, only one more check is needed: nothing may be
listed inside the previous entry if that was a file. Which of two contradicting entries would
win on disk would otherwise depend on the workers' timing. The checker keeps only the
previous accepted entry (its components and whether it is a directory): all of its ancestors
are directories, since anything listed inside a file is refused.
"""

from __future__ import annotations

from mirror import paths


class EntryRefused(Exception):
    """A LIST entry that will not be mirrored; the message says why."""


class ListingOrder:
    """The entries of one listing (and of its resumptions from a cursor, which go on in the
    same order), checked one by one against the previous accepted one."""

    __slots__ = ("_last", "_last_is_dir")

    def __init__(self) -> None:
        self._last: paths.Parts | None = None
        self._last_is_dir = False

    @property
    def last(self) -> paths.Parts | None:
        """The last entry accepted: all the state the check keeps."""
        return self._last

    def add(self, parts: paths.Parts, is_dir: bool) -> None:
        """Accept the next entry, or raise `EntryRefused` if it is not strictly after the
        previous accepted one in canonical order, or lies inside a file; a refused entry
        changes nothing."""
        last = self._last
        if last is not None:
            if parts == last:
                raise EntryRefused("listed twice; refused")
            if parts < last:
                if last[: len(parts)] == parts:
                    kind = "a directory" if is_dir else "a file"
                    raise EntryRefused(f"listed as {kind} after entries inside it; refused")
                raise EntryRefused("listed out of order (after a name that sorts later, or "
                                   "listed twice); refused")
            if not self._last_is_dir and parts[: len(last)] == last:
                raise EntryRefused("its parent was listed as a file; refused")
        self._last = parts
        self._last_is_dir = is_dir
