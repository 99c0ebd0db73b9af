"""``--known-hosts FILE``: the servers a client pins, by key, in the spirit of OpenSSH's.

A line is ``HOST:PORT FINGERPRINT [comment]``: HOST as the client is told to reach it (a
name, an IPv4 address, or an IPv6 address in brackets, ``[::1]:9000``), or ``unix:PATH`` for
a UNIX socket; ``#`` starts a comment line. A host may have several lines (a key being
rolled over): any of its keys is accepted. A client uses TLS towards a host that has a pin
and refuses a server whose key matches none; without a pin it talks plain TCP to loopback
only. Pins never go into a SPEC (whose last ``:`` is the delay).
"""

from __future__ import annotations

import ipaddress

from mirror.security.fingerprint import FingerprintError, parse_fingerprint
from mirror.security.watched import WatchedFile, content_lines

Pins = dict[str, frozenset[str]]


def host_key(host: str, port: int) -> str:
    """How ``host``:``port`` is written in a known-hosts file: names in lowercase, IPv6
    addresses in brackets and in their short form."""
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"{host.lower()}:{port}"
    if address.version == 6:
        return f"[{address.compressed}]:{port}"
    return f"{address}:{port}"


def unix_key(path: str) -> str:
    """How a UNIX socket is written in a known-hosts file."""
    return f"unix:{path}"


def _line_key(text: str) -> str:
    if text.startswith("unix:"):
        return text
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text[:80]!r} is not HOST:PORT")
    if ":" in host and not host.startswith("["):
        raise ValueError(f"{text[:80]!r}: write an IPv6 address in brackets, [ADDRESS]:PORT")
    return host_key(host, int(port))


def parse_known_hosts(text: str, path: str) -> tuple[Pins, list[str]]:
    """The pins in ``text`` (host key -> fingerprints), and the problems found."""
    pins: dict[str, set[str]] = {}
    problems = []
    for number, fields in content_lines(text):
        try:
            if len(fields) < 2:
                raise ValueError("expected HOST:PORT FINGERPRINT")
            key = _line_key(fields[0])
            pins.setdefault(key, set()).add(parse_fingerprint(fields[1]))
        except (ValueError, FingerprintError) as e:
            problems.append(f"{path}:{number}: {e}")
    return {key: frozenset(fps) for key, fps in pins.items()}, problems


def known_hosts(path: str) -> WatchedFile[Pins]:
    """The pins at ``path`` (not read yet: call ``load``)."""
    return WatchedFile(path, parse_known_hosts, {}, forget=False)


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses: where plain TCP stays on this machine."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
