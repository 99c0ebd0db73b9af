"""Transfer rates on command lines: ``RATE`` is bytes per second, an integer with an optional
``K``, ``M`` or ``G`` suffix (powers of 1024, either case): ``500K``, ``8M``, ``1048576``.

The one parser of every rate flag (mirror-init's ``--bwlimit``, the mirror server's
``--min-rate``, and a content server's ``--max-rate`` when it has one), so that they all read
alike. Standard library only: mirror-init imports it.

Unlike rsync's ``--bwlimit``, a plain number is bytes, not KiB: the same rule as every other
size we take (``--max-file-size``), and as rclone's ``--bwlimit`` spells it with a ``B``.
"""

from __future__ import annotations

import re

#: The suffixes and what they multiply by.
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
#: Largest rate accepted (the control protocol's largest number).
MAX_RATE = 2**64 - 1
#: What a RATE looks like, for help texts and error messages.
RATE_SYNTAX = "an integer number of bytes per second with an optional K, M or G suffix " \
    "(powers of 1024), e.g. 500K"

_RATE = re.compile(r"([0-9]{1,30})([KMG]?)", re.IGNORECASE)


def parse_rate(text: str) -> int:
    """Bytes per second for ``text`` (``"0"`` is 0: the callers read it as "no limit").

    Raises `ValueError` whose message says what a RATE is.
    """
    match = _RATE.fullmatch(text.strip()) if text.isascii() else None
    if match is None:
        raise ValueError(f"{text!r} is not a rate: expected {RATE_SYNTAX}")
    value = int(match.group(1)) * UNITS[match.group(2).upper()]
    if value > MAX_RATE:
        raise ValueError(f"{text!r}: a rate must be at most {MAX_RATE} bytes per second")
    return value


def format_rate(rate: float) -> str:
    """A rate for people: ``"512 KiB/s"``, ``"1.5 MiB/s"``, ``"12 B/s"``."""
    for suffix, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if rate >= size:
            return f"{rate / size:.4g} {suffix}/s"
    return f"{rate:.4g} B/s"
