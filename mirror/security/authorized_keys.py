"""``--authorized-keys FILE``: the fingerprints of the peers a secured daemon lets in.

One fingerprint a line (``sha256:`` and 64 hex digits, as ``mirror-admin keygen`` and
``mirror-admin fingerprint`` print it), optionally followed by a comment (a name, say);
``#`` starts a comment line. Removing a line revokes the key: the file is read again when it
changes, at the next connection. (``--accounts`` adds users, groups and grants beside it.)
"""

from __future__ import annotations

from mirror.security.fingerprint import FingerprintError, parse_fingerprint
from mirror.security.watched import WatchedFile, content_lines


def parse_authorized_keys(text: str, path: str) -> tuple[frozenset[str], list[str]]:
    """The fingerprints in ``text``, and the problems found (one per bad line)."""
    keys = set()
    problems = []
    for number, fields in content_lines(text):
        try:
            keys.add(parse_fingerprint(fields[0]))
        except FingerprintError as e:
            problems.append(f"{path}:{number}: {e}")
    return frozenset(keys), problems


def authorized_keys(path: str) -> WatchedFile[frozenset[str]]:
    """The allow-list at ``path`` (not read yet: call ``load``)."""
    return WatchedFile(path, parse_authorized_keys, frozenset())
