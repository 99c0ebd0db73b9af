"""The running and recent jobs of a mirror server, as the web status page and /metrics see them.

A read-only observation seam: `JobHistory.watch` wraps the observer of each submitted job
(the control connection) in a `_Watch` that passes every event on unchanged and records it
here. Nothing here changes a job. While a job runs its figures are read live from its
`SourceRun` objects; when it ends they are copied into plain `SourceState` values and the job
itself is let go (its listing order and directory list can be large). Everything kept is
bounded: `KEEP_JOBS` jobs, `MAX_ERRORS` errors and `MAX_SAMPLES` throughput samples per job,
`MAX_SOURCES_SEEN` sources for the last-success times.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime

from mirror.stats import SizeStats

if TYPE_CHECKING:
    from mirror.mirror_server.job import Job, JobObserver, SourceRun

#: Jobs kept once they ended (the running ones are always kept).
KEEP_JOBS = 50
#: Errors kept per job; later ones are counted only.
MAX_ERRORS = 100
#: Throughput samples kept per job; when full, every other one is dropped (the chart keeps
#: its whole time span at half the resolution).
MAX_SAMPLES = 240
#: Sources whose last successful mirror time is kept (least recently successful go first).
MAX_SOURCES_SEEN = 1000
OUTCOMES = ("ok", "failed")


@dataclass(frozen=True)
class SourceState:
    """The figures of one SPEC of a job, as mirror-init's report has them."""

    index: int
    host: str
    port: int
    path: str
    delay: float
    label: str
    done: bool
    ok: bool
    stats: SizeStats
    dirs: int
    skipped: int
    not_exported: int
    failed: int
    elapsed: float
    listing_elapsed: float | None

    @classmethod
    def of(cls, run: SourceRun, done: bool, started: float, now: float) -> SourceState:
        """A copy of ``run``'s figures now (``elapsed`` so far if it is not done)."""
        r = run.request
        listed = None if run.listed_at is None else max(run.listed_at - started, 0.0)
        return cls(run.index, r.host, r.port, r.path or ".", r.delay, run.label, done,
                   run.ok, SizeStats(run.stats.count, run.stats.total, run.stats.sum_sq),
                   run.dirs, run.skipped, run.not_exported, run.failed,
                   run.elapsed if done else max(now - started, 0.0), listed)


@dataclass(frozen=True)
class Progress:
    """A job's live counters (those of the control protocol's PROGRESS line)."""

    files_done: int = 0
    bytes_done: int = 0
    files_total: int = 0
    bytes_total: int = 0
    files_failed: int = 0
    listing_done: bool = False


@dataclass
class JobRecord:
    """One job: live while it runs (``job`` set), frozen once it ended."""

    id: str
    started: float
    job: Job | None
    ended: float | None = None
    ok: bool | None = None
    errors: list[tuple[int, str | None, str]] = field(default_factory=list)
    errors_dropped: int = 0
    #: (seconds since start, bytes done, files done), oldest first.
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    sources: list[SourceState | None] = field(default_factory=list)
    final: Progress | None = None

    @property
    def running(self) -> bool:
        return self.ended is None

    def progress(self) -> Progress:
        job = self.job
        if job is None:
            return self.final or Progress()
        return Progress(job.files_done, job.bytes_done, job.files_total, job.bytes_total,
                        job.files_failed, job.listing_done)

    def source_states(self, now: float) -> list[SourceState]:
        """Every SPEC's figures: final ones for the SPECs done, live ones for the others."""
        out = []
        live = self.job.sources if self.job is not None else []
        for i, state in enumerate(self.sources):
            if state is None and i < len(live):
                state = SourceState.of(live[i], False, self.started, now)
            if state is not None:
                out.append(state)
        return out

    def sample(self, now: float, bytes_done: int, files_done: int) -> None:
        self.samples.append((max(now - self.started, 0.0), bytes_done, files_done))
        if len(self.samples) > MAX_SAMPLES:
            # Keep the first and the newest: halve the rest.
            self.samples = self.samples[:-1:2] + self.samples[-1:]


@dataclass
class Outcome:
    """Figures of the jobs that ended with one outcome, summed (for /metrics counters)."""

    jobs: int = 0
    files: int = 0
    bytes: int = 0
    skipped: int = 0
    failed: int = 0


