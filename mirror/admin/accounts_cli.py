"""``mirror-admin`` commands on an accounts database (``--accounts FILE``):

    user add NAME KEY | user remove NAME          (KEY: sha256:HEX, an identity DIR or a CERT)
    group add NAME | group remove NAME
    member add GROUP USER | member remove GROUP USER
    grant PRINCIPAL RIGHT PREFIX [--server HOST:PORT] | revoke (the same)
    list

PRINCIPAL is a user's name, ``@GROUP`` or ``anyone``; RIGHT is ``read`` or ``mirror``.
A change is one SQLite transaction; a daemon using the file sees it at its next request.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from mirror.security.accounts import AccountsError, AccountsStore
from mirror.security.fingerprint import FingerprintError, parse_fingerprint
from mirror.security.identity import certificate_file_fingerprint, read_identity
from mirror.security.identity_files import IdentityError
from mirror.security.rights import RIGHTS

COMMANDS = ("user", "group", "member", "grant", "revoke", "list")


def _key(text: str) -> str:
    """A fingerprint from ``text``: itself, an identity directory, or a certificate file."""
    if os.path.isdir(text):
        return read_identity(text).fingerprint
    if os.path.exists(text):
        return certificate_file_fingerprint(text)
    return parse_fingerprint(text)


def add_parsers(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the accounts commands to ``mirror-admin``'s subcommands."""
    def sub(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = commands.add_parser(name, help=help_text)
        p.add_argument("--accounts", required=True, metavar="FILE",
                       help="The accounts database (created, mode 0600, by a change).")
        return p

    user = sub("user", "Add a user (a name and a key) or remove one (its open "
               "connections are dropped).")
    user.add_argument("action", choices=("add", "remove"))
    user.add_argument("name", metavar="NAME")
    user.add_argument("key", metavar="KEY", nargs="?",
                      help="add: sha256:HEX, an identity directory, or a certificate file.")
    group = sub("group", "Add or remove a group ('admin' is the administrators').")
    group.add_argument("action", choices=("add", "remove"))
    group.add_argument("name", metavar="GROUP")
    member = sub("member", "Add a user to a group, or remove it.")
    member.add_argument("action", choices=("add", "remove"))
    member.add_argument("group", metavar="GROUP")
    member.add_argument("user", metavar="USER")
    for name, verb in (("grant", "Give"), ("revoke", "Take back")):
        g = sub(name, f"{verb} PRINCIPAL (USER, @GROUP or anyone) the RIGHT (read: list "
                "and fetch; mirror: submit jobs) on paths under PREFIX ('.': everything).")
        g.add_argument("principal", metavar="PRINCIPAL")
        g.add_argument("right", metavar="RIGHT", choices=RIGHTS)
        g.add_argument("prefix", metavar="PREFIX")
        g.add_argument("--server", metavar="HOST:PORT",
                       help="mirror: only jobs from this content server [default: any].")
    sub("list", "Print users (with their groups), groups and grants.")


def run(options: argparse.Namespace) -> int:
    """Run one accounts command; errors are one line on stderr and status 1."""
    try:
        store = AccountsStore(options.accounts, create=options.command != "list")
    except AccountsError as e:
        sys.stderr.write(f"mirror-admin: {e}\n")
        return 1
    try:
        for line in _do(store, options):
            sys.stdout.write(line + "\n")
    except (AccountsError, FingerprintError, IdentityError) as e:
        sys.stderr.write(f"mirror-admin: {e}\n")
        return 1
    finally:
        store.close()
    return 0


def _do(store: AccountsStore, o: argparse.Namespace) -> list[str]:
    if o.command == "list":
        return store.describe()
    if o.command == "user":
        if o.action == "add":
            if o.key is None:
                raise AccountsError("user add needs NAME KEY")
            key = _key(o.key)
            store.add_user(o.name, key)
            return [f"user {o.name} {key} added"]
        store.remove_user(o.name)
        return [f"user {o.name} removed"]
    if o.command in ("group", "member"):
        actions: dict[tuple[str, str], Callable[[], None]] = {
            ("group", "add"): lambda: store.add_group(o.name),
            ("group", "remove"): lambda: store.remove_group(o.name),
            ("member", "add"): lambda: store.add_member(o.group, o.user),
            ("member", "remove"): lambda: store.remove_member(o.group, o.user),
        }
        actions[o.command, o.action]()
        what = f"group {o.name}" if o.command == "group" else f"{o.user} in group {o.group}"
        return [f"{what} {'added' if o.action == 'add' else 'removed'}"]
    change = store.grant if o.command == "grant" else store.revoke
    change(o.principal, o.right, o.prefix, o.server)
    where = f" on {o.server}" if o.server else ""
    return [f"{o.command}ed: {o.principal} {o.right} {o.prefix}{where}"
            .replace("revokeed", "revoked")]
