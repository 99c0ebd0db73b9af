"""``mirror-admin``: create and renew identities, print fingerprints.

    mirror-admin keygen DIR [--name NAME] [--days N]
    mirror-admin renew DIR [--days N]
    mirror-admin fingerprint DIR|CERT
    mirror-admin user|group|member|grant|revoke|list ... --accounts FILE  (accounts_cli)
    mirror-admin who HOST:PORT --identity DIR --known-hosts FILE         (who_cli)

Bad arguments: one line on stderr and exit status 2; a failure (an existing key, an unsafe
file): one line and exit status 1. No Twisted here: only ``cryptography``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from mirror.admin import accounts_cli, who_cli
from mirror.security.identity import (
    DEFAULT_DAYS,
    Identity,
    certificate_file_fingerprint,
    keygen,
    read_identity,
    renew,
)
from mirror.security.identity_files import IdentityError

PROG = "mirror-admin"

EPILOG = """
An identity is a directory holding key.pem (an EC P-256 private key, mode 0600) and
cert.pem (a self-signed certificate for it). Who it is, is the SHA-256 fingerprint of the
public key, printed as sha256:HEX: renewing the certificate keeps it.

Give a daemon or mirror-init its identity with --identity DIR; put a server's fingerprint
in a client's --known-hosts file (HOST:PORT FINGERPRINT), and a client's in the server's
--authorized-keys file (one fingerprint a line).
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{PROG}: error: {message}\n")
        raise SystemExit(2)


def _days(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 36500:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 1 to 36500 days")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)
    new = commands.add_parser("keygen", help="Create an identity: a key pair and a "
                              "self-signed certificate in DIR (created, mode 0700).")
    new.add_argument("directory", metavar="DIR")
    new.add_argument("--name", help="The certificate's name [default: this host's name].")
    new.add_argument("--days", type=_days, default=DEFAULT_DAYS,
                     help=f"Days the certificate is valid [default: {DEFAULT_DAYS}].")
    again = commands.add_parser("renew", help="A new certificate for the same key (the "
                                "fingerprint does not change).")
    again.add_argument("directory", metavar="DIR")
    again.add_argument("--days", type=_days, default=DEFAULT_DAYS,
                       help=f"Days the certificate is valid [default: {DEFAULT_DAYS}].")
    show = commands.add_parser("fingerprint", help="Print the key fingerprint of an "
                               "identity directory or a certificate file.")
    show.add_argument("path", metavar="DIR|CERT")
    accounts_cli.add_parsers(commands)
    who_cli.add_parser(commands)
    return parser


def _describe(identity: Identity) -> str:
    return (f"{identity.fingerprint}\n"
            f"  name {identity.name}, certificate valid until "
            f"{identity.not_after:%Y-%m-%d}\n"
            f"  key {identity.paths.key}, certificate {identity.paths.cert}\n")


def run(argv: Sequence[str]) -> int:
    options = build_parser().parse_args(list(argv))
    if options.command in accounts_cli.COMMANDS:
        return accounts_cli.run(options)
    if options.command == "who":
        return who_cli.run(options)
    try:
        if options.command == "keygen":
            sys.stdout.write(_describe(keygen(options.directory, options.name, options.days)))
        elif options.command == "renew":
            sys.stdout.write(_describe(renew(options.directory, options.days)))
        elif os.path.isdir(options.path):
            sys.stdout.write(read_identity(options.path).fingerprint + "\n")
        else:
            sys.stdout.write(certificate_file_fingerprint(options.path) + "\n")
    except IdentityError as e:
        sys.stderr.write(f"{PROG}: {e}\n")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console script entry point."""
    sys.exit(run(sys.argv[1:] if argv is None else argv))
