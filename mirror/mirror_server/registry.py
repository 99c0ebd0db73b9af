"""The jobs of a mirror server: running ones, finished ones kept for a while, and what each
has said so far, so that a client can attach to a job at any time.

`JobFeed` stands between a `Job` and whoever listens: it is the job's `JobObserver`, forwards
everything to the client that submitted the job (if still there), turns it into control
events (`mirror.wire.control`) for attached clients, keeps what an attacher needs to catch up
(the SPECs, errors, SOURCE-DONEs, the last PROGRESS) and tells the journal.

`JobRegistry` owns the feeds: it submits jobs, resumes the unfinished ones found in the
journal at start-up, answers ATTACH, JOBS and CANCEL, and forgets finished jobs once they
are older than ``keep`` seconds (in memory and in the journal).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mirror import paths
from mirror.job_options import JobOptions
from mirror.mirror_server import journal as jr
from mirror.mirror_server.job import Job, JobObserver, JobResources, SourceRun, mirror_top
from mirror.mirror_server.journal_options import JobRequest
from mirror.mirror_server.links import LINKS_SAFE
from mirror.mirror_server.partials import JobPartials, PartialDir
from mirror.mirror_server.subtree_lock import SubtreeLocked, SubtreeLocks
from mirror.wire import control

#: Errors an attacher can catch up on (more were shown to whoever followed the job live).
MAX_REPLAY_ERRORS = jr.MAX_KEPT_ERRORS
#: Default seconds a finished job is kept (for --attach and --jobs): a week.
DEFAULT_KEEP = 7 * 86400.0
#: Seconds between two prunings of the finished jobs.
PRUNE_INTERVAL = 3600.0


class EventSink(Protocol):
    """An attached client: control events, then the end of the job."""

    def send_event(self, event: control.ServerEvent) -> None: ...

    def job_over(self) -> None: ...


def source_label(source: control.SourceRequest) -> str:
    return f"{source.host}:{source.port}:{source.path or '.'}"


def figures_of(run: SourceRun, done: bool) -> jr.SourceFigures:
    s = run.stats
    return jr.SourceFigures(done, run.ok, s.count, run.dirs, s.total, s.sum_sq, run.skipped,
                            run.failed, run.elapsed, run.not_exported)


def done_event(index: int, f: jr.SourceFigures) -> control.SourceDone:
    return control.SourceDone(index, f.ok, f.files, f.dirs, f.bytes, f.sum_sq, f.skipped,
                              f.failed, f.elapsed, f.not_exported)


class JobFeed:
    """A job's observer: the submitter, the attached clients, the journal."""

    log = Logger()

    def __init__(self, registry: JobRegistry, record: jr.JobRecord,
                 submitter: JobObserver | None) -> None:
        self.registry = registry
        self.record = record
        self.submitter = submitter
        self.job: Job | None = None
        self.sinks: list[EventSink] = []
        self.last_progress: control.Progress | None = None
        self.done = False

    @property
    def id(self) -> str:
        return self.record.id

    # -- what an attacher is told first ------------------------------------------------------

    def replay(self) -> list[control.ServerEvent]:
        rec = self.record
        events: list[control.ServerEvent] = [control.JobAccepted(rec.id)]
        events += [control.Spec(i, s) for i, s in enumerate(rec.sources)]
        if rec.resumed:
            events.append(control.Resumed(rec.resumed))
        events += [control.SourceError(e.index, e.path, e.message) for e in rec.errors]
        if rec.errors_dropped:
            events.append(control.SourceError(0, None, f"{rec.errors_dropped} more errors "
                                                       "not kept by the mirror server"))
        if self.last_progress is not None:
            events.append(self.last_progress)
        events += [done_event(i, f) for i, f in enumerate(rec.figures)
                   if f is not None and f.done]
        if self.done:
            events.append(control.Done(rec.state == jr.OK))
        return events

    def attach(self, sink: EventSink) -> None:
        for event in self.replay():
            sink.send_event(event)
        if self.done:
            sink.job_over()
        else:
            self.sinks.append(sink)

    def detach(self, sink: EventSink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)

    def _broadcast(self, event: control.ServerEvent) -> None:
        for sink in list(self.sinks):
            try:
                sink.send_event(event)
            except Exception:
                self.log.failure("job {id}: an attached client failed", id=self.id)
                self.sinks.remove(sink)

    # -- JobObserver ------------------------------------------------------------------------

    def job_started(self, job: Job) -> None:
        if self.submitter is not None:
            self.submitter.job_started(job)

    def progress(self, job: Job) -> None:
        if self.submitter is not None:
            self.submitter.progress(job)
        self.last_progress = control.Progress(job.files_done, job.bytes_done, job.files_total,
                                              job.bytes_total, job.listing_done)
        self._broadcast(self.last_progress)
        journal = self.registry.journal
        if job.partials is not None:
            job.partials.save_checkpoints()
        for run in job.sources:
            if not run.reported:
                figures = figures_of(run, False)
                if figures != self.record.figures[run.index]:
                    self.record.figures[run.index] = figures
                    if journal is not None:
                        journal.source_figures(self.id, run.index, figures)

    def link_skipped(self, index: int, path: str | None, message: str) -> None:
        # Not an error: the submitter hears of it (if it asked, with LINKS); attachers are
        # told live (they speak LINKS), not on catching up.
        if self.submitter is not None:
            self.submitter.link_skipped(index, path, message)
        self._broadcast(control.LinkSkipped(index, path, message))

    def source_error(self, index: int, path: str | None, message: str) -> None:
        if self.submitter is not None:
            self.submitter.source_error(index, path, message)
        self._broadcast(control.SourceError(index, path, message))
        error = jr.JobError(index, path, message)
        journal = self.registry.journal
        if len(self.record.errors) < MAX_REPLAY_ERRORS:
            self.record.errors.append(error)
            if journal is not None:
                journal.job_error(self.id, error)
        else:
            self.record.errors_dropped += 1

    def source_done(self, run: SourceRun) -> None:
        if self.submitter is not None:
            self.submitter.source_done(run)
        figures = figures_of(run, True)
        self.record.figures[run.index] = figures
        sync = run.sync
        if run.job.options.reports_sync and sync is not None:
            self._broadcast(control.SourceSync(run.index, sync.replaced, sync.deleted,
                                               sync.deleted_bytes, sync.deletion))
        if not run.restored_done:
            self._broadcast(control.LinksDone(run.index, run.links.placed, run.links.skipped))
        self._broadcast(done_event(run.index, figures))
        if self.registry.journal is not None and not self.registry.stopping:
            # (A source cut short by the server stopping is not done: it resumes.)
            self.registry.journal.source_figures(self.id, run.index, figures)

    def job_done(self, job: Job) -> None:
        rec = self.record
        rec.state = jr.CANCELLED if job.cancelled else jr.OK if job.ok else jr.FAILED
        rec.finished = self.registry.clock.seconds()
        self.done = True
        if self.registry.journal is not None and not self.registry.stopping:
            self.registry.journal.job_state(rec)
        if self.submitter is not None:
            self.submitter.job_done(job)
        self._broadcast(control.Done(job.ok))
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.job_over()


