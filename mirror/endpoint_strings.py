"""What operators get wrong in Twisted endpoint strings (``--listen``), and how to say so.

In an endpoint string ``:`` separates the arguments, so an IPv6 address must have its
colons escaped: ``tcp:9400:interface=\\:\\:1``. Written plainly (``interface=::1``), its
pieces become extra positional arguments and Twisted fails with "_parseTCP() got multiple
values for argument 'interface'", which says nothing of the cause.
"""

from __future__ import annotations

import ipaddress
import re

#: A colon not escaped by a backslash: where Twisted splits an endpoint string.
_SEPARATOR = re.compile(r"(?<!\\):")


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def escaped_ipv6(description: str) -> str | None:
    """``description`` with the colons of each unescaped IPv6 address given as a
    ``key=value`` argument escaped, or None if it has no such address."""
    parts = _SEPARATOR.split(description)
    out: list[str] = []
    changed = False
    i = 0
    while i < len(parts):
        key, eq, value = parts[i].partition("=")
        if eq:
            # The value and the bare pieces after it, longest address first.
            run = [value]
            for piece in parts[i + 1:]:
                if "=" in piece:
                    break
                run.append(piece)
            for n in range(len(run), 1, -1):
                address = ":".join(run[:n])
                if _is_ipv6(address):
                    out.append(f"{key}={address.replace(':', chr(92) + ':')}")
                    i += n
                    changed = True
                    break
            else:
                out.append(parts[i])
                i += 1
        else:
            out.append(parts[i])
            i += 1
    return ":".join(out) if changed else None
