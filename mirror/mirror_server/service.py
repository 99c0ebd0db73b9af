"""The mirror service: the shared work queue, the worker pool, the disk threads, the jobs."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, cast

from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mirror.job_options import JobOptions
from mirror.mirror_server.connections import EndpointFactory, tcp_endpoints
from mirror.mirror_server.history import JobHistory
from mirror.mirror_server.job import Job, JobObserver, SourceRun, WorkItem
from mirror.mirror_server.journal import Journal
from mirror.mirror_server.links import LINKS_SAFE
from mirror.mirror_server.multi_source import (
    MAX_HOLDERS,
    THRESHOLD,
    ExplicitHolders,
    HolderFinder,
)
from mirror.mirror_server.partials import PartialDir
from mirror.mirror_server.placement import PlacementObserver
from mirror.mirror_server.receiver import SMALL_FILE
from mirror.mirror_server.registry import DEFAULT_KEEP, JobRegistry
from mirror.mirror_server.store import DescriptorBudget, SweepStopped, sweep_temporaries
from mirror.mirror_server.subtree_lock import SubtreeLocks
from mirror.mirror_server.work_queue import BoundedQueue
from mirror.threads import DiskThreads, Threads
from mirror.wire import frames
from mirror.wire.control import SourceRequest


@dataclass
class MirrorSettings:
    """Local settings of a mirror server (defaults documented in the README)."""

    workers: int = 8
    queue_size: int = 1000
    #: Small files a worker fetches and commits together.
    batch_files: int = 32
    #: Fetch small files in bundles (FETCH_MANY), at most this many files a bundle; 0: one
    #: FETCH each.
    bundle_files: int = 32
    connections_per_source: int = 2
    disk_threads: int = 4
    stall_timeout: float = 30.0
    max_file_size: int = 1 << 40
    max_connections: int = 256
    max_per_peer: int = 64
    submit_timeout: float = 30.0
    write_timeout: float = 60.0
    #: Seconds a listing may stay unread while the work queue is full; it is then closed
    #: and resumed from its cursor once the queue has room (below half full). Well under a
    #: content server's default --write-timeout (60 s), after which it would drop us anyway.
    list_hold: float = 5.0
    #: Seconds a finished job is kept in the journal (for --attach and --jobs).
    keep_jobs: float = DEFAULT_KEEP
    #: --min-rate: bytes per second a content connection must deliver over
    #: ``min_rate_window`` seconds of transfer time (mirror_server/min_rate.py); 0: none.
    min_rate: int = 0
    min_rate_window: float = 30.0
    #: fsync each placed file before its rename and its directory after (--no-fsync: off).
    fsync: bool = True
    #: Multi-source download: files of at least this many bytes are fetched from up to
    #: ``max_holders`` holders (the origin included) at once; 1: never.
    multi_source_threshold: int = THRESHOLD
    max_holders: int = MAX_HOLDERS
    #: --holder HOST:PORT: serving mirrors assumed to hold every file (tests, demos).
    holders: tuple[tuple[str, int], ...] = ()


class MirrorService(MultiService):
    """Takes jobs and runs them with ``settings.workers`` workers fed by one bounded queue,
    which serves the jobs, and each job's sources, in turn.

    ``endpoints`` makes the endpoint to each content server (plain TCP by default).
    """

    log = Logger()

    def __init__(self, mirror_dir: str, settings: MirrorSettings | None = None,
                 reactor: IReactorTime | None = None, threads: Threads | None = None,
                 endpoints: EndpointFactory | None = None,
                 journal: Journal | None = None,
                 partials: PartialDir | None = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.mirror_dir = os.path.abspath(mirror_dir)
        self.settings = settings or MirrorSettings()
        if threads is None:
            disk = DiskThreads(reactor, self.settings.disk_threads, name="mirror-disk")
            disk.setServiceParent(self)
            threads = disk
        self.threads = threads
        # The reactor makes TCP connections too (its static type cannot say both).
        self.endpoints = endpoints or tcp_endpoints(cast(IReactorTCP, reactor))
        #: Directory descriptors the stores of all jobs may keep open between uses.
        self.dir_budget = DescriptorBudget()
        #: Fair: round-robin over the jobs, then over each job's sources (work_queue.py).
        self.queue: BoundedQueue[WorkItem] = BoundedQueue(self.settings.queue_size,
                                                          key=WorkItem.share_key,
                                                          yields=self._saturated)
        #: Workers running each job's transfers now.
        self._working: dict[Job, int] = {}
        #: The subtrees of running --delete jobs (an overlapping one is refused).
        self.subtree_locks = SubtreeLocks()
        self._workers: list[Deferred[None]] = []
        #: Running and recent jobs, read by the web status page and /metrics.
        self.history = JobHistory(reactor)
        #: The job journal (None: jobs live in memory only, ids restart from 1).
        self.journal = journal
        job_ids = itertools.count(1)
        new_id: Callable[[], str] = lambda: str(next(job_ids))  # noqa: E731
        # Every job's events, resumed ones too, reach the status page (history.watch).
        self.registry = JobRegistry(self, reactor, journal, self.settings.keep_jobs, new_id,
                                    partials, locks=self.subtree_locks,
                                    watch=self.history.watch)
        #: Who else holds a file, for multi-source download (the index client replaces it).
        self.holder_finder: HolderFinder | None = (
            ExplicitHolders(list(self.settings.holders)) if self.settings.holders else None)
        #: Told of each file placed or removed (--serve with --index: `index_node`).
        self.placements: PlacementObserver | None = None

    def startService(self) -> None:
        super().startService()
        # Temporary files of a server that was killed: never complete, never at a final name.
        # The workers start once they are gone: on a big mirror the sweep takes a while, and
        # it must not take a new transfer's temporary file for a leftover and remove it.
        # (Jobs are accepted and listed meanwhile; only their transfers wait.)
        sweep = self.threads.run(sweep_temporaries, self.mirror_dir)
        sweep.addCallbacks(self._swept, self._sweep_failed)
        sweep.addCallback(lambda _: self._start_workers())
        if self.journal is not None:
            # Unfinished jobs start again (their listings now; transfers once the workers do).
            loading = self.journal.load().addCallbacks(
                self.registry.resume,
                lambda f: self.log.failure("cannot load the job journal", f))
            loading.addCallback(self._loaded)

    def _loaded(self, _: None) -> None:
        if self.running:
            self.registry.start_pruning()

    def _swept(self, n: int) -> None:
        if n:
            self.log.info("removed {n} leftover temporary files", n=n)

    def _sweep_failed(self, f: Failure) -> None:
        if f.check(SweepStopped):
            self.log.error("{reason}", reason=str(f.value))
        else:
            self.log.failure("sweeping temporary files failed", f)

    def _start_workers(self) -> None:
        if self.running and not self._workers:
            self._workers = [Deferred.fromCoroutine(self._work())
                             for _ in range(self.settings.workers)]

    def stopService(self) -> Any:
        self.registry.stop()
        for w in self._workers:
            w.addErrback(lambda f: f.trap(CancelledError))
            w.cancel()
        self._workers = []
        if self.journal is None:
            return super().stopService()
        return Deferred.fromCoroutine(self._stop_with_journal(self.journal))

    async def _stop_with_journal(self, journal: Journal) -> None:
        # What the jobs did up to now is committed, and the journal closed, before the
        # thread pools stop (the journal's is a child service); unfinished jobs stay
        # "running" in it and resume at the next start.
        try:
            await journal.close()
        except Exception:
            self.log.failure("closing the job journal")
        await maybeDeferred(MultiService.stopService, self)

    def _saturated(self, job: Hashable) -> bool:
        """A --bwlimit job's transfers wait for its tokens, not for workers: once it holds
        ``--connections-per-source`` workers per SPEC (at most half of them), it yields its
        turns to the other jobs that have files waiting."""
        if not isinstance(job, Job) or job.throttle is None:
            return False
        s = self.settings
        share = max(1, min(s.workers // 2, s.connections_per_source * len(job.sources)))
        return self._working.get(job, 0) >= share

    async def _work(self) -> None:
        while True:
            item = await self.queue.get()
            job = item.source.job
            self._working[job] = self._working.get(job, 0) + 1
            try:
                if item.entry.size > SMALL_FILE:
                    await item.source.transfer(item.parts, item.entry)
                    continue
                # Small files already waiting go together: in bundles (FETCH_MANY) per
                # source, and their commits share a thread call (DiskThreads.run_batched).
                batch = [item] + self.queue.take_ready(
                    self.settings.batch_files - 1, lambda i: i.entry.size <= SMALL_FILE)
                await DeferredList(self._transfers(batch), consumeErrors=True)
            except CancelledError:
                raise  # the service is stopping (its transfers stay for the next start)
            except Exception:
                self.log.failure("worker: unexpected error")
            finally:
                left = self._working.pop(job) - 1
                if left:
                    self._working[job] = left

    def _transfers(self, batch: list[WorkItem]) -> list[Deferred[None]]:
        """The transfers of a worker's batch of small files: the files of each source that
        fit a FETCH_MANY go in bundles of up to ``bundle_files`` (one coroutine each), the
        others one by one.

        (The queue hands a worker the files of one source at a time; grouping here keeps
        that true whatever the queue does.) A SPEC with a delay is fetched file by file: a
        content server waits the delay before each file of a bundle in turn, whereas
        separate FETCHes wait theirs all at once.
        """
        per_bundle = self.settings.bundle_files
        bundles: dict[SourceRun, list[WorkItem]] = {}
        work = []
        for item in batch:
            if (per_bundle and item.entry.size <= frames.BUNDLE_FILE_MAX
                    and not item.source.request.delay):
                items = bundles.setdefault(item.source, [])
                items.append(item)
                if len(items) == per_bundle:
                    work.append(Deferred.fromCoroutine(item.source.transfer_bundle(items)))
                    bundles[item.source] = []
            else:
                work.append(Deferred.fromCoroutine(item.source.transfer(item.parts, item.entry)))
        for source, items in bundles.items():
            if items:
                work.append(Deferred.fromCoroutine(source.transfer_bundle(items)))
        return work

    @property
    def jobs(self) -> dict[str, Job]:
        """The running jobs by id."""
        return self.registry.running()

    def submit(self, sources: list[SourceRequest], observer: JobObserver,
               options: JobOptions | None = None, bwlimit: int = 0,
               links_mode: str = LINKS_SAFE) -> Job:
        """Start a job; raises `SubtreeLocked` (a refusal, with the reason) if it deletes
        in a subtree another --delete job holds, `JournalFull` if the journal cannot take
        it."""
        return self.registry.submit(sources, observer, options, bwlimit, links_mode)
