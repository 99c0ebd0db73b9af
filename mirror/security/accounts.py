"""The accounts database (``--accounts FILE``, SQLite): users, groups, memberships, grants.

`AccountsStore` is blocking: ``mirror-admin`` uses it directly, daemons only through
`AccountsWatch`, in their disk threads. Every change bumps ``meta.generation`` in the same
transaction; a daemon reads that one row before each request it decides on and reloads the
(small) tables only when it changed, so changes apply without a restart.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass

from twisted.logger import Logger

from mirror.security.known_hosts import host_key
from mirror.security.rights import (
    ANY_SERVER,
    ANYONE,
    RIGHTS,
    Grant,
    Rules,
    normalize_prefix,
)
from mirror.threads import Threads

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 0),
                                 generation INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES (0, 0);
CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS groups (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS members (grp TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE,
                                    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
                                    PRIMARY KEY (grp, user));
CREATE TABLE IF NOT EXISTS grants (principal TEXT NOT NULL, right TEXT NOT NULL,
                                   server TEXT NOT NULL, prefix TEXT NOT NULL,
                                   PRIMARY KEY (principal, right, server, prefix));
"""


class AccountsError(Exception):
    """A change that cannot be made (unknown user, duplicate name...): the message says why."""


def _check_name(name: str, what: str) -> str:
    if not name or not name.isprintable() or any(c in name for c in " @/:") or len(name) > 64:
        raise AccountsError(f"{name!r}: not a valid {what} name (1-64 printable characters, "
                            "no space, '@', '/' or ':')")
    if name == ANYONE:
        raise AccountsError(f"{name!r} is the built-in principal for every peer")
    return name


