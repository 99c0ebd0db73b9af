"""mirror-init's ``--identity``, ``--known-hosts`` and ``--insecure``: TLS 1.3 to a pinned
mirror server with the standard library's ``ssl`` (mirror-init imports no Twisted).

The server's certificate is not checked against any authority: its public key must match a
pin of ``--known-hosts`` for the host and port (or ``unix:PATH``) mirror-init was told to
reach, or mirror-init hangs up before sending anything. Without a pin, plain TCP goes to
loopback only (``--insecure``: anywhere).
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from mirror.initiator.client import (
    ConnectionLostBeforeDone,
    ControlClientError,
    MirrorServerUnreachable,
)
from mirror.security.fingerprint import FingerprintError, fingerprint_of_certificate
from mirror.security.identity_files import IdentityError, IdentityPaths, identity_paths
from mirror.security.known_hosts import Pins, host_key, is_loopback_host, known_hosts, unix_key
from mirror.security.watched import ConfigFileError
from mirror.text import printable

if TYPE_CHECKING:
    import ssl

Opener = Callable[[str, int, "float | None"], socket.socket]


class ServerKeyMismatch(ControlClientError):
    """The mirror server presented a key that matches no pin."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """mirror-init's TLS options."""
    parser.add_argument(
        "--identity", metavar="DIR",
        help="Identity directory (key.pem, cert.pem: mirror-admin keygen DIR): the client "
             "certificate shown to a secured mirror server.")
    parser.add_argument(
        "--known-hosts", metavar="FILE",
        help="File of server pins, HOST:PORT FINGERPRINT a line (unix:PATH FINGERPRINT for "
             "a socket): TLS to a pinned mirror server, refused if its key differs.")
    parser.add_argument(
        "--insecure", action="store_true",
        help="Allow plain TCP to a mirror server off the loopback that has no pin.")


def check_arguments(options: argparse.Namespace) -> str | None:
    """Load ``--identity`` and ``--known-hosts`` into ``options.identity_paths`` and
    ``options.pins``; the error message, or None."""
    options.identity_paths = None
    options.pins = {}
    if options.identity is not None:
        try:
            options.identity_paths = identity_paths(options.identity)
        except IdentityError as e:
            return f"--identity: {e}"
    if options.known_hosts is not None:
        try:
            options.pins = known_hosts(options.known_hosts).load()
        except ConfigFileError as e:
            return f"--known-hosts: {e}"
    return None


def _context(identity: IdentityPaths | None) -> ssl.SSLContext:
    import ssl  # only when a pin asks for TLS: a plain job does not load OpenSSL

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    # The key is pinned: no authority and no name to check (a self-signed certificate).
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if identity is not None:
        ctx.load_cert_chain(identity.cert, identity.key)
    return ctx


def wrap(sock: socket.socket, pins: frozenset[str], name: str,
         identity: IdentityPaths | None) -> socket.socket:
    """``sock`` after a TLS handshake with a server whose key is one of ``pins``."""
    import ssl

    try:
        tls = _context(identity).wrap_socket(sock)
    except (ssl.SSLError, OSError) as e:
        sock.close()
        raise MirrorServerUnreachable(
            f"TLS handshake with the mirror server at {printable(name)} failed: "
            f"{printable(str(e))}") from None
    der = tls.getpeercert(binary_form=True)
    try:
        presented = fingerprint_of_certificate(der) if der else "none"
    except FingerprintError:
        presented = "unreadable"
    if presented not in pins:
        tls.close()
        raise ServerKeyMismatch(
            f"the mirror server at {printable(name)} presented key {presented}, which "
            f"matches no pin for it in --known-hosts: nothing sent")
    return tls


def secure_opener(options: argparse.Namespace, opener: Opener) -> Opener:
    """``opener`` (TCP or the UNIX socket) with TLS where ``--known-hosts`` pins the
    mirror server, and plain only where that is allowed."""
    pins: Pins = options.pins
    identity = options.identity_paths
    options.tls_used = False

    def open_secured(host: str, port: int, timeout: float | None) -> socket.socket:
        unix = options.unix_socket
        key = unix_key(unix) if unix else host_key(host, port)
        pinned = pins.get(key)
        if not pinned:
            if not (unix or options.insecure or is_loopback_host(host)):
                raise MirrorServerUnreachable(
                    f"no pin for {printable(key)} in --known-hosts: plain TCP goes to "
                    f"loopback only (add the mirror server's fingerprint to --known-hosts, "
                    f"or --insecure)")
            return opener(host, port, timeout)
        options.tls_used = True
        return wrap(opener(host, port, timeout), pinned, key, identity)

    return open_secured


def explain(error: ControlClientError, options: argparse.Namespace) -> str:
    """The message of ``error``, with a hint when a plain connection was closed before the
    job was even accepted: what a secured (TLS) mirror server does to clear text."""
    message = str(error)
    if (isinstance(error, ConnectionLostBeforeDone) and not getattr(options, "tls_used", True)
            and (error.result is None or error.result.job_id is None)):
        message += (" (a secured mirror server closes plain connections: pin its key in "
                    "--known-hosts to use TLS)")
    return message
