"""Whole-file digests a node computed, kept so that a restart does not hash its export again.

Keyed on (device, inode, size, mtime_ns, ctime_ns): a file rewritten in place changes its
ctime even when its size and mtime are put back, and a file replaced by another gets another
inode. `SqliteDigests` keeps them in ``STATE_DIR/digests.sqlite``; `MemoryDigests` for a
content server without ``--state-dir``. Both are called from worker threads only (never on
the reactor thread), hence the lock.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from typing import Protocol

StatKey = tuple[int, int, int, int, int]

#: The state directory's file of digests.
FILE_NAME = "digests.sqlite"


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Digests(Protocol):
    def get(self, key: StatKey) -> str | None: ...

    def put(self, key: StatKey, digest: str) -> None: ...

    def put_many(self, items: list[tuple[StatKey, str]]) -> None: ...

    def close(self) -> None: ...


class MemoryDigests:
    """Digests for this process's life only (bounded: the oldest are dropped)."""

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self.max_entries = max_entries
        self._digests: dict[StatKey, str] = {}
        self._lock = threading.Lock()

    def get(self, key: StatKey) -> str | None:
        with self._lock:
            return self._digests.get(key)

    def put(self, key: StatKey, digest: str) -> None:
        with self._lock:
            if len(self._digests) >= self.max_entries:
                del self._digests[next(iter(self._digests))]
            self._digests[key] = digest

    def put_many(self, items: list[tuple[StatKey, str]]) -> None:
        for key, digest in items:
            self.put(key, digest)

    def close(self) -> None:
        pass


def open_state_dir(path: str) -> None:
    """Create ``path`` 0700 if missing; refuse one that is not a directory (or a link)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(f"{path} is not a directory") from None


class SqliteDigests:
    """Digests in an SQLite file; survives restarts."""

    def __init__(self, state_dir: str) -> None:
        open_state_dir(state_dir)
        self.path = os.path.join(state_dir, FILE_NAME)
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS digests (dev INTEGER, ino INTEGER,"
                             " size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER,"
                             " digest TEXT NOT NULL, PRIMARY KEY (dev, ino))")
            self._db.commit()

    def get(self, key: StatKey) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT digest FROM digests WHERE dev = ? AND ino = ? AND size = ?"
                " AND mtime_ns = ? AND ctime_ns = ?", key).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: StatKey, digest: str) -> None:
        # One row per file (dev, ino): a changed file's old digest is replaced, not kept.
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?)",
                             (*key, digest))
            self._db.commit()

    def put_many(self, items: list[tuple[StatKey, str]]) -> None:
        """Several digests in one transaction (the files of a bundle, placed together)."""
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?)",
                                 [(*key, digest) for key, digest in items])
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()
