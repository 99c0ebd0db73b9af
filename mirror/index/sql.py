"""The registry's SQL, shared by the SQLite and PostgreSQL backends.

Each function runs in a database thread on a DB-API cursor (an adbapi ``Transaction``, or a
test's plain cursor) inside one transaction. Statements are written with ``?`` placeholders;
`Dialect.sql` rewrites them for PostgreSQL's ``%s``. Paths compare by their UTF-8 bytes in
both databases (SQLite's BINARY collation, PostgreSQL's "C"), so a directory's files are the
range ``[dir + "/", dir + "0")`` (``0`` follows ``/`` in ASCII) and pages are stable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mirror.index.codec import FileRecord, Holder
from mirror.index.registry import (
    Cursor,
    Limits,
    NodeLease,
    NotRegistered,
    Overview,
    Query,
    RegistryLimit,
)

#: Paths per ``IN (...)`` list: within SQLite's variable limit whatever its version.
_IN_CHUNK = 500


@dataclass(frozen=True)
class Dialect:
    """What differs between the two databases."""

    name: str
    placeholder: str
    #: Collation clause that makes text compare as bytes.
    collate: str

    def sql(self, statement: str) -> str:
        return statement.replace("?", self.placeholder)

    def schema(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS index_nodes ("
            " node TEXT PRIMARY KEY, address TEXT NOT NULL,"
            " renewed DOUBLE PRECISION NOT NULL, expires DOUBLE PRECISION NOT NULL,"
            " epoch BIGINT NOT NULL DEFAULT 0, files BIGINT NOT NULL DEFAULT 0)",
            "CREATE TABLE IF NOT EXISTS index_files ("
            f" node TEXT NOT NULL, path TEXT {self.collate} NOT NULL,"
            " size BIGINT NOT NULL, mtime_ns BIGINT NOT NULL, digest TEXT,"
            " epoch BIGINT NOT NULL, PRIMARY KEY (node, path))",
            "CREATE INDEX IF NOT EXISTS index_files_path ON index_files (path, node)",
            "CREATE INDEX IF NOT EXISTS index_files_digest ON index_files (digest)",
            "CREATE INDEX IF NOT EXISTS index_nodes_expires ON index_nodes (expires)",
        ]


SQLITE = Dialect("sqlite", "?", "")
POSTGRES = Dialect("postgresql", "%s", 'COLLATE "C"')


class Tables:
    """The registry's operations on one database (see `mirror.index.registry.Registry`)."""

    def __init__(self, dialect: Dialect, limits: Limits) -> None:
        self.dialect = dialect
        self.limits = limits

    def _run(self, cur: Any, statement: str, args: Sequence[Any] = ()) -> Any:
        cur.execute(self.dialect.sql(statement), tuple(args))
        return cur

    def create(self, cur: Any) -> None:
        for statement in self.dialect.schema():
            cur.execute(statement)

    def _drop_node(self, cur: Any, node: str) -> None:
        self._run(cur, "DELETE FROM index_files WHERE node = ?", (node,))
        self._run(cur, "DELETE FROM index_nodes WHERE node = ?", (node,))

    def hello(self, cur: Any, node: str, address: str, now: float, lease: float) -> bool:
        row = self._run(cur, "SELECT expires FROM index_nodes WHERE node = ?",
                        (node,)).fetchone()
        if row is not None and row[0] > now:
            self._run(cur, "UPDATE index_nodes SET address = ?, renewed = ?, expires = ?"
                      " WHERE node = ?", (address, now, now + lease, node))
            return True
        if row is not None:
            self._drop_node(cur, node)
        (live,) = self._run(cur, "SELECT count(*) FROM index_nodes WHERE expires > ?",
                            (now,)).fetchone()
        if live >= self.limits.max_nodes:
            raise RegistryLimit(f"the index holds its most nodes ({self.limits.max_nodes})")
        self._run(cur, "INSERT INTO index_nodes (node, address, renewed, expires, epoch, files)"
                  " VALUES (?, ?, ?, ?, 0, 0)", (node, address, now, now + lease))
        return False

    def renew(self, cur: Any, node: str, now: float, lease: float) -> None:
        self._run(cur, "UPDATE index_nodes SET renewed = ?, expires = ?"
                  " WHERE node = ? AND expires > ?", (now, now + lease, node, now))
        if cur.rowcount != 1:
            raise NotRegistered(f"node {node} has no live registration")

    def _node(self, cur: Any, node: str) -> tuple[int, int]:
        """(epoch, files) of a registered node."""
        row = self._run(cur, "SELECT epoch, files FROM index_nodes WHERE node = ?",
                        (node,)).fetchone()
        if row is None:
            raise NotRegistered(f"node {node} has no live registration")
        return int(row[0]), int(row[1])

    def _present(self, cur: Any, node: str, paths: Sequence[str]) -> int:
        found = 0
        for i in range(0, len(paths), _IN_CHUNK):
            chunk = paths[i : i + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            (n,) = self._run(cur, f"SELECT count(*) FROM index_files WHERE node = ?"
                             f" AND path IN ({marks})", (node, *chunk)).fetchone()
            found += int(n)
        return found

    def begin(self, cur: Any, node: str) -> None:
        self._node(cur, node)
        self._run(cur, "UPDATE index_nodes SET epoch = epoch + 1 WHERE node = ?", (node,))

    def put(self, cur: Any, node: str, files: Sequence[FileRecord]) -> int:
        epoch, held = self._node(cur, node)
        new = len(files) - self._present(cur, node, [f.path for f in files])
        if held + new > self.limits.max_files_per_node:
            raise RegistryLimit(f"a node may register at most "
                                f"{self.limits.max_files_per_node} files")
        cur.executemany(self.dialect.sql(
            "INSERT INTO index_files (node, path, size, mtime_ns, digest, epoch)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (node, path) DO UPDATE SET"
            " size = excluded.size, mtime_ns = excluded.mtime_ns, digest = excluded.digest,"
            " epoch = excluded.epoch"),
            [(node, f.path, f.size, f.mtime_ns, f.digest, epoch) for f in files])
        self._run(cur, "UPDATE index_nodes SET files = ? WHERE node = ?", (held + new, node))
        return held + new

    def remove(self, cur: Any, node: str, paths: Sequence[str]) -> int:
        _, held = self._node(cur, node)
        gone = self._present(cur, node, paths)
        cur.executemany(self.dialect.sql("DELETE FROM index_files WHERE node = ? AND path = ?"),
                        [(node, p) for p in paths])
        self._run(cur, "UPDATE index_nodes SET files = ? WHERE node = ?", (held - gone, node))
        return held - gone

    def end(self, cur: Any, node: str) -> int:
        epoch, held = self._node(cur, node)
        removed = self._run(cur, "DELETE FROM index_files WHERE node = ? AND epoch < ?",
                            (node, epoch)).rowcount
        self._run(cur, "UPDATE index_nodes SET files = ? WHERE node = ?",
                  (held - removed, node))
        return int(removed)

    def withdraw(self, cur: Any, node: str) -> None:
        self._drop_node(cur, node)

    def holders(self, cur: Any, query: Query, now: float, after: Cursor | None,
                limit: int) -> list[Holder]:
        where = ["n.expires > ?"]
        args: list[Any] = [now]
        if query.digest is not None:
            where.append("f.digest = ?")
            args.append(query.digest)
        elif query.path:
            where.append("(f.path = ? OR (f.path >= ? AND f.path < ?))")
            args += [query.path, query.path + "/", query.path + "0"]
        if after is not None:
            where.append("(f.path > ? OR (f.path = ? AND f.node > ?))")
            args += [after[0], after[0], after[1]]
        rows = self._run(cur, "SELECT f.node, n.address, f.path, f.size, f.mtime_ns, f.digest,"
                         " n.renewed, n.expires FROM index_files f JOIN index_nodes n"
                         " ON n.node = f.node WHERE " + " AND ".join(where) +
                         " ORDER BY f.path, f.node LIMIT ?", (*args, limit)).fetchall()
        return [Holder(node, address, path, int(size), int(mtime_ns), digest,
                       max(0.0, now - renewed), max(0.0, expires - now))
                for node, address, path, size, mtime_ns, digest, renewed, expires in rows]

    def expire(self, cur: Any, now: float) -> int:
        self._run(cur, "DELETE FROM index_files WHERE node IN"
                  " (SELECT node FROM index_nodes WHERE expires <= ?)", (now,))
        return int(self._run(cur, "DELETE FROM index_nodes WHERE expires <= ?",
                             (now,)).rowcount)

    def overview(self, cur: Any, now: float, limit: int) -> Overview:
        nodes, files = self._run(cur, "SELECT count(*), coalesce(sum(files), 0) FROM index_nodes"
                                 " WHERE expires > ?", (now,)).fetchone()
        (hashed,) = self._run(cur, "SELECT count(*) FROM index_files f JOIN index_nodes n"
                              " ON n.node = f.node WHERE n.expires > ? AND f.digest IS NOT NULL",
                              (now,)).fetchone()
        rows = self._run(cur, "SELECT node, address, files, renewed, expires FROM index_nodes"
                         " WHERE expires > ? ORDER BY node LIMIT ?", (now, limit)).fetchall()
        return Overview(int(nodes), int(files), int(hashed),
                        [NodeLease(node, address, int(n), max(0.0, now - renewed),
                                   max(0.0, expires - now))
                         for node, address, n, renewed, expires in rows])
