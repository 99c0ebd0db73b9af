"""Parse the ``-s`` SPECs of mirror-init into `SourceRequest`s.

Grammar (see `SPEC_HELP`, which the ``--help`` text shows)::

    SPECS = SPEC ("," SPEC)*
    SPEC  = HOST ":" PORT ":" PATH [":" DELAY]
    HOST  = name | IPv4 address | "[" IPv6 address "]"

The last ``:`` of ``PATH:DELAY`` separates the delay, so a PATH that contains ``:`` must be
followed by an explicit ``:DELAY``. A PATH cannot contain ``,`` (it separates SPECs). Host
names are resolved here, at parse time, so that a typo is reported before any job starts.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterable

from mirror.wire.control import (
    MAX_DELAY,
    MAX_SOURCES,
    ControlError,
    SourceRequest,
    check_host,
    check_request_path,
)

SPEC_HELP = f"""\
A SPEC names one tree to mirror: HOST:PORT:PATH[:DELAY]
  HOST   the content server: a name, an IPv4 address, or an IPv6 address in
         brackets ([::1]); names must resolve when mirror-init starts.
  PORT   its TCP port, 1..65535.
  PATH   the tree, relative to the exported root; '.' or '/' is the whole export.
  DELAY  optional seconds (fractions allowed, 0..{MAX_DELAY:g}, default 0) the content
         server waits before sending each file.
Several SPECs are separated by ',' (-s a:1:x,b:2:y) or given with several -s
options, {MAX_SOURCES} at most; so a PATH cannot contain ','. The last ':' separates
DELAY: a PATH containing ':' needs an explicit delay (h:8000:a:b:0 is the path 'a:b').\
"""

Resolver = Callable[[str, int], None]

_PORT = re.compile(r"[0-9]{1,5}")
_DELAY = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


class SpecError(ValueError):
    """A SPEC that cannot be used; the one-line message names it and says why."""


def check_resolvable(host: str, port: int) -> None:
    """Raise `SpecError` unless ``host`` resolves to a TCP address (blocking DNS lookup)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as e:
        # gaierror for unknown names; UnicodeError from the IDNA codec for odd labels.
        raise SpecError(f"unknown host {host!r}: {getattr(e, 'strerror', None) or e}") from None
    if not infos:
        raise SpecError(f"unknown host {host!r}: no address")


def _fail(spec: str, why: str) -> SpecError:
    return SpecError(f"bad SPEC {spec!r}: {why}")


def _split_host(spec: str) -> tuple[str, str]:
    """Split ``HOST:REST``; brackets around an IPv6 address are removed."""
    if spec.startswith("["):
        end = spec.find("]")
        if end < 0:
            raise _fail(spec, "missing ']' after the IPv6 address")
        host, rest = spec[1:end], spec[end + 1 :]
        if not host:
            raise _fail(spec, "empty HOST")
        if ":" not in host:
            raise _fail(spec, "brackets are only for IPv6 addresses")
        if not rest.startswith(":"):
            raise _fail(spec, "expected ':PORT' after ']'")
        return host, rest[1:]
    host, sep, rest = spec.partition(":")
    if not host:
        raise _fail(spec, "empty HOST")
    if not sep:
        raise _fail(spec, "missing PORT (expected HOST:PORT:PATH[:DELAY])")
    return host, rest


def _parse_port(spec: str, text: str) -> int:
    if not _PORT.fullmatch(text):
        why = f"bad PORT {text!r} (expected 1..65535)" if text else "missing PORT"
        if not spec.startswith("[") and "::" in spec:
            # "fe80::1:80:x" without brackets splits at its first ':'.
            why += "; an IPv6 HOST needs brackets: [::1]:PORT:PATH"
        raise _fail(spec, why)
    port = int(text)
    if not 1 <= port <= 65535:
        raise _fail(spec, f"PORT {port} out of range 1..65535")
    return port


def _parse_delay(spec: str, text: str) -> float:
    if text.startswith("-"):
        raise _fail(spec, f"negative DELAY {text!r}")
    if not _DELAY.fullmatch(text):
        raise _fail(
            spec,
            f"bad DELAY {text!r}: expected seconds such as 2 or 0.5"
            " (a PATH containing ':' needs an explicit :DELAY)",
        )
    delay = float(text)
    if delay > MAX_DELAY:
        raise _fail(spec, f"DELAY {text} over the limit of {MAX_DELAY:g} seconds")
    return delay


def _parse_syntax(spec: str) -> SourceRequest:
    host, rest = _split_host(spec)
    try:
        check_host(host)
    except ControlError as e:
        raise _fail(spec, f"bad HOST: {e}") from None
    port_text, sep, rest = rest.partition(":")
    port = _parse_port(spec, port_text)
    if not sep or not rest:
        raise _fail(spec, "missing PATH (use '.' for the whole export)")
    path_text, sep, delay_text = rest.rpartition(":")
    if sep:
        if not path_text:
            raise _fail(spec, "missing PATH (use '.' for the whole export)")
        delay = _parse_delay(spec, delay_text)
    else:
        path_text, delay = delay_text, 0.0
    try:
        path = check_request_path(path_text)
    except ControlError as e:
        raise _fail(spec, str(e)) from None
    return SourceRequest(host=host, port=port, path=path, delay=delay)


def _resolve(spec: str, source: SourceRequest, resolve: Resolver) -> None:
    try:
        resolve(source.host, source.port)
    except SpecError as e:
        raise _fail(spec, str(e)) from None


def parse_spec(spec: str, resolve: Resolver = check_resolvable) -> SourceRequest:
    """Parse one SPEC; ``resolve(host, port)`` raises `SpecError` for an unknown host."""
    source = _parse_syntax(spec)
    _resolve(spec, source, resolve)
    return source


def parse_specs(values: Iterable[str], resolve: Resolver = check_resolvable) -> list[SourceRequest]:
    """Parse the values of every ``-s`` option, each a comma-separated list of SPECs.

    Refuses an empty list, empty items (stray commas), more than `MAX_SOURCES` SPECs, and the
    same HOST:PORT:PATH twice (two writers of one mirror directory). Every SPEC is checked
    before any name is looked up, each host once: DNS can be slow, a typo should not wait.
    """
    parsed: list[tuple[str, SourceRequest]] = []
    seen: set[tuple[str, int, str]] = set()
    for value in values:
        if not value:
            raise SpecError("empty SPEC list")
        for spec in value.split(","):
            if not spec:
                raise SpecError(f"empty SPEC in {value!r} (a stray ',')")
            source = _parse_syntax(spec)
            key = (source.host, source.port, source.path)
            if key in seen:
                raise _fail(spec, "the same HOST:PORT:PATH is given twice")
            seen.add(key)
            parsed.append((spec, source))
            if len(parsed) > MAX_SOURCES:
                raise SpecError(f"more than {MAX_SOURCES} SPECs")
    if not parsed:
        raise SpecError("no SPEC given (use -s HOST:PORT:PATH[:DELAY])")
    resolved: set[str] = set()
    for spec, source in parsed:
        if source.host not in resolved:
            _resolve(spec, source, resolve)
            resolved.add(source.host)
    return [source for _, source in parsed]


def format_source(source: SourceRequest) -> str:
    """``host:port:path`` as a user would write it (IPv6 in brackets, ``.`` for the export)."""
    host = f"[{source.host}]" if ":" in source.host else source.host
    return f"{host}:{source.port}:{source.path or '.'}"