class JobHistory:
    """The running and the last `KEEP_JOBS` ended jobs of a service, and running totals."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.jobs: OrderedDict[str, JobRecord] = OrderedDict()
        self.outcomes = {name: Outcome() for name in OUTCOMES}
        #: Errors reported, by scope: "source" (a whole SPEC) or "path" (one entry or file).
        self.errors = {"source": 0, "path": 0}
        #: Per source label, when (clock seconds) a job last mirrored it without an error.
        self.last_success: OrderedDict[str, float] = OrderedDict()
        #: Called with each SPEC's final state (the /metrics histograms listen here).
        self.source_listeners: list[Callable[[SourceState], None]] = []

    def watch(self, observer: JobObserver) -> JobObserver:
        """The observer to give a new job: ``observer``, with this history listening in."""
        return _Watch(self, observer)

    def running(self) -> list[JobRecord]:
        return [r for r in self.jobs.values() if r.running]

    def recent(self) -> list[JobRecord]:
        """Every job kept, newest first."""
        return list(reversed(self.jobs.values()))

    def get(self, job_id: str) -> JobRecord | None:
        return self.jobs.get(job_id)

    # -- events, from `_Watch` ------------------------------------------------------------

    def _started(self, job: Job) -> None:
        record = JobRecord(job.id, self.clock.seconds(), job)
        record.sources = [None] * len(job.sources)
        record.sample(record.started, 0, 0)
        self.jobs[job.id] = record

    def _progress(self, job: Job) -> None:
        record = self.jobs.get(job.id)
        if record is not None:
            record.sample(self.clock.seconds(), job.bytes_done, job.files_done)

    def _error(self, record: JobRecord, index: int, path: str | None, message: str) -> None:
        self.errors["source" if path is None else "path"] += 1
        if len(record.errors) < MAX_ERRORS:
            record.errors.append((index, path, message))
        else:
            record.errors_dropped += 1

    def _source_done(self, run: SourceRun) -> None:
        record = self.jobs.get(run.job.id)
        if record is None:
            return
        now = self.clock.seconds()
        state = SourceState.of(run, True, record.started, now)
        if run.index < len(record.sources):
            record.sources[run.index] = state
        if state.ok:
            self.last_success[state.label] = now
            self.last_success.move_to_end(state.label)
            while len(self.last_success) > MAX_SOURCES_SEEN:
                self.last_success.popitem(last=False)
        for listener in self.source_listeners:
            listener(state)

    def _done(self, job: Job) -> None:
        record = self.jobs.get(job.id)
        if record is None:
            return
        now = self.clock.seconds()
        record.final = record.progress()
        record.sources = [s if s is not None else SourceState.of(run, True, record.started, now)
                          for s, run in zip(record.sources, job.sources, strict=True)]
        record.sample(now, job.bytes_done, job.files_done)
        record.ended = now
        record.ok = job.ok
        record.job = None
        totals = self.outcomes["ok" if job.ok else "failed"]
        totals.jobs += 1
        for s in record.sources:
            assert s is not None
            totals.files += s.stats.count
            totals.bytes += s.stats.total
            totals.skipped += s.skipped
            totals.failed += s.failed
        ended = [k for k, r in self.jobs.items() if not r.running]
        for k in ended[: max(len(ended) - KEEP_JOBS, 0)]:
            del self.jobs[k]


class _Watch:
    """A `JobObserver` that tells ``history`` what it passes on to ``inner``."""

    def __init__(self, history: JobHistory, inner: JobObserver) -> None:
        self.history = history
        self.inner = inner
        self.record: JobRecord | None = None

    def job_started(self, job: Job) -> None:
        self.history._started(job)
        self.record = self.history.jobs.get(job.id)
        self.inner.job_started(job)

    def progress(self, job: Job) -> None:
        self.history._progress(job)
        self.inner.progress(job)

    def source_error(self, index: int, path: str | None, message: str) -> None:
        if self.record is not None:
            self.history._error(self.record, index, path, message)
        self.inner.source_error(index, path, message)

    def link_skipped(self, index: int, path: str | None, message: str) -> None:
        self.inner.link_skipped(index, path, message)

    def source_done(self, run: SourceRun) -> None:
        self.history._source_done(run)
        self.inner.source_done(run)

    def job_done(self, job: Job) -> None:
        # Recorded first: a failing observer must not keep the job "running" on the page.
        self.history._done(job)
        self.inner.job_done(job)
