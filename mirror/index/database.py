"""`DatabaseRegistry`: the `Registry` interface on a database, SQLite or PostgreSQL.

``--db PATH`` is an SQLite file (created on first start); ``--db postgresql://...`` (or
``postgres://``) a PostgreSQL database reached with psycopg 3. Both run through
``twisted.enterprise.adbapi``: every statement runs in the pool's threads, never on the
reactor thread. SQLite gets one connection (its writers take turns anyway); PostgreSQL a few.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore

from mirror.index.codec import FileRecord, Holder
from mirror.index.registry import Cursor, Limits, Overview, Query
from mirror.index.sql import POSTGRES, SQLITE, Dialect, Tables

T = TypeVar("T")

#: Runs ``f(cursor, *args)`` in a database thread, in one transaction.
Runner = Callable[..., Deferred[Any]]


def is_postgres(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


class DatabaseRegistry:
    """A `mirror.index.registry.Registry` on `Tables`, each call one transaction run by
    ``runner`` (an adbapi pool's ``runInteraction``, or a test's inline runner)."""

    def __init__(self, tables: Tables, runner: Runner) -> None:
        self.tables = tables
        self._runner = runner

    def _call(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        d: Deferred[T] = self._runner(f, *args)
        return d

    def create(self) -> Deferred[None]:
        return self._call(self.tables.create)

    def hello(self, node: str, address: str, now: float, lease: float) -> Deferred[bool]:
        return self._call(self.tables.hello, node, address, now, lease)

    def renew(self, node: str, now: float, lease: float) -> Deferred[None]:
        return self._call(self.tables.renew, node, now, lease)

    def begin(self, node: str) -> Deferred[None]:
        return self._call(self.tables.begin, node)

    def put(self, node: str, files: Sequence[FileRecord]) -> Deferred[int]:
        return self._call(self.tables.put, node, files)

    def remove(self, node: str, paths: Sequence[str]) -> Deferred[int]:
        return self._call(self.tables.remove, node, paths)

    def end(self, node: str) -> Deferred[int]:
        return self._call(self.tables.end, node)

    def withdraw(self, node: str) -> Deferred[None]:
        return self._call(self.tables.withdraw, node)

    def holders(self, query: Query, now: float, after: Cursor | None,
                limit: int) -> Deferred[list[Holder]]:
        return self._call(self.tables.holders, query, now, after, limit)

    def expire(self, now: float) -> Deferred[int]:
        return self._call(self.tables.expire, now)

    def overview(self, now: float, limit: int) -> Deferred[Overview]:
        return self._call(self.tables.overview, now, limit)


def _sqlite_setup(connection: sqlite3.Connection) -> None:
    # WAL: a reader does not wait for a writer; NORMAL: durable at checkpoints, and a crash
    # loses at most the last transactions (a lease's worth of renewals, redone by the nodes).
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")


def open_pool(db: str, reactor: IReactorCore) -> tuple[adbapi.ConnectionPool, Dialect]:
    """An adbapi pool on ``db`` and its dialect; the pool starts with the reactor."""
    if is_postgres(db):
        return adbapi.ConnectionPool("psycopg", db, cp_min=1, cp_max=4, cp_reconnect=True,
                                     cp_reactor=reactor), POSTGRES
    return adbapi.ConnectionPool("sqlite3", db, check_same_thread=False, cp_min=1, cp_max=1,
                                 cp_openfun=_sqlite_setup, cp_reactor=reactor), SQLITE


def open_registry(db: str, reactor: IReactorCore, limits: Limits
                  ) -> tuple[DatabaseRegistry, adbapi.ConnectionPool]:
    """The registry on ``db`` (tables created if missing) and its pool (to close at stop)."""
    pool, dialect = open_pool(db, reactor)
    registry = DatabaseRegistry(Tables(dialect, limits), pool.runInteraction)
    return registry, pool
