"""An index registry on an in-memory SQLite database whose calls complete at once."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from mirror.index.database import DatabaseRegistry
from mirror.index.registry import Limits
from mirror.index.sql import SQLITE, Tables


def inline_registry(limits: Limits | None = None) -> tuple[DatabaseRegistry, sqlite3.Connection]:
    connection = sqlite3.connect(":memory:")

    def run(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        cur = connection.cursor()
        try:
            result = f(cur, *args)
        except Exception as e:
            connection.rollback()
            return fail(e)
        connection.commit()
        return succeed(result)

    registry = DatabaseRegistry(Tables(SQLITE, limits or Limits()), run)
    registry.create()
    return registry, connection


def result_of(d: Deferred[Any]) -> Any:
    """The result of a Deferred that has fired (raises its failure's exception)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    value = results[0]
    if hasattr(value, "raiseException"):
        value.raiseException()
    return value
