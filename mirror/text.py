"""The one rule that makes untrusted text safe to show: `printable`.

Names, messages and control-line fields come from peers we do not control. Shown raw, they
could clear or rewrite a terminal (``ESC[2J``, ``\\r``), reverse the visible order of a line
(U+202E), hide characters (U+200B) or flood a log. Every place that puts such text in an
error message, a log line or on the terminal calls `printable`, so there is one rule:

- bytes are decoded as UTF-8; each byte that is not part of valid UTF-8 is shown as ``\\xNN``;
- every character that `str.isprintable` refuses (C0 and C1 controls, DEL, format and bidi
  characters, lone surrogates, private use, unassigned code points, every separator but the
  space) is shown as ``\\t``, ``\\n``, ``\\r``, ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``, as
  Python's ``ascii()`` spells it; all other text, non-ASCII letters included, is kept;
- the result is at most ``limit`` characters; if anything was dropped it ends with ``…``
  (an escape is never cut in half).

A backslash in the text is kept as is, not doubled: the output is then printable text that
the rule leaves unchanged, so a message escaped by the content server, carried by the mirror
server and escaped again by mirror-init reads the same (``\\x1b``, never ``\\\\x1b``). The
price is that a literal ``\\x1b`` and an ESC look alike: acceptable for text that is only
read by people, never parsed back. Nothing here is a wire format (the control protocol's
percent-encoding is `mirror.wire.control`'s) and nothing reaches a file (`mirror.paths`).
"""

from __future__ import annotations

#: Default cap on the characters `printable` returns (a line of an error report).
DEFAULT_LIMIT = 1024
ELLIPSIS = "\u2026"

_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch in _SHORT:
        return _SHORT[ch]
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(raw: bytes | bytearray | memoryview | str, limit: int = DEFAULT_LIMIT) -> str:
    """``raw`` made safe to show on a terminal or in a log, in at most ``limit`` characters.

    See the module docstring for the rule. Only a prefix of ``raw`` is looked at, so the
    cost is bounded by ``limit`` whatever the input size.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    # limit + 1 characters are enough to know whether anything is dropped; a character is
    # at most 4 bytes of UTF-8 (an invalid byte becomes one character).
    if isinstance(raw, str):
        text, more = raw[: limit + 1], len(raw) > limit + 1
        from_bytes = False
    else:
        prefix = bytes(raw[: 4 * (limit + 1)])
        # surrogateescape: each invalid byte becomes U+DC80..U+DCFF, shown below as \xNN.
        text, more = prefix.decode("utf-8", "surrogateescape"), len(raw) > len(prefix)
        from_bytes = True
    if not more and len(text) <= limit and text.isprintable():
        return text
    pieces: list[str] = []
    size = 0
    for ch in text:
        if ch.isprintable():
            piece = ch
        elif from_bytes and 0xDC80 <= ord(ch) <= 0xDCFF:
            piece = f"\\x{ord(ch) - 0xDC00:02x}"
        else:
            piece = _escape(ch)
        if size + len(piece) > limit:
            break
        pieces.append(piece)
        size += len(piece)
    else:
        if not more:
            return "".join(pieces)
    # Something is dropped: make room for the ellipsis without cutting an escape.
    while pieces and size + len(ELLIPSIS) > limit:
        size -= len(pieces.pop())
    return "".join(pieces) + ELLIPSIS
