"""The job journal: an SQLite file in the state directory, so that jobs survive a restart.

Two layers:

- `JournalDB`, blocking: the schema, one transaction per `JournalDB.write` (a whole batch),
  loading the jobs at start-up. SQLite is opened with ``check_same_thread=False``: it is
  opened before the reactor runs and then used by one thread at a time (the journal's
  own single-thread pool), never by two at once.
- `Journal`, on the reactor: the job registry tells it what changed (a job submitted, the
  latest figures of a SPEC, an error, a job's end) and it keeps only the latest of each in
  memory; a commit writes all of it in one transaction in its thread, at most every
  ``interval`` seconds (0.5 by default), never one per file. Whatever arrives while a commit
  is being written waits for the next one.

Job ids are unique across restarts, without a write per submission: ids are handed out from
a block reserved in the journal (``next_id`` in ``meta``); a new block is reserved in the
same commit as the jobs once half the current one is used. A crash loses at most the unused
rest of a block, never reuses an id.

Figures (bytes, sums of squares) can exceed SQLite's 64-bit integers: they are stored as a
JSON text per SPEC.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import asdict, dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from mirror.threads import Threads
from mirror.wire.control import SourceRequest

#: Name of the journal in the state directory.
JOURNAL_NAME = "journal.sqlite"
#: Seconds between two commits, at most: a crash loses what happened since the last one.
COMMIT_INTERVAL = 0.5
#: Job ids reserved in the journal at once.
ID_BLOCK = 1000
#: Errors of one job kept in the journal (for --attach to a finished job); more are counted.
MAX_KEPT_ERRORS = 1000

#: Job states. "running" is unfinished: resumed after a restart.
RUNNING = "running"
OK = "ok"
FAILED = "failed"
CANCELLED = "cancelled"
STATES = (RUNNING, OK, FAILED, CANCELLED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    submitted REAL NOT NULL,
    finished REAL,
    resumed INTEGER NOT NULL DEFAULT 0,
    errors_dropped INTEGER NOT NULL DEFAULT 0,
    options TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS sources (
    job INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    path TEXT NOT NULL,
    delay REAL NOT NULL,
    figures TEXT,
    PRIMARY KEY (job, idx)
);
CREATE TABLE IF NOT EXISTS errors (
    job INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    path TEXT,
    message TEXT NOT NULL,
    PRIMARY KEY (job, seq)
);
CREATE TABLE IF NOT EXISTS partials (
    job INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    path TEXT NOT NULL,
    name TEXT NOT NULL,
    size TEXT NOT NULL,
    mtime_ns TEXT NOT NULL,
    verified INTEGER NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (job, idx, path)
);
"""


@dataclass
class SourceFigures:
    """The statistics of one SPEC, as SOURCE-DONE carries them; ``done`` once it ended."""

    done: bool = False
    ok: bool = True
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    sum_sq: int = 0
    skipped: int = 0
    failed: int = 0
    elapsed: float = 0.0
    not_exported: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SourceFigures:
        raw = json.loads(text)
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)


@dataclass
class JobError:
    index: int
    path: str | None
    message: str


@dataclass
class PartialRecord:
    """A partial file of a big transfer kept in the state directory (``name``), whose
    first ``verified`` bytes have the BLAKE3 ``digest`` (hex), for the file of ``size`` and
    ``mtime_ns`` at ``path`` of SPEC ``index``."""

    index: int
    path: str
    name: str
    size: int
    mtime_ns: int
    verified: int
    digest: str


@dataclass
class JobRecord:
    """What the journal knows of one job."""

    id: str
    sources: list[SourceRequest]
    state: str = RUNNING
    submitted: float = 0.0
    finished: float | None = None
    #: Times the job was resumed after a restart of the mirror server.
    resumed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    figures: list[SourceFigures | None] = field(default_factory=list)
    errors: list[JobError] = field(default_factory=list)
    errors_dropped: int = 0
    partials: list[PartialRecord] = field(default_factory=list)
    #: The journal's sequence number for the next error of this job.
    next_error_seq: int = 0

    def __post_init__(self) -> None:
        if not self.figures:
            self.figures = [None] * len(self.sources)