def _server(text: str) -> str:
    """A grant's ``HOST:PORT`` as --known-hosts writes it (`host_key`)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise AccountsError(f"--server {text!r}: expected HOST:PORT")
    return host_key(host, int(port))


class AccountsStore:
    """One open accounts database (created, mode 0600, if missing)."""

    def __init__(self, path: str, create: bool = True) -> None:
        self.path = os.path.abspath(path)
        if not create and not os.path.exists(self.path):
            raise AccountsError(f"{self.path}: no such file")
        if create and not os.path.exists(self.path):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            self.db = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0)
            self.db.execute("PRAGMA foreign_keys = ON")
            with self.db:
                self.db.executescript(SCHEMA)
        except sqlite3.Error as e:
            raise AccountsError(f"{self.path}: {e}") from None
        self._lock = threading.Lock()

    def close(self) -> None:
        self.db.close()

    def _change(self, sql: str, args: tuple[str, ...], none: str | None = None) -> None:
        """Run one change and bump the generation; ``none``: the error if it changed nothing."""
        with self._lock:
            try:
                with self.db:
                    count = self.db.execute(sql, args).rowcount
                    if count == 0 and none is not None:
                        raise AccountsError(none)
                    self.db.execute("UPDATE meta SET generation = generation + 1")
            except sqlite3.IntegrityError as e:
                raise AccountsError(str(e)) from None

    def add_user(self, name: str, fingerprint: str) -> None:
        _check_name(name, "user")
        if self.db.execute("SELECT 1 FROM users WHERE name = ? OR fingerprint = ?",
                           (name, fingerprint)).fetchone():
            raise AccountsError(f"user {name} or key {fingerprint} already exists")
        self._change("INSERT INTO users VALUES (?, ?)", (name, fingerprint))

    def remove_user(self, name: str) -> None:
        self._change("DELETE FROM users WHERE name = ?", (name,), f"no user {name}")
        self._change("DELETE FROM grants WHERE principal = ?", (name,))

    def add_group(self, name: str) -> None:
        _check_name(name, "group")
        if self.db.execute("SELECT 1 FROM groups WHERE name = ?", (name,)).fetchone():
            raise AccountsError(f"group {name} already exists")
        self._change("INSERT INTO groups VALUES (?)", (name,))

    def remove_group(self, name: str) -> None:
        self._change("DELETE FROM groups WHERE name = ?", (name,), f"no group {name}")
        self._change("DELETE FROM grants WHERE principal = ?", (f"@{name}",))

    def add_member(self, group: str, user: str) -> None:
        if not self.db.execute("SELECT 1 FROM groups WHERE name = ?", (group,)).fetchone():
            raise AccountsError(f"no group {group}")
        if not self.db.execute("SELECT 1 FROM users WHERE name = ?", (user,)).fetchone():
            raise AccountsError(f"no user {user}")
        self._change("INSERT OR IGNORE INTO members VALUES (?, ?)", (group, user))

    def remove_member(self, group: str, user: str) -> None:
        self._change("DELETE FROM members WHERE grp = ? AND user = ?", (group, user),
                     f"{user} is not in group {group}")

    def _grant(self, principal: str, right: str, prefix: str, server: str | None) -> Grant:
        if right not in RIGHTS:
            raise AccountsError(f"{right!r}: the rights are {', '.join(RIGHTS)}")
        try:
            norm = normalize_prefix(prefix)
        except ValueError as e:
            raise AccountsError(f"prefix {e}") from None
        if principal != ANYONE:
            table, name = ("groups", principal[1:]) if principal.startswith("@") else (
                "users", principal)
            if not self.db.execute(f"SELECT 1 FROM {table} WHERE name = ?",  # noqa: S608
                                   (name,)).fetchone():
                raise AccountsError(f"no {table[:-1]} {name}")
        return Grant(principal, right, norm, _server(server) if server else ANY_SERVER)

    def grant(self, principal: str, right: str, prefix: str, server: str | None = None) -> None:
        g = self._grant(principal, right, prefix, server)
        self._change("INSERT OR IGNORE INTO grants VALUES (?, ?, ?, ?)",
                     (g.principal, g.right, g.server, g.prefix))

    def revoke(self, principal: str, right: str, prefix: str, server: str | None = None) -> None:
        g = self._grant(principal, right, prefix, server)
        self._change("DELETE FROM grants WHERE principal = ? AND right = ? AND server = ? "
                     "AND prefix = ?", (g.principal, g.right, g.server, g.prefix),
                     "no such grant")

    def generation(self) -> int:
        with self._lock:
            row = self.db.execute("SELECT generation FROM meta").fetchone()
        return int(row[0])

    def rules(self) -> tuple[int, Rules]:
        """The whole database, as one consistent snapshot."""
        with self._lock, self.db:
            generation = int(self.db.execute("SELECT generation FROM meta").fetchone()[0])
            users = dict(self.db.execute("SELECT fingerprint, name FROM users"))
            groups: dict[str, set[str]] = {}
            for group, user in self.db.execute("SELECT grp, user FROM members"):
                groups.setdefault(user, set()).add(group)
            grants = tuple(Grant(p, r, prefix, s) for p, r, s, prefix in self.db.execute(
                "SELECT principal, right, server, prefix FROM grants "
                "ORDER BY principal, right, server, prefix"))
        return generation, Rules(users, {u: frozenset(g) for u, g in groups.items()}, grants)

    def describe(self) -> list[str]:
        """``mirror-admin list``: users (with their groups), groups, grants."""
        _, rules = self.rules()
        lines = []
        for fingerprint, name in sorted(rules.users.items(), key=lambda kv: kv[1]):
            groups = ",".join(sorted(rules.groups_of.get(name, ()))) or "-"
            lines.append(f"user {name} {fingerprint} groups {groups}")
        for (group,) in self.db.execute("SELECT name FROM groups ORDER BY name"):
            lines.append(f"group {group}")
        for g in rules.grants:
            where = "" if g.server == ANY_SERVER else f" on {g.server}"
            lines.append(f"grant {g.principal} {g.right} {g.prefix or '.'}{where}")
        return lines


@dataclass
class _Snapshot:
    generation: int
    rules: Rules


class AccountsWatch:
    """A daemon's view of its accounts database, read in ``threads``: `current` checks the
    generation (one row) and reloads on change; ``on_change`` callbacks run after a reload
    (the TLS gate drops the connections of removed users)."""

    log = Logger()

    def __init__(self, store: AccountsStore, threads: Threads) -> None:
        self.store = store
        self.threads = threads
        generation, rules = store.rules()
        self._snapshot = _Snapshot(generation, rules)
        self.on_change: list[Callable[[], None]] = []
        self._checking: object | None = None

    @property
    def rules(self) -> Rules:
        """The rules as last read (`current` reads them again if they changed)."""
        return self._snapshot.rules

    def _refresh(self) -> _Snapshot | None:
        if self.store.generation() == self._snapshot.generation:
            return None
        generation, rules = self.store.rules()
        return _Snapshot(generation, rules)

    async def current(self) -> Rules:
        """The rules now. A database that cannot be read grants nothing (logged): as with
        an unreadable --authorized-keys, nobody is let in, and open connections are dropped."""
        try:
            fresh = await self.threads.run(self._refresh)
        except sqlite3.Error as e:
            self.log.error("cannot read --accounts {path}: {e}; nothing is granted",
                           path=self.store.path, e=e)
            fresh = _Snapshot(-1, Rules())
        if fresh is not None and fresh.generation != self._snapshot.generation:
            self._snapshot = fresh
            self.log.info("--accounts {path}: {users} user(s), {grants} grant(s)",
                          path=self.store.path, users=len(fresh.rules.users),
                          grants=len(fresh.rules.grants))
            for callback in self.on_change:
                callback()
        return self._snapshot.rules
