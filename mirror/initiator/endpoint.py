"""mirror-init's ``--connect ENDPOINT``: the mirror server as a client endpoint string, in the
two forms its ``--listen`` offers to clients: ``unix:PATH`` and ``tcp:HOST:PORT``.

Standard library only (mirror-init does not import Twisted), so this is not Twisted's
``clientFromString``; it reads exactly these two forms, and says what is wrong with anything
else. HOST is a name, an IPv4 address, or an IPv6 address written ``[::1]``, bare (``::1``:
the port is what follows the last colon) or escaped as Twisted's strings want it
(``\\:\\:1``).
"""

from __future__ import annotations

import socket
from typing import NamedTuple

from mirror.initiator.client import MirrorServerUnreachable
from mirror.text import printable
from mirror.wire.control import ControlError, check_host

FORMS = "unix:PATH or tcp:HOST:PORT"


class EndpointError(ValueError):
    """A ``--connect`` value that is not one of the two forms; the message says why."""


class ClientEndpoint(NamedTuple):
    """Where the mirror server listens: a UNIX socket ``path``, or ``host`` and ``port``.
    (A named tuple: see `mirror.job_options.JobOptions`.)"""

    path: str | None = None
    host: str | None = None
    port: int | None = None


def parse_client_endpoint(text: str) -> ClientEndpoint:
    """Read ``unix:PATH`` or ``tcp:HOST:PORT``; raise `EndpointError` saying what is wrong."""
    kind, colon, rest = text.partition(":")
    shown = printable(text, 80)
    if not colon or kind not in ("unix", "tcp"):
        raise EndpointError(f"'{shown}': expected {FORMS}")
    if kind == "unix":
        # A path may hold colons; "path=" is Twisted's keyword spelling of the same.
        path = rest.removeprefix("path=")
        if not path:
            raise EndpointError(f"'{shown}': the socket path is empty (unix:/run/mirror.sock)")
        if "\0" in path:
            raise EndpointError(f"'{shown}': the socket path holds a NUL byte")
        return ClientEndpoint(path=path)
    host, colon, port = rest.rpartition(":")
    if not colon or not host:
        raise EndpointError(f"'{shown}': expected tcp:HOST:PORT")
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise EndpointError(f"'{shown}': the port must be 1 to 65535")
    host = _host(host, shown)
    return ClientEndpoint(host=host, port=int(port))


def _host(raw: str, shown: str) -> str:
    if raw.startswith("[") and raw.endswith("]"):
        raw = raw[1:-1]
    raw = raw.replace("\\:", ":")
    if ":" in raw:
        try:
            import ipaddress  # only for this form: mirror-init's start-up counts

            ipaddress.IPv6Address(raw)
        except ValueError:
            raise EndpointError(f"'{shown}': '{printable(raw, 60)}' is not an IPv6 address "
                                "(expected tcp:HOST:PORT)") from None
    try:
        return check_host(raw)
    except ControlError as e:
        raise EndpointError(f"'{shown}': {e}") from None


def connect_unix(path: str, timeout: float | None) -> socket.socket:
    """A connection to the mirror server's UNIX socket ``path``; `MirrorServerUnreachable`
    (naming the path) if none can be made."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except OSError as e:
        sock.close()
        reason = e.strerror or str(e) or type(e).__name__
        if isinstance(e, TimeoutError):
            reason = f"no answer within {timeout:g} seconds"
        raise MirrorServerUnreachable(
            f"cannot reach the mirror server at {printable(path)}: {printable(reason)}"
        ) from None
    return sock
