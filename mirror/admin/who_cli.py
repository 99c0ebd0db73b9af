"""``mirror-admin who HOST:PORT --identity DIR --known-hosts FILE [--json]``: who is
connected to a secured daemon, and what they are doing.

One WHO request on the content protocol (a content server's port, or a mirror server's
``--serve`` port, whose answer covers its control port too), over TLS 1.3 with the
standard library's ``ssl``: the daemon's key must match a pin, our certificate must be a
user of the daemon's ``--accounts`` in the group ``admin``.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import struct
import sys
from typing import Any

from mirror.security.fingerprint import fingerprint_of_certificate
from mirror.security.identity_files import IdentityError, identity_paths
from mirror.security.known_hosts import host_key, known_hosts
from mirror.security.watched import ConfigFileError
from mirror.text import printable
from mirror.wire import frames

#: Largest WHO answer read (a thousand connections fit well within).
MAX_ANSWER = 4 << 20


class WhoError(Exception):
    """Why the question could not be answered (one line)."""


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    who = commands.add_parser("who", help="Ask a secured daemon who is connected and what "
                              "they are doing (as a member of its 'admin' group).")
    who.add_argument("address", metavar="HOST:PORT")
    who.add_argument("--identity", required=True, metavar="DIR",
                     help="Your identity (a user in the daemon's 'admin' group).")
    who.add_argument("--known-hosts", required=True, metavar="FILE",
                     help="Pins (HOST:PORT FINGERPRINT): the daemon's key must match.")
    who.add_argument("--timeout", type=float, default=10.0, help="Seconds [default: 10].")
    who.add_argument("--json", action="store_true", help="Print the answer as JSON.")


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        piece = sock.recv(n - len(data))
        if not piece:
            raise WhoError("the daemon closed the connection")
        data += piece
    return bytes(data)


def ask(host: str, port: int, options: argparse.Namespace) -> dict[str, Any]:
    """The daemon's WHO answer."""
    try:
        ids = identity_paths(options.identity)
        pins = known_hosts(options.known_hosts).load().get(host_key(host, port), frozenset())
    except (IdentityError, ConfigFileError) as e:
        raise WhoError(str(e)) from None
    if not pins:
        raise WhoError(f"no pin for {host_key(host, port)} in --known-hosts")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # the key is pinned, not a name
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(ids.cert, ids.key)
    try:
        with socket.create_connection((host, port), timeout=options.timeout) as raw, \
                ctx.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
            presented = fingerprint_of_certificate(der) if der else "none"
            if presented not in pins:
                raise WhoError(f"the daemon presented key {presented}, which matches no pin "
                               "in --known-hosts: nothing sent")
            tls.sendall(frames.frame(frames.WHO, 1))
            while True:
                (length,) = struct.unpack(">I", _read_exactly(tls, 4))
                if not 5 <= length <= MAX_ANSWER:
                    raise WhoError(f"bad frame length {length}")
                opcode, _, payload = frames.split_frame(_read_exactly(tls, length))
                if opcode == frames.ERROR:
                    _, message = frames.decode_error(payload)
                    raise WhoError(f"the daemon refused: {printable(message)}")
                if opcode == frames.WHO_LIST:
                    answer: dict[str, Any] = json.loads(payload)
                    return answer
    except (OSError, ValueError) as e:
        raise WhoError(f"{host_key(host, port)}: {printable(str(e))}") from None


def run(options: argparse.Namespace) -> int:
    host, _, port = options.address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        sys.stderr.write(f"mirror-admin: who: {options.address!r}: expected HOST:PORT\n")
        return 2
    try:
        answer = ask(host.strip("[]"), int(port), options)
    except WhoError as e:
        sys.stderr.write(f"mirror-admin: who: {e}\n")
        return 1
    if options.json:
        sys.stdout.write(json.dumps(answer, indent=1) + "\n")
        return 0
    rows = answer.get("connections", [])
    sys.stdout.write(f"{printable(str(answer.get('daemon')))}: {answer.get('total')} "
                     "connection(s)\n")
    for r in rows:
        who = r.get("user") or r.get("fingerprint")
        sys.stdout.write(f"{printable(str(who))}\t{printable(str(r.get('address')))}\t"
                         f"{r.get('seconds')} s\t{printable(str(r.get('activity')))}\n")
    return 0