class JournalDB:
    """The SQLite file, blocking. One transaction per `write`."""

    def __init__(self, path: str) -> None:
        self.path = path
        # isolation_level=None: transactions are explicit (BEGIN ... COMMIT in `write`).
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            os.chmod(path, 0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
        except BaseException:
            self._db.close()
            raise
        #: Transactions committed (tests count them).
        self.commits = 0

    def close(self) -> None:
        self._db.close()

    def reserve_ids(self, count: int) -> tuple[int, int]:
        """Reserve ``count`` more ids, durably: returns ``[first, end)``."""
        first = self._next_id()
        self._db.execute("BEGIN IMMEDIATE")
        self._set_next_id(first + count)
        self._db.execute("COMMIT")
        self.commits += 1
        return first, first + count

    def _next_id(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'next_id'").fetchone()
        return int(row[0]) if row else 1

    def _set_next_id(self, value: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_id', ?)",
                         (str(value),))

    def write(self, batch: Batch) -> None:
        """Everything in ``batch``, in one transaction."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if batch.next_id is not None:
                self._set_next_id(max(batch.next_id, self._next_id()))
            for rec in batch.new_jobs:
                db.execute(
                    "INSERT OR REPLACE INTO jobs (id, state, submitted, finished, resumed, "
                    "options) VALUES (?, ?, ?, ?, ?, ?)",
                    (int(rec.id), rec.state, rec.submitted, rec.finished, rec.resumed,
                     json.dumps(rec.options)))
                db.executemany(
                    "INSERT OR REPLACE INTO sources (job, idx, host, port, path, delay) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(int(rec.id), i, s.host, s.port, s.path, s.delay)
                     for i, s in enumerate(rec.sources)])
            for (job_id, index), figures in batch.figures.items():
                db.execute("UPDATE sources SET figures = ? WHERE job = ? AND idx = ?",
                           (figures.to_json(), int(job_id), index))
            for job_id, index in batch.clear_errors:
                db.execute("DELETE FROM errors WHERE job = ? AND idx = ?", (int(job_id), index))
            for job_id, seq, err in batch.errors:
                db.execute("INSERT OR REPLACE INTO errors (job, seq, idx, path, message) "
                           "VALUES (?, ?, ?, ?, ?)",
                           (int(job_id), seq, err.index, err.path, err.message))
            for job_id, (state, finished, resumed, dropped) in batch.states.items():
                db.execute("UPDATE jobs SET state = ?, finished = ?, resumed = ?, "
                           "errors_dropped = ? WHERE id = ?",
                           (state, finished, resumed, dropped, int(job_id)))
            for job_id, part in batch.partials:
                db.execute(
                    "INSERT OR REPLACE INTO partials (job, idx, path, name, size, mtime_ns, "
                    "verified, digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (int(job_id), part.index, part.path, part.name, str(part.size),
                     str(part.mtime_ns), part.verified, part.digest))
            for job_id, index, path in batch.partials_gone:
                db.execute("DELETE FROM partials WHERE job = ? AND idx = ? AND path = ?",
                           (int(job_id), index, path))
            if batch.prune_before is not None:
                db.execute("DELETE FROM jobs WHERE state != ? AND finished < ?",
                           (RUNNING, batch.prune_before))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.commits += 1

    def load(self) -> list[JobRecord]:
        """Every job in the journal, oldest first."""
        db = self._db
        records: dict[int, JobRecord] = {}
        for (job_id, state, submitted, finished, resumed, dropped, options) in db.execute(
                "SELECT id, state, submitted, finished, resumed, errors_dropped, options "
                "FROM jobs ORDER BY id"):
            records[job_id] = JobRecord(str(job_id), [], state, submitted, finished, resumed,
                                        json.loads(options), errors_dropped=dropped)
        figures: dict[int, list[SourceFigures | None]] = {}
        for job_id, _idx, host, port, path, delay, fig in db.execute(
                "SELECT job, idx, host, port, path, delay, figures FROM sources "
                "ORDER BY job, idx"):
            rec = records[job_id]
            rec.sources.append(SourceRequest(host, port, path, delay))
            figures.setdefault(job_id, []).append(
                SourceFigures.from_json(fig) if fig else None)
        for job_id, figs in figures.items():
            records[job_id].figures = figs
        for job_id, _seq, idx, path, message in db.execute(
                "SELECT job, seq, idx, path, message FROM errors ORDER BY job, seq"):
            records[job_id].errors.append(JobError(idx, path, message))
            records[job_id].next_error_seq = _seq + 1
        for job_id, idx, path, name, size, mtime_ns, verified, digest in db.execute(
                "SELECT job, idx, path, name, size, mtime_ns, verified, digest FROM partials"):
            records[job_id].partials.append(
                PartialRecord(idx, path, name, int(size), int(mtime_ns), verified, digest))
        return [r for r in records.values() if r.sources]


@dataclass
class Batch:
    """What one commit writes."""

    next_id: int | None = None
    new_jobs: list[JobRecord] = field(default_factory=list)
    figures: dict[tuple[str, int], SourceFigures] = field(default_factory=dict)
    errors: list[tuple[str, int, JobError]] = field(default_factory=list)
    #: job id -> (state, finished, resumed, errors dropped)
    states: dict[str, tuple[str, float | None, int, int]] = field(default_factory=dict)
    partials: list[tuple[str, PartialRecord]] = field(default_factory=list)
    partials_gone: list[tuple[str, int, str]] = field(default_factory=list)
    #: (job id, source index): the errors recorded for it go (before ``errors`` are added).
    clear_errors: list[tuple[str, int]] = field(default_factory=list)
    prune_before: float | None = None

    def __bool__(self) -> bool:
        return bool(self.next_id is not None or self.new_jobs or self.figures or self.errors
                    or self.clear_errors or self.states or self.partials or self.partials_gone
                    or self.prune_before is not None)


class JournalFull(Exception):
    """No job id can be handed out until the journal has reserved more (a burst of more
    than half an id block of jobs within one commit interval)."""


class Journal:
    """The reactor side of the journal: batches changes, commits them in ``threads``.

    ``threads`` must run one call at a time (a pool of one thread): commits are ordered.
    """

    log = Logger()

    def __init__(self, db: JournalDB, clock: IReactorTime, threads: Threads,
                 interval: float = COMMIT_INTERVAL, id_block: int = ID_BLOCK) -> None:
        self.db = db
        self._clock = clock
        self._threads = threads
        self.interval = interval
        self._id_block = id_block
        #: Ids reserved durably: [self._next, self._end).
        self._next, self._end = db.reserve_ids(id_block)
        self._reserving = False
        self._batch = Batch()
        self._error_seq: dict[str, int] = {}
        self._call: IDelayedCall | None = None
        self._writing: Deferred[None] | None = None
        self._last_commit = -interval
        self._flush_waiters: list[Deferred[None]] = []
        self._closed = False
        self._retrying = False

    # -- ids --------------------------------------------------------------------------------

    def new_job_id(self) -> str:
        """A job id never used before, even by an earlier run of the server."""
        if self._next >= self._end:
            raise JournalFull("too many jobs submitted at once; try again in a moment")
        job_id = self._next
        self._next += 1
        if not self._reserving and self._end - self._next < self._id_block // 2:
            self._reserving = True
            self._batch.next_id = self._end + self._id_block
            self._schedule()
        return str(job_id)

    def load(self) -> Deferred[list[JobRecord]]:
        """Every job in the journal (read in the journal's thread)."""
        return self._threads.run(self.db.load)

    # -- changes ----------------------------------------------------------------------------

    def job_submitted(self, record: JobRecord) -> None:
        self._batch.new_jobs.append(record)
        self._error_seq.setdefault(record.id, len(record.errors))
        self._schedule()

    def job_resumed(self, record: JobRecord, restarted: list[int]) -> None:
        """A job loaded at start-up starts again: its new state, and the errors of the
        sources ``restarted`` (their listing reports them again) go."""
        self._error_seq[record.id] = record.next_error_seq
        self._batch.clear_errors += [(record.id, i) for i in restarted]
        self.job_state(record)

    def source_figures(self, job_id: str, index: int, figures: SourceFigures) -> None:
        """The latest figures of a SPEC (only the last before a commit is written)."""
        self._batch.figures[(job_id, index)] = figures
        self._schedule()

    def job_error(self, job_id: str, error: JobError) -> bool:
        """Record an error; False if the job already has `MAX_KEPT_ERRORS` (not kept)."""
        seq = self._error_seq.get(job_id, 0)
        if seq >= MAX_KEPT_ERRORS:
            return False
        self._error_seq[job_id] = seq + 1
        self._batch.errors.append((job_id, seq, error))
        self._schedule()
        return True

    def job_state(self, record: JobRecord) -> None:
        self._batch.states[record.id] = (record.state, record.finished, record.resumed,
                                         record.errors_dropped)
        self._schedule()

    def partial_saved(self, job_id: str, part: PartialRecord) -> None:
        self._batch.partials.append((job_id, part))
        self._schedule()

    def partial_gone(self, job_id: str, index: int, path: str) -> None:
        self._batch.partials_gone.append((job_id, index, path))
        self._schedule()

    def prune(self, finished_before: float) -> None:
        """Forget the jobs that finished before this time (their errors and partials too)."""
        self._batch.prune_before = finished_before
        self._schedule()

    # -- commits ----------------------------------------------------------------------------

    def _schedule(self) -> None:
        if self._call is not None or self._writing is not None or self._closed:
            return  # a commit is due, or one is being written (the next follows it)
        delay = max(0.0, self._last_commit + self.interval - self._clock.seconds())
        self._call = self._clock.callLater(delay, self._commit)

    def _commit(self) -> None:
        self._call = None
        batch, self._batch = self._batch, Batch()
        if not batch:
            self._wake()
            return
        self._last_commit = self._clock.seconds()
        self._writing = self._threads.run(self.db.write, batch)
        self._writing.addCallbacks(self._written, self._failed, callbackArgs=(batch,),
                                   errbackArgs=(batch,))

    def _written(self, _: None, batch: Batch) -> None:
        self._writing = None
        self._retrying = False
        if batch.next_id is not None:
            self._end = batch.next_id
            self._reserving = False
        self._after_write()

    def _failed(self, failure: Any, batch: Batch) -> None:
        self._writing = None
        if self._retrying:
            # Failed twice (the disk is full, or a bug): dropped, so that the journal does
            # not stay stuck on it; later changes are committed as usual.
            self._retrying = False
            self.log.failure("job journal: commit failed again; its changes are lost",
                             failure)
        else:
            self._retrying = True
            self.log.failure("job journal: commit failed (retried with the next one)",
                             failure)
            # The batch goes back in front of what came meanwhile.
            self._batch = _merge(batch, self._batch)
        self._after_write()

    def _after_write(self) -> None:
        if self._batch:
            self._schedule()
        else:
            self._wake()

    def _wake(self) -> None:
        waiters, self._flush_waiters = self._flush_waiters, []
        for d in waiters:
            d.callback(None)

    def flush(self) -> Deferred[None]:
        """Fires once everything recorded so far is committed (at once if nothing is due)."""
        if not self._batch and self._writing is None and self._call is None:
            return Deferred.fromCoroutine(_nothing())
        d: Deferred[None] = Deferred()
        self._flush_waiters.append(d)
        if self._call is not None and self._writing is None:
            self._call.cancel()
            self._call = None
            self._commit()
        return d

    async def close(self) -> None:
        """Commit what is pending, then close the file."""
        await self.flush()
        self._closed = True
        if self._call is not None:
            self._call.cancel()
            self._call = None
        await self._threads.run(self.db.close)


async def _nothing() -> None:
    return None


def _merge(first: Batch, then: Batch) -> Batch:
    merged = Batch(
        next_id=then.next_id if then.next_id is not None else first.next_id,
        new_jobs=first.new_jobs + then.new_jobs,
        figures={**first.figures, **then.figures},
        errors=first.errors + then.errors,
        states={**first.states, **then.states},
        partials=first.partials + then.partials,
        partials_gone=first.partials_gone + then.partials_gone,
        clear_errors=first.clear_errors + then.clear_errors,
        prune_before=then.prune_before if then.prune_before is not None
        else first.prune_before,
    )
    return merged


def open_journal(state_dir: str, clock: IReactorTime, threads: Threads,
                 interval: float = COMMIT_INTERVAL) -> Journal:
    """Open (or create) the journal in ``state_dir``; blocking, for start-up only."""
    return Journal(JournalDB(os.path.join(state_dir, JOURNAL_NAME)), clock, threads, interval)