class JobRegistry:
    """Every job the server knows, by id (see the module's docstring)."""

    log = Logger()

    def __init__(self, resources: JobResources, clock: IReactorTime,
                 journal: jr.Journal | None = None, keep: float = DEFAULT_KEEP,
                 new_id: Callable[[], str] | None = None,
                 partial_dir: PartialDir | None = None, *,
                 locks: SubtreeLocks | None = None,
                 watch: Callable[[JobObserver], JobObserver] | None = None) -> None:
        self.resources = resources
        #: The subtrees of running --delete jobs (an overlapping one is refused).
        self.locks = locks if locks is not None else SubtreeLocks()
        #: Wraps each job's observer (the web status page's history listening in).
        self._watch = watch
        self.clock = clock
        self.journal = journal
        self.keep = keep
        self.feeds: dict[str, JobFeed] = {}
        #: Where big files are received resumably (None: no resumption).
        self.partial_dir = partial_dir
        #: The server is stopping: jobs that end now were cut short, not finished; they
        #: stay "running" in the journal, with their partials, to resume at the next start.
        self.stopping = False
        if journal is not None:
            new_id = journal.new_job_id
        assert new_id is not None, "job ids come from the journal or from new_id"
        self._new_id = new_id
        self._pruning = LoopingCall(self.prune)
        self._pruning.clock = clock

    def start_pruning(self, interval: float = PRUNE_INTERVAL) -> None:
        """Prune now and then, also while no job ends (and at once)."""
        self._pruning.start(interval, now=True)

    def stop_pruning(self) -> None:
        if self._pruning.running:
            self._pruning.stop()

    def running(self) -> dict[str, Job]:
        return {i: f.job for i, f in self.feeds.items() if f.job is not None and not f.done}

    def submit(self, sources: list[control.SourceRequest], submitter: JobObserver,
               options: JobOptions | None = None, bwlimit: int = 0,
               links_mode: str = LINKS_SAFE) -> Job:
        """Start a new job (its id is unique across restarts when there is a journal);
        raises `SubtreeLocked` (a refusal, with the reason) if it deletes in a subtree
        another --delete job holds."""
        request = JobRequest(options or JobOptions(), bwlimit, links_mode)
        record = jr.JobRecord(self._new_id(), list(sources), submitted=self.clock.seconds(),
                              options=request.to_record())
        self._lock(record.id, record.sources, request.options)
        feed = JobFeed(self, record, submitter)
        if self.journal is not None:
            self.journal.job_submitted(record)
        return self._start(feed, request)

    def _lock(self, job_id: str, sources: list[control.SourceRequest],
              options: JobOptions) -> None:
        if options.delete and not options.dry_run:
            self.locks.acquire(job_id, [
                (mirror_top(s.host, s.port), paths.parse_request_path(s.path))
                for s in sources])

    def _start(self, feed: JobFeed, request: JobRequest, restore: bool = False) -> Job:
        rec = feed.record
        observer: JobObserver = feed if self._watch is None else self._watch(feed)
        job = Job(rec.id, rec.sources, self.resources, observer, request.options,
                  bwlimit=request.bwlimit, links_mode=request.links_mode)
        feed.job = job
        if self.partial_dir is not None:
            job.partials = JobPartials(rec.id, self.partial_dir, self.resources.threads,
                                       self.journal, rec.partials if restore else ())
        self.feeds[rec.id] = feed
        if restore:
            for run, figures in zip(job.sources, rec.figures, strict=True):
                if figures is None:
                    continue
                if figures.done:
                    # Finished before the restart: reported again as it was.
                    run.restored_done = True
                    run.ok, run.dirs, run.skipped = figures.ok, figures.dirs, figures.skipped
                    run.failed, run.not_exported = figures.failed, figures.not_exported
                    run.elapsed = figures.elapsed
                    run.restore(figures.files, figures.bytes, figures.sum_sq, figures.elapsed)
                else:
                    # Skipped, failed, directories and not-exported are counted again by the
                    # new listing; transfers stay counted.
                    run.restore(figures.files, figures.bytes, figures.sum_sq, figures.elapsed)
        self.log.info("job {id}: {n} source(s){how}", id=rec.id, n=len(rec.sources),
                      how=" resumed after a restart" if restore else "")
        observer.job_started(job)
        job.start().addBoth(self._ended, feed)
        return job

    def _ended(self, result: Any, feed: JobFeed) -> None:
        self.locks.release(feed.id)
        self.log.info("job {id} done: {state}", id=feed.id, state=feed.record.state)
        partials = feed.job.partials if feed.job is not None else None
        if partials is not None and not self.stopping:
            if partials.reused:
                self.log.info("job {id}: {n} bytes of partial transfers reused", id=feed.id,
                              n=partials.reused)
            closing = Deferred.fromCoroutine(partials.close())
            closing.addErrback(lambda f: self.log.failure("removing partial files", f))
        feed.job = None  # the finished job's objects (stores, listings) can go
        self.prune()

    def resume(self, records: list[jr.JobRecord]) -> None:
        """Take the jobs loaded from the journal: finished ones are kept (for --attach and
        --jobs) until they are older than ``keep``; unfinished ones start again."""
        if self.partial_dir is not None:
            # Before any job runs again: files no record names go, and those of finished
            # jobs (their end was not committed) too.
            keep = {p.name for r in records if r.state == jr.RUNNING for p in r.partials}
            for rec in records:
                if rec.state != jr.RUNNING:
                    for part in rec.partials:
                        if self.journal is not None:
                            self.journal.partial_gone(rec.id, part.index, part.path)
                    rec.partials = []
            sweeping = self.resources.threads.run(self.partial_dir.sweep, keep)
            sweeping.addCallbacks(self._swept,
                                  lambda f: self.log.failure("sweeping partial files", f))
        for rec in records:
            if rec.state == jr.RUNNING:
                rec.resumed += 1
                # A source not done is listed again, which reports its errors again: those
                # recorded before the restart would show twice.
                restarted = [i for i, f in enumerate(rec.figures) if f is None or not f.done]
                rec.errors = [e for e in rec.errors if e.index not in restarted]
                if self.journal is not None:
                    self.journal.job_resumed(rec, restarted)
                try:
                    # Run as submitted: its options, --bwlimit, links, --delete's locks.
                    request = JobRequest.from_record(rec.options)
                    self._lock(rec.id, rec.sources, request.options)
                except (ValueError, SubtreeLocked) as e:
                    self._not_resumed(rec, str(e))
                    continue
                self._start(JobFeed(self, rec, None), request, restore=True)
            else:
                feed = JobFeed(self, rec, None)
                feed.done = True
                self.feeds[rec.id] = feed
        self.prune()

    def _not_resumed(self, rec: jr.JobRecord, why: str) -> None:
        """An unfinished job that cannot run again (a --delete job submitted since the
        start holds its subtree, or a record it cannot read): failed, with the reason."""
        self.log.error("job {id}: not resumed: {why}", id=rec.id, why=why)
        error = jr.JobError(0, None, f"not resumed after the restart: {why}")
        rec.errors.append(error)
        rec.state = jr.FAILED
        rec.finished = self.clock.seconds()
        if self.journal is not None:
            self.journal.job_error(rec.id, error)
            self.journal.job_state(rec)
        feed = JobFeed(self, rec, None)
        feed.done = True
        self.feeds[rec.id] = feed

    def stop(self) -> None:
        """The server is stopping: the last checkpoints of the partials go to the journal,
        and the jobs cut short from now on stay unfinished there (see ``stopping``)."""
        self.stopping = True
        self.stop_pruning()
        for feed in self.feeds.values():
            if feed.job is not None and feed.job.partials is not None:
                feed.job.partials.save_checkpoints()

    def _swept(self, removed: int) -> None:
        if removed:
            self.log.info("removed {n} partial files no journal record names", n=removed)

    def prune(self) -> None:
        """Forget the jobs finished more than ``keep`` seconds ago."""
        limit = self.clock.seconds() - self.keep
        old = [i for i, f in self.feeds.items()
               if f.done and f.record.finished is not None and f.record.finished < limit]
        for job_id in old:
            del self.feeds[job_id]
        if self.journal is not None:
            self.journal.prune(limit)

    # -- requests of mirror-init -------------------------------------------------------------

    def attach(self, job_id: str, sink: EventSink) -> JobFeed | None:
        feed = self.feeds.get(job_id)
        if feed is not None:
            feed.attach(sink)
        return feed

    def cancel(self, job_id: str) -> str | None:
        """Cancel a running job; None, or why not."""
        feed = self.feeds.get(job_id)
        if feed is None:
            return f"no job {job_id}"
        if feed.done or feed.job is None:
            return f"job {job_id} is already finished ({feed.record.state})"
        self.log.info("job {id}: cancelled", id=job_id)
        feed.job.cancel()
        return None

    def states(self) -> list[control.JobState]:
        """The jobs, oldest first, for JOBS."""
        out = []
        for feed in self.feeds.values():
            rec = feed.record
            files = sum(f.files for f in rec.figures if f is not None)
            nbytes = sum(f.bytes for f in rec.figures if f is not None)
            if feed.last_progress is not None and not feed.done:
                files, nbytes = feed.last_progress.files_done, feed.last_progress.bytes_done
            out.append(control.JobState(rec.id, rec.state, rec.submitted, files, nbytes,
                                        ",".join(source_label(s) for s in rec.sources)))
        return out
