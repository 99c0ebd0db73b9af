"""A mirror job: one manager per SPEC lists its tree and feeds the shared work queue; the
workers' transfers report back here.

`SourceRun` is the manager of one SPEC. It checks every LIST entry before anything touches the
disk (a safe name, inside the requested path, in the listing's canonical order: see
`mirror.mirror_server.listed`), creates directories, skips files already current (size and
mtime, as rsync's quick check), and queues the rest, waiting while the queue is full. Link
entries go to its `mirror.mirror_server.links.SourceLinks` (placed if safe, or skipped).
`SourceRun.transfer` is what a worker runs for one file: FETCH into a `FileReceiver`, verify,
rename; one retry, then a report. `SourceRun.transfer_bundle` is what it runs for the small
files of one source in its batch: FETCH_MANY requests, every file written, verified and renamed
in one thread call, each file that fails retried alone by `transfer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mirror import paths
from mirror.job_options import JobOptions
from mirror.mirror_server import links as links_
from mirror.mirror_server.connections import EndpointFactory, SourceConnections
from mirror.mirror_server.content_client import BundleResult, TransferError
from mirror.mirror_server.deletion import DeletionGate
from mirror.mirror_server.durable import Durability
from mirror.mirror_server.listed import EntryRefused, ListingOrder
from mirror.mirror_server.multi_source import HolderFinder, for_job
from mirror.mirror_server.receiver import FileReceiver
from mirror.mirror_server.store import DescriptorBudget, MirrorStore, StoreError
from mirror.mirror_server.sync import (
    CURRENT,
    NEW,
    REPLACES,
    SpecSync,
    classify,
    open_existing_store,
)
from mirror.mirror_server.throttle import Throttle
from mirror.mirror_server.work_queue import BoundedQueue
from mirror.stats import SizeStats
from mirror.threads import Threads
from mirror.wire import frames
from mirror.wire.control import SourceRequest

if TYPE_CHECKING:
    from mirror.mirror_server.partials import JobPartials
    from mirror.mirror_server.placement import PlacementObserver

PROGRESS_INTERVAL = 0.2
#: Errors of one source reported one by one; later ones are counted in a last message.
MAX_REPORTED_ERRORS = 1000


class JobObserver(Protocol):
    """Who hears about a job: the control connection that submitted it."""

    def job_started(self, job: Job) -> None: ...

    def progress(self, job: Job) -> None: ...

    def source_error(self, index: int, path: str | None, message: str) -> None: ...

    def source_done(self, run: SourceRun) -> None: ...

    def link_skipped(self, index: int, path: str | None, message: str) -> None:
        """A link of source ``index`` was not placed (``path`` None: about the source)."""

    def job_done(self, job: Job) -> None: ...


class WorkItem(NamedTuple):
    """One file for a worker. (A named tuple: made per listed file; a frozen dataclass
    costs several times as much to make.)"""

    source: SourceRun
    parts: paths.Parts
    entry: frames.Entry

    def share_key(self) -> tuple[Job, SourceRun]:
        """Whose share of the workers this item uses: its job, then its source."""
        return self.source.job, self.source


class JobSettings(Protocol):
    """The settings a job reads (`MirrorSettings` has them)."""

    @property
    def connections_per_source(self) -> int: ...

    @property
    def stall_timeout(self) -> float: ...

    @property
    def max_file_size(self) -> int: ...

    @property
    def list_hold(self) -> float: ...

    @property
    def min_rate(self) -> int: ...

    @property
    def min_rate_window(self) -> float: ...

    @property
    def fsync(self) -> bool: ...

    @property
    def multi_source_threshold(self) -> int: ...

    @property
    def max_holders(self) -> int: ...


class JobResources(Protocol):
    """What a job uses of the service that runs it (`MirrorService` provides it): stated
    here, so that this module needs nothing of the service's, and a test or another runner
    can provide it."""

    @property
    def reactor(self) -> IReactorTime: ...

    @property
    def threads(self) -> Threads: ...

    @property
    def settings(self) -> JobSettings: ...

    @property
    def endpoints(self) -> EndpointFactory: ...

    @property
    def mirror_dir(self) -> str:
        """Where each source's ``HOST_PORT`` directory is made."""
        ...

    @property
    def dir_budget(self) -> DescriptorBudget:
        """Directory descriptors the stores of all jobs share."""
        ...

    @property
    def queue(self) -> BoundedQueue[WorkItem]:
        """The work queue the service's workers take `WorkItem` from."""
        ...

    @property
    def holder_finder(self) -> HolderFinder | None:
        """Who else holds a file (multi-source download); None: nobody is asked."""
        ...

    @property
    def placements(self) -> PlacementObserver | None:
        """Told of each file the stores place or remove (the index notifier); None: nobody."""
        ...


def mirror_top(host: str, port: int) -> str:
    """The directory of one content server under the mirror dir: ``HOST_PORT``."""
    return f"{host}_{port}"


class SourceRun:
    """The manager of one SPEC of a job, and the statistics of its transfers."""

    log = Logger()

    def __init__(self, job: Job, index: int, request: SourceRequest,
                 links_mode: str = links_.LINKS_SAFE) -> None:
        self.job = job
        self.index = index
        self.request = request
        self.label = f"{request.host}:{request.port}:{request.path or '.'}"
        self.stats = SizeStats()
        self.dirs = 0
        self.skipped = 0
        #: What the source did not export (links, special files, names that are not valid
        #: wire paths), as its LIST_ENDs count them.
        self.not_exported = 0
        self.failed = 0
        self.ok = True
        self.elapsed = 0.0
        self._order = ListingOrder()
        self._dir_meta: list[tuple[paths.Parts, int, int]] = []
        #: Directories this job made, along the listing's current path (see `_files`).
        self._fresh_dirs: list[paths.Parts] = []
        self._pending = 0
        self._listing_done = False
        self._errors = 0
        self._taking: Deferred[None] | None = None
        #: The furthest name received (in canonical order): a closed listing resumes after it.
        self._cursor: paths.Parts | None = None
        self._listing_conn: Any = None
        self._hold_call: Any = None
        #: The listing connection was not read from (a batch being taken) since the last
        #: batch arrived: a loss noticed now is the server dropping a client that did not read.
        self._list_held = False
        self._idle: Deferred[None] | None = None
        self.store: MirrorStore | None = None
        self.connections: SourceConnections | None = None
        #: Restored from the journal after a restart: files counted as transferred before
        #: it, which the new listing finds current (they are not counted again as skipped).
        self._skip_credit = 0
        #: Its SOURCE-DONE was recorded before a restart: nothing left to run.
        self.restored_done = False
        self.reported = False
        #: Filters, --delete and --dry-run of this SPEC (made by run()).
        self.sync: SpecSync | None = None
        #: The store is open (in a dry run it may stay None: nothing mirrored yet).
        self._store_ready = False
        #: The listing reached its LIST_END (deletion needs that, and no error in it).
        self._listing_complete = False
        self._gated = False
        #: When (reactor seconds) the listing ended, for the web status page's metrics.
        self.listed_at: float | None = None
        self.links = links_.SourceLinks(self, links_mode)
        #: Bytes of files fetched from several holders, by holder address (the report).
        self.holder_bytes: dict[str, int] = {}

    @property
    def listing_done(self) -> bool:
        """The source has been listed (completely or not): no more files will be queued."""
        return self._listing_done

    # -- reporting -------------------------------------------------------------------------

    def error(self, path: str | None, message: str, always: bool = False) -> None:
        """Report a failure; past `MAX_REPORTED_ERRORS` they are only counted (a hostile
        server streaming bad names must not flood the log and the client), unless
        ``always`` (what the job did about deletion is always said)."""
        self.ok = False
        self._errors += 1
        if self._errors > MAX_REPORTED_ERRORS and not always:
            return
        self.log.info("{source}: {path}: {message}", source=self.label, path=path or "-",
                      message=message)
        self.job.observer.source_error(self.index, path, message)

    def _listing_error(self, path: str | None, message: str) -> None:
        """A failure of the listing itself: the mirror is incomplete, deletion is off."""
        if self.sync is not None:
            self.sync.listing_failed()
        self.error(path, message)

    def link_skipped(self, path: str | None, message: str) -> None:
        """A link not placed (`mirror.mirror_server.links`): not a failure."""
        self.job.observer.link_skipped(self.index, path, message)

    @property
    def threads(self) -> Threads:
        return self.job.resources.threads

    def _report_unshown_errors(self) -> None:
        unshown = self._errors - MAX_REPORTED_ERRORS
        if unshown > 0:
            message = f"{unshown} more errors not shown"
            self.log.info("{source}: {message}", source=self.label, message=message)
            self.job.observer.source_error(self.index, None, message)

    # -- the manager -----------------------------------------------------------------------

    # -- cancel and restore (mirror_server/registry.py) ----------------------------------

    def restore(self, files: int, total: int, sum_sq: int, elapsed: float) -> None:
        """Continue the figures recorded before a restart: transfers counted then stay
        counted; the files they placed are current now and are not counted as skipped."""
        self.stats = SizeStats.from_sums(files, total, sum_sq)
        self.elapsed_before = elapsed
        self._skip_credit = files
        self.job.files_done += files
        self.job.files_total += files
        self.job.bytes_done += total
        self.job.bytes_total += total

    elapsed_before = 0.0

    def cancel(self) -> None:
        """Stop: no more listing, transfers in flight fail (their temporary files are
        removed), queued files are passed over. Reported once as an error of the source."""
        if self.reported:
            return
        self.error(None, "job cancelled")
        conn = self._listing_conn
        if conn is not None:
            conn.abort("job cancelled")
        if self.connections is not None:
            for c in self.connections.live_connections():
                c.abort("job cancelled")
            self.connections.close()

    async def run(self) -> None:
        if self.restored_done:
            self.reported = True
            if self.job.options.delete:
                # Its deletions were done before the restart; the job's other SPECs wait
                # for every one to say what it deletes (`DeletionGate`): nothing more here.
                self._gated = True
                Deferred.fromCoroutine(self.job.deletion_gate.decide(0))
            self.job.observer.source_done(self)
            return
        res = self.job.resources
        started = res.reactor.seconds()
        try:
            self._request_parts = paths.parse_request_path(self.request.path)
            self.sync = SpecSync(self.job.options, self._request_parts)
            self.connections = SourceConnections(
                res.reactor, self.request.host, self.request.port, res.endpoints,
                size=res.settings.connections_per_source,
                stall_timeout=res.settings.stall_timeout,
                max_file_size=res.settings.max_file_size,
                throttle=self.job.throttle,
                min_rate=res.settings.min_rate, min_rate_window=res.settings.min_rate_window,
            )
            await self._list()
            if self._pending:
                self._idle = Deferred()
                await self._idle
            await self._delete_extraneous()
            await self._finish_dirs()
        except Exception as e:
            self.log.failure("{source}: internal error", source=self.label)
            self._listing_error(None, f"internal error: {e}")
        finally:
            if self.job.options.delete and not self._gated:
                # The other SPECs of the job wait for every one to say what it deletes.
                self._gated = True
                Deferred.fromCoroutine(self.job.deletion_gate.decide(0))
            if self.connections is not None:
                self.connections.close()
            if self.store is not None:
                await res.threads.run(self.store.close)
            self.elapsed = self.elapsed_before + res.reactor.seconds() - started
            self._report_unshown_errors()
            self.reported = True
            self.links.finish()
            self.job.observer.source_done(self)

    async def _open_store(self) -> bool:
        res = self.job.resources
        top = mirror_top(self.request.host, self.request.port)
        try:
            if self.job.options.dry_run:
                # A dry run creates nothing, HOST_PORT included.
                self.store = await res.threads.run(open_existing_store, res.mirror_dir, top,
                                                   res.dir_budget)
            else:
                self.store = await res.threads.run(MirrorStore, res.mirror_dir, top,
                                                   res.dir_budget, Durability(res.settings.fsync),
                                                   observer=res.placements)
        except (OSError, paths.UnsafePath) as e:
            self.error(None, f"cannot use mirror directory {top}: "
                             f"{getattr(e, 'strerror', None) or e}")
            return False
        self._store_ready = True
        assert self.sync is not None  # made by run()
        await res.threads.run(self.sync.start, self.store)
        return True

    async def _list(self) -> None:
        """List the source, resuming from the cursor after each pause that closed it."""
        try:
            while await self._list_once() and not self.job.cancelled:
                # Closed while the queue was full: resume once it is half empty, not at the
                # first free slot (each resumption costs a connection and a re-descent), or
                # once this job holds at most its share of that (the queue gives it slots
                # first then: other jobs' backlog must not hold it up).
                queue = self.job.resources.queue
                await queue.wait_below(queue.size // 2, key=(self.job, self))
        finally:
            self._listing_done = True
            self.listed_at = self.job.resources.reactor.seconds()

    async def _list_once(self) -> bool:
        """One LIST request on a connection of its own; True if it was closed while paused
        (and is to be resumed from ``_cursor``).

        A connection of its own: listing waits (paused) while the queue is full, and must not
        stall the FETCHes that would empty it. A content server drops a client that reads
        nothing for its --write-timeout, so a pause longer than ``list_hold`` closes the
        listing: the server then holds nothing for it, and neither do we beyond one batch.
        """
        conn = None
        resume = False
        start = self._cursor
        assert self.connections is not None  # made by run()
        try:
            conn = await self.connections.connect()
            # Only now, with a server that answers, does HOST_PORT get created.
            if not self._store_ready and not await self._open_store():
                return False
            self._listing_conn = conn
            self._list_held = False
            cursor = None if self._cursor is None else paths.join_parts(self._cursor)
            _count, skipped = await conn.list(self.request.path, self._take_batch, cursor,
                                              links=self.links.requested)
            self.not_exported += skipped
            self._listing_complete = True
        except TransferError as e:
            if self.links.refused_by_server(e.code):
                return True  # an older content server: list again, without links
            # Lost while (or just after) we were not reading it: closed by us after
            # list_hold, or dropped by the server after its --write-timeout (a paused
            # transport notices only once it reads again). Not the source's fault: resume.
            # Only if the cursor moved on this connection: never an endless loop.
            resume = self._list_held and self._cursor != start
            if not resume and not self.job.cancelled:
                self._listing_error(None, f"cannot list {self.request.path or '.'}: {e}")
        finally:
            self._listing_conn = None
            # A batch may still be waiting for room in the queue (the connection dropped
            # meanwhile): its files count as pending before the listing counts as done.
            if self._taking is not None:
                await self._taking
            if conn is not None:
                conn.close()
        return resume

    def _take_batch(self, entries: list[frames.Entry]) -> Deferred[None]:
        # The last name received moves the cursor, if refused too (but still a valid name
        # in the requested path): it was received, and is reported once. Only forwards: an
        # error entry may name a directory again after its contents (the walker could not
        # climb back into it), and resuming from there would list them again.
        for entry in reversed(entries):
            if entry.is_error:
                continue
            try:
                parts = paths.parse_wire_path(entry.name)
            except paths.UnsafePath:
                continue
            if parts[: len(self._request_parts)] == self._request_parts:
                if self._cursor is None or parts > self._cursor:
                    self._cursor = parts
                break
        self._taking = taking = Deferred.fromCoroutine(self._take_safely(entries))
        self._list_held = not taking.called
        if not taking.called:
            taking.addBoth(self._held_done)
        return taking

    def _hold_started(self) -> None:
        """The queue is full: a listing held longer than ``list_hold`` gets closed."""
        conn = self._listing_conn
        if self._hold_call is None and conn is not None:
            res = self.job.resources
            self._hold_call = res.reactor.callLater(res.settings.list_hold, self._close_held,
                                                    conn)

    def _close_held(self, conn: Any) -> None:
        self._hold_call = None
        if conn is not None:
            conn.abort(f"{self.label}: listing paused (work queue full); resumed later")

    def _held_done(self, result: Any) -> Any:
        if self._hold_call is not None:
            if self._hold_call.active():
                self._hold_call.cancel()
            self._hold_call = None
        return result

    async def _take_safely(self, entries: list[frames.Entry]) -> None:
        try:
            await self._take(entries)
        except Exception as e:
            self.log.failure("{source}: taking LIST entries failed", source=self.label)
            self._listing_error(None, f"internal error: {e}")

    def _check(self, entry: frames.Entry) -> paths.Parts:
        try:
            parts = paths.parse_wire_path(entry.name)
        except paths.UnsafePath as e:
            raise EntryRefused(f"unsafe name refused: {e}") from None
        want = self._request_parts
        if parts[: len(want)] != want:
            raise EntryRefused("entry outside the requested path refused")
        # Before the size check: an entry refused for its size still says what is there.
        self._order.add(parts, entry.is_dir)
        if entry.size > self.job.resources.settings.max_file_size:
            raise EntryRefused(f"size {entry.size} exceeds the limit")
        return parts

    async def _take(self, entries: list[frames.Entry]) -> None:
        """Take one ENTRIES batch in; the connection reads nothing more until this returns."""
        accepted: list[tuple[paths.Parts, frames.Entry]] = []
        links: list[tuple[paths.Parts, frames.Entry]] = []
        wanted: list[tuple[paths.Parts, bool]] = []
        sync = self.sync
        assert sync is not None  # made by run()
        for entry in entries:
            if entry.is_error:
                # The source could not list this path (not "gone" or "a link": those it
                # skips and counts): the mirror is incomplete, so the job fails.
                self.failed += 1
                self._listing_error(paths.display_name(entry.name), entry.message)
                continue
            try:
                parts = self._check(entry)
            except EntryRefused as e:
                self.failed += 1
                self._listing_error(paths.display_name(entry.name), str(e))
                continue
            if not sync.wanted(parts, entry.is_dir):
                continue  # excluded: neither fetched nor deleted
            # (A link is a listed name too: --delete keeps it, or replaces another type.)
            wanted.append((parts, entry.is_dir))
            (links if entry.is_link else accepted).append((parts, entry))
        threads = self.job.resources.threads
        if sync.may_delete and wanted:
            # Before the directories are made: the merge reads what was there.
            for parts, problem in await threads.run(sync.take, self.store, wanted):
                self.error(paths.join_parts(parts), problem)
        dirs = [(parts, entry) for parts, entry in accepted if entry.is_dir]
        made: set[paths.Parts] = set()
        if self.job.options.dry_run:
            self.dirs += len(dirs)  # would be made (or are there)
            dirs = []
        if dirs:
            assert self.store is not None  # opened before the listing starts
            results = await threads.run(_make_dirs, self.store, [p for p, _ in dirs])
            for (parts, entry), (problem, new) in zip(dirs, results, strict=True):
                if problem:
                    self.failed += 1
                    self.error(paths.join_parts(parts), problem)
                    continue
                self.dirs += 1
                self._dir_meta.append((parts, entry.mode, entry.mtime_ns))
                if new:
                    made.add(parts)
        if links and not self.job.options.dry_run:
            await self.links.take(links)
        files, to_check = self._files(accepted, made)
        if not files:
            return
        verdicts = [NEW] * len(files)
        if to_check:
            checked = await threads.run(_classify, self.store, [files[i] for i in to_check])
            for i, verdict in zip(to_check, checked, strict=True):
                verdicts[i] = verdict
        work: list[WorkItem] = []
        for (parts, entry), verdict in zip(files, verdicts, strict=True):
            if verdict == CURRENT:
                if self._skip_credit:
                    self._skip_credit -= 1
                else:
                    self.skipped += 1
                continue
            if self.job.cancelled:
                continue
            if verdict == REPLACES:
                sync.replaced += 1
            if self.job.options.dry_run:
                self.stats.add(entry.size)  # would be transferred
                continue
            work.append(WorkItem(self, parts, entry))
        self._pending += len(work)
        self.job.files_total += len(work)
        self.job.bytes_total += sum(item.entry.size for item in work)
        # One wait for the whole batch; a full queue starts the listing's hold clock.
        await self.job.resources.queue.put_many(work, on_wait=self._hold_started)

    def _files(self, accepted: list[tuple[paths.Parts, frames.Entry]], made: set[paths.Parts]
               ) -> tuple[list[tuple[paths.Parts, frames.Entry]], list[int]]:
        """The files of a batch, in order, and the indexes of those to quick-check: not the
        files of a directory this job made (it was empty: they are `NEW`), a stat each
        saved on a first run.

        Canonical order lists a directory's contents right after it, so the directories
        made whose files may still come form a stack along the current path (memory
        proportional to depth), kept across batches.
        """
        fresh = self._fresh_dirs
        files: list[tuple[paths.Parts, frames.Entry]] = []
        to_check: list[int] = []
        for parts, entry in accepted:
            while fresh and parts[: len(fresh[-1])] != fresh[-1]:
                fresh.pop()
            if entry.is_dir:
                if parts in made:
                    fresh.append(parts)
                continue
            if not (fresh and len(parts) == len(fresh[-1]) + 1):
                to_check.append(len(files))
            files.append((parts, entry))
        return files, to_check

    async def _delete_extraneous(self) -> None:
        """--delete, once the transfers are done: plan, wait for the job's other SPECs
        (--max-delete is per job), then remove (or, in a dry run, count) what the listing
        did not have. Never after a listing with errors."""
        sync = self.sync
        if sync is None or not self.job.options.delete or self.job.cancelled:
            return  # (a cancelled job deletes nothing: the finally of run() opens the gate)
        threads = self.job.resources.threads
        planned = await threads.run(sync.plan, self._listing_complete, self.store)
        if sync.deletion == "skipped":
            self.error(None, f"deletion skipped: the listing of {self.label} had errors",
                       always=True)
        self._gated = True
        gate = self.job.deletion_gate
        allowed = await gate.decide(planned, sync.planned_exact)
        for parts, problem in await threads.run(sync.delete, self.store, allowed):
            self.error(paths.join_parts(parts), f"cannot delete: {problem}")
        if sync.deletion == "refused":
            total = gate.total if gate.exact else f"at least {gate.total}"
            self.error(None, f"deletion refused: the job would delete {total} entries, "
                             f"more than --max-delete {gate.limit}; nothing deleted",
                       always=True)

    async def _finish_dirs(self) -> None:
        # Deepest first: setting a parent's mtime before its children would be undone.
        metas = sorted(self._dir_meta, key=lambda m: len(m[0]), reverse=True)
        if metas:
            assert self.store is not None  # directories were made in it
            threads = self.job.resources.threads
            for parts, problem in await threads.run(_set_dirs, self.store, metas):
                self.error(paths.join_parts(parts), problem)

    # -- a worker's transfer ---------------------------------------------------------------

    def _receiver(self, parts: paths.Parts) -> FileReceiver:
        """A receiver for one attempt; its bytes count towards the job's progress."""
        assert self.store is not None  # files are queued only once it is open
        return FileReceiver(self.store, parts, self.job.resources.threads, self._count)

    async def _open_receiver(self, parts: paths.Parts, size: int) -> tuple[FileReceiver, int]:
        """A receiver for one attempt, and the offset to fetch from: a big file is received
        resumably when the job has partials (`mirror.mirror_server.partials`)."""
        partials = self.job.partials
        if partials is None or size < partials.min_size:
            return self._receiver(parts), 0
        assert self.store is not None  # files are queued only once it is open
        try:
            return await partials.open(self.index, parts, size, self.store, self._count)
        except StoreError as e:
            self.log.warn("{source}: {path}: not resumable: {e}", source=self.label,
                          path=paths.join_parts(parts), e=str(e))
            return self._receiver(parts), 0

    def _count(self, n: int) -> None:
        self.job.bytes_done += n

    def _finished_one(self) -> None:
        self._pending -= 1
        if self._pending == 0 and self._listing_done and self._idle is not None:
            idle, self._idle = self._idle, None
            idle.callback(None)

    async def transfer(self, parts: paths.Parts, entry: frames.Entry, attempts: int = 2
                       ) -> None:
        """Fetch one file into place: verified, atomic; retried once, then reported."""
        try:
            if self.job.cancelled:
                return
            header = await self._attempts(parts, entry.size, attempts)
            if header is not None:
                self.stats.add(header.file_size)  # the whole file, if resumed too
                self.job.files_done += 1
        finally:
            # Whatever happened, the file is no longer pending: a job never waits forever.
            self._finished_one()

    async def transfer_bundle(self, items: Sequence[WorkItem]) -> None:
        """Fetch small files (at most `frames.BUNDLE_FILE_MAX` bytes each) with FETCH_MANY
        requests, as few as the request frame allows, and write, verify and rename them all
        in one thread call. A file that fails is retried once on its own (`transfer`)."""
        retry: list[WorkItem] = []
        placed = 0
        try:
            if self.job.cancelled:
                return
            problems = await self._bundle_attempt(items)
            for item, problem in zip(items, problems, strict=True):
                if problem is None:
                    self.stats.add(item.entry.size)
                    self.job.files_done += 1
                    self.job.bytes_done += item.entry.size
                    placed += 1
                else:
                    retry.append(item)
        except CancelledError:
            raise  # the service is stopping
        except Exception:
            # A bug, not the peer's fault: logged, and the files go the single-file way,
            # which reports them if they fail again (never silently lost).
            self.log.failure("{source}: bundle of {n} files failed", source=self.label,
                             n=len(items))
            retry = list(items)
        finally:
            # Whatever happened, the files placed (or, if cancelled, all) are no longer
            # pending; retried ones are counted by `transfer`. A job never waits forever.
            for _ in range(len(items) - len(retry)):
                self._finished_one()
        if retry:
            await DeferredList([Deferred.fromCoroutine(self.transfer(item.parts, item.entry, 1))
                                for item in retry], consumeErrors=True)

    async def _bundle_attempt(self, items: Sequence[WorkItem]) -> list[str | None]:
        """One try at a bundle: per file None once in place, or why not."""
        assert self.connections is not None  # made by run() before anything is queued
        assert self.store is not None
        wants = [(paths.join_parts(item.parts).encode("utf-8"), item.entry.size)
                 for item in items]
        requests: list[Deferred[list[BundleResult]] | list[BundleResult]] = []
        for start, end in frames.split_fetch_many(wants):
            try:
                conn = await self.connections.get()
            except TransferError as e:
                requests.append([str(e)] * (end - start))
                continue
            # All sent before any is awaited: they are answered meanwhile.
            requests.append(conn.fetch_many(wants[start:end], self.request.delay))
        outcomes: list[BundleResult] = []
        for request in requests:
            outcomes += request if isinstance(request, list) else await request
        arrived = [(item.parts, r) for item, r in zip(items, outcomes, strict=True)
                   if not isinstance(r, str)]
        written = iter(await self.job.resources.threads.run_batched(self.store.write_many, arrived)
                       if arrived else [])
        return [r if isinstance(r, str) else next(written) for r in outcomes]

    async def _attempts(self, parts: paths.Parts, size: int, attempts: int = 2
                        ) -> frames.FileHeader | None:
        path = paths.join_parts(parts)
        problem = ""
        assert self.connections is not None  # made by run() before anything is queued
        for _attempt in range(attempts):
            receiver, offset = await self._open_receiver(parts, size)
            try:
                multi = self.job.multi_source
                if multi is not None and multi.applies(size):
                    origin = (self.request.host, self.request.port)
                    placed = await multi.fetch(self, origin, parts, size, self._count)
                    if placed is not None:
                        return placed  # else no other holder: fetched the usual way
                conn = await self.connections.get()
                header, digest = await conn.fetch(path, receiver, offset=offset,
                                                  delay=self.request.delay, expect_size=size)
                if header.size != header.file_size - offset:
                    raise TransferError(f"{path}: server sent {header.size} of "
                                        f"{header.file_size} bytes")
                await receiver.commit(header, digest)
            except (TransferError, StoreError) as e:
                self.job.bytes_done -= receiver.received
                await receiver.discard()
                problem = str(e)
                if self.job.cancelled:
                    return None  # not a failure of the file: the job was cancelled
                continue
            except CancelledError:
                raise  # the service is stopping
            except Exception as e:
                # A bug, not the peer's fault: logged with its traceback, and the file
                # is still counted and reported as failed (never silently lost).
                self.log.failure("{source}: transfer of {path} failed", source=self.label,
                                 path=path)
                self.job.bytes_done -= receiver.received
                await receiver.discard()
                problem = f"internal error: {e}"
                break
            return header
        self.failed += 1
        self.job.files_failed += 1
        # Messages from the client already name the path; store errors do not.
        self.error(path, problem if problem.startswith(path) else f"{path}: {problem}")
        return None


def _make_dirs(store: MirrorStore, dirs: list[paths.Parts]) -> list[tuple[str, bool]]:
    """Per directory: the problem ("" if none), and whether it was made now."""
    results = []
    for parts in dirs:
        try:
            # A link the mirror holds there is replaced (`links_.make_dir`).
            results.append(("", links_.make_dir(store, parts)))
        except (StoreError, paths.UnsafePath) as e:
            results.append((str(e), False))
    return results


def _classify(store: MirrorStore | None, files: list[tuple[paths.Parts, frames.Entry]]
              ) -> list[str]:
    return [classify(store, parts, e.size, e.mtime_ns) for parts, e in files]


def _set_dirs(store: MirrorStore, metas: list[tuple[paths.Parts, int, int]]
              ) -> list[tuple[paths.Parts, str]]:
    problems = []
    for parts, mode, mtime_ns in metas:
        try:
            store.set_dir_meta(parts, mode, mtime_ns)
        except (StoreError, paths.UnsafePath) as e:
            problems.append((parts, str(e)))
    return problems


class Job:
    """One submission of mirror-init: several sources mirrored at once."""

    log = Logger()

    def __init__(self, job_id: str, requests: list[SourceRequest], resources: JobResources,
                 observer: JobObserver, options: JobOptions | None = None,
                 bwlimit: int = 0, links_mode: str = links_.LINKS_SAFE) -> None:
        self.id = job_id
        #: The job's --bwlimit (bytes per second, 0: none), shared by all its connections.
        self.throttle = Throttle(resources.reactor, bwlimit) if bwlimit else None
        self.resources = resources
        self.observer = observer
        self.options = options or JobOptions()
        #: Big files from several holders at once (None: off for this job or service).
        self.multi_source = for_job(resources.holder_finder, resources.settings,
                                    resources.reactor, resources.threads, resources.endpoints,
                                    self.throttle, self.options.multi_source)
        #: --max-delete applies to the whole job: each SPEC's deletion waits for all plans.
        self.deletion_gate = DeletionGate(len(requests), self.options.max_delete)
        self.sources = [SourceRun(self, i, r, links_mode) for i, r in enumerate(requests)]
        self.files_total = 0
        self.bytes_total = 0
        self.files_done = 0
        self.files_failed = 0
        self.bytes_done = 0
        self.listing_done = False
        self.finished: Deferred[Job] = Deferred()
        self.cancelled = False
        #: Resumable big files (set by the job registry when there is a state directory).
        self.partials: JobPartials | None = None
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = resources.reactor
        self._last: tuple[Any, ...] | None = None

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.sources)

    def cancel(self) -> None:
        """Cancel the job: each source stops (`SourceRun.cancel`); it ends, failed, once the
        transfers in flight have stopped."""
        if not self.cancelled:
            self.cancelled = True
            for source in self.sources:
                source.cancel()

    def start(self) -> Deferred[Job]:
        self._ticker.start(PROGRESS_INTERVAL, now=False)
        runs = [Deferred.fromCoroutine(s.run()) for s in self.sources]
        Deferred.fromCoroutine(self._wait(runs))
        return self.finished

    async def _wait(self, runs: list[Deferred[None]]) -> None:
        try:
            for d in runs:
                await d
            self.listing_done = True
            if self._ticker.running:
                self._ticker.stop()
            self._tick(force=True)
            self.observer.job_done(self)
        finally:
            # Even if reporting failed: the service forgets the job, never waits on it.
            if self._ticker.running:
                self._ticker.stop()
            if self.throttle is not None:
                self.throttle.close()
            self.finished.callback(self)

    def _tick(self, force: bool = False) -> None:
        self.listing_done = self.listing_done or all(s.listing_done for s in self.sources)
        state = (self.files_done, self.bytes_done, self.files_total, self.bytes_total,
                 self.listing_done)
        if force or state != self._last:
            self._last = state
            self.observer.progress(self)
