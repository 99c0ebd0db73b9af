"""Multi-source download: one big file fetched in verified chunks from every holder at once.

For a file of at least ``threshold`` bytes, `MultiSource.fetch` asks the SPEC's own content
server (the *origin*) for the file's chunk hashes (HASHES), asks a `HolderFinder` who else
holds the same content (same whole-file digest), and fetches byte ranges, one chunk each,
from the origin and up to ``max_holders - 1`` other holders in parallel. Which holder
fetches which chunk is the `ChunkScheduler`'s decision (fast holders get more, end-game
copies, bad or failing holders dropped). Every chunk, from whichever holder, is checked
against the origin's hash for it before it is written: a mirror is never trusted more than
the origin. Chunks are written at their offsets into the usual temporary file
(`PartialFile.write_at`), which is read back and committed only if the whole-file digest
matches the origin's; otherwise nothing is placed.

Memory: each chunk in flight is held until verified (at most ``depth`` chunks per holder,
each ``chunk_size`` bytes: 1 MiB up to 64 GiB files).

Who holds what comes from a `HolderFinder`: the index client (issue 10's index) or, for
tests and demos, `ExplicitHolders` (mirror-server ``--holder HOST:PORT``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mirror import paths
from mirror.mirror_server.chunk_assembly import ChunkAssembler
from mirror.mirror_server.chunk_scheduler import DEPTH, ChunkScheduler
from mirror.mirror_server.connections import EndpointFactory, SourceConnections
from mirror.mirror_server.content_client import (
    ContentClientProtocol,
    FlowControl,
    TransferError,
)
from mirror.mirror_server.hashes_request import request_hashes
from mirror.mirror_server.store import MirrorStore, PartialFile, StoreError
from mirror.threads import Threads
from mirror.wire import frames
from mirror.wire.chunk_hashes import ChunkHashes

#: Default smallest file fetched from several holders (--multi-source-threshold).
THRESHOLD = 8 << 20
#: Default most holders (the origin included) one file is fetched from (--max-holders).
MAX_HOLDERS = 4


@dataclass(frozen=True)
class Holder:
    """A node that serves a file over the content protocol, at ``path`` there."""

    host: str
    port: int
    path: str

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class HolderFinder(Protocol):
    """Who else holds a file. ``path`` is the file's place in the mirror network,
    ``ORIGINHOST_ORIGINPORT/PATH`` (where every serving mirror serves it); ``digest`` its
    whole-file BLAKE3 digest from the origin. Any holder returned is only a candidate: what
    it sends is verified chunk by chunk."""

    def holders(self, path: str, digest: bytes) -> Deferred[list[Holder]]: ...


class ExplicitHolders:
    """Holders named on the command line (mirror-server ``--holder HOST:PORT``): serving
    mirrors, each assumed to hold every file at its network path. For tests and demos
    until the index says who holds what."""

    def __init__(self, addresses: list[tuple[str, int]]) -> None:
        self.addresses = list(addresses)

    def holders(self, path: str, digest: bytes) -> Deferred[list[Holder]]:
        return succeed([Holder(host, port, path) for host, port in self.addresses])


class _ChunkSink:
    """A `FetchSink` for one chunk: its bytes, never more than ``length``. A holder that
    announces another size is given up on at once (``on_wrong``), not after it has sent
    (or stalled on) whatever it announced."""

    def __init__(self, length: int, on_wrong: Callable[[], object]) -> None:
        self.length = length
        self.pieces: list[bytes] = []
        self.received = 0
        self.wrong: str | None = None
        self._on_wrong = on_wrong

    def head(self, header: frames.FileHeader, flow: FlowControl) -> None:
        if header.size != self.length:
            self.wrong = f"sent {header.size} bytes for a chunk of {self.length}"
            self._on_wrong()

    def data(self, piece: memoryview) -> None:
        if self.wrong is not None:
            return
        self.received += len(piece)
        self.pieces.append(bytes(piece))


class SourceSide(Protocol):
    """What a download needs of the SPEC it belongs to (`job.SourceRun` provides it)."""

    connections: SourceConnections | None
    store: MirrorStore | None
    #: Verified bytes of multi-source files placed, by holder address.
    holder_bytes: dict[str, int]


@dataclass
class MultiSource:
    """Multi-source download for one job (`for_job`; None when it is turned off)."""

    finder: HolderFinder
    clock: IReactorTime
    threads: Threads
    endpoints: EndpointFactory
    #: Options for each holder connection (stall timeout, size limit, the job's throttle).
    client_options: dict[str, Any]
    threshold: int = THRESHOLD
    max_holders: int = MAX_HOLDERS

    log = Logger()

    def applies(self, size: int) -> bool:
        return self.max_holders > 1 and size >= self.threshold

    async def fetch(self, run: SourceSide, origin: tuple[str, int], parts: paths.Parts,
                    size: int, count: Callable[[int], None]) -> frames.FileHeader | None:
        """Fetch ``parts`` (listed with ``size`` bytes) from its holders into place; None
        if no other holder has it (the caller fetches it the usual way). ``count`` gets
        every verified byte (progress), and back, negated, if the attempt fails. Raises
        `TransferError` or `StoreError`."""
        assert run.connections is not None and run.store is not None
        path = paths.join_parts(parts)
        origin_conn = await run.connections.connect()
        try:
            try:
                hashes = await request_hashes(origin_conn, path)
            except TransferError as e:
                # An origin that cannot answer HASHES (busy hashing, an older server, the
                # file gone): the usual FETCH says what is wrong, if anything.
                self.log.info("{path}: no chunk hashes from the origin ({e}): single source",
                              path=path, e=e)
                return None
            if hashes.file_size != size:
                raise TransferError(f"{path}: file changed: listed with {size} bytes, now "
                                    f"{hashes.file_size}")
            network_path = f"{origin[0]}_{origin[1]}/{path}"
            try:
                found = await self.finder.holders(network_path, hashes.digest)
            except Exception as e:
                # The index unreachable, say: the origin still has the file.
                self.log.info("{path}: no holders known ({e}): single source", path=path, e=e)
                return None
            others: list[Holder] = []
            for holder in found:
                if (holder.host, holder.port) == origin or any(
                        (h.host, h.port) == (holder.host, holder.port) for h in others):
                    continue
                others.append(holder)
            others = others[: self.max_holders - 1]
            if not others:
                return None
            download = _Download(self, run, path, hashes, count)
            return await download.run(Holder(origin[0], origin[1], path), origin_conn, others,
                                      parts)
        finally:
            origin_conn.close()


class _Download:
    """One file from several holders (see the module's docstring)."""

    log = Logger()

    def __init__(self, ms: MultiSource, run: SourceSide, path: str, hashes: ChunkHashes,
                 count: Callable[[int], None]) -> None:
        self.ms = ms
        self.source = run
        self.path = path
        self.hashes = hashes
        self.count = count
        self.counted = 0
        sizes = [hashes.chunk_range(i)[1] for i in range(hashes.count)]
        self.sched = ChunkScheduler(sizes, ms.clock)
        self.partial: PartialFile | None = None
        self.assembler: ChunkAssembler | None = None
        self.conns: dict[str, SourceConnections] = {}
        self.origin_conn: ContentClientProtocol | None = None
        self.holders: dict[str, Holder] = {}
        #: Fetches in flight, to cancel when a copy wins or a holder is dropped.
        self.in_flight: dict[tuple[str, int], Deferred[Any]] = {}
        self.cancelled: set[tuple[str, int]] = set()
        #: Fetches ended because the holder announced a wrong size (a failure, not a race).
        self.rejected: set[tuple[str, int]] = set()
        self.waiters: list[Deferred[None]] = []

    async def run(self, origin: Holder, origin_conn: ContentClientProtocol,
                  others: list[Holder], parts: paths.Parts) -> frames.FileHeader:
        store = self.source.store
        assert store is not None
        self.origin_conn = origin_conn
        for holder in [origin, *others]:
            self.holders[holder.address] = holder
            self.sched.add_holder(holder.address)
            if holder is not origin:
                self.conns[holder.address] = SourceConnections(
                    self.ms.clock, holder.host, holder.port, self.ms.endpoints, size=1,
                    **self.ms.client_options)
        self.partial = await self.ms.threads.run(store.create, parts)
        self.assembler = ChunkAssembler(self.partial, self.hashes)
        try:
            workers = [Deferred.fromCoroutine(self._worker(key))
                       for key in self.holders for _ in range(DEPTH)]
            for ok, result in await DeferredList(workers, consumeErrors=True):
                if not ok:
                    # Our disk failed, or a bug: not a holder's doing.
                    cast(Failure, result).raiseException()
            if not self.sched.complete:
                reasons = "; ".join(f"{key}: {h.dropped}" for key, h in
                                    self.sched.holders.items() if h.dropped)
                raise TransferError(f"{self.path}: no holder left ({reasons})")
            header = self.hashes.header
            assert self.assembler is not None
            await self.ms.threads.run(self.assembler.commit)
            self.partial = None  # placed
        except BaseException:
            self.count(-self.counted)
            raise
        finally:
            self._cancel_all()
            for conns in self.conns.values():
                conns.close()
            if self.partial is not None:
                await self.ms.threads.run(self.partial.discard)
        for key, h in self.sched.holders.items():
            assert isinstance(key, str)
            if h.bytes:
                self.source.holder_bytes[key] = self.source.holder_bytes.get(key, 0) + h.bytes
        return header

    # -- workers ---------------------------------------------------------------------------

    def _wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            d.callback(None)

    async def _worker(self, key: str) -> None:
        while True:
            index = self.sched.next_for(key)
            if index is None:
                h = self.sched.holders[key]
                if self.sched.complete or h.dropped is not None or self.sched.stuck:
                    self._wake()
                    return
                d: Deferred[None] = Deferred()
                self.waiters.append(d)
                await d
                continue
            await self._fetch_chunk(key, index)
            self._wake()

    async def _connection(self, key: str) -> ContentClientProtocol:
        conns = self.conns.get(key)
        if conns is None:
            assert self.origin_conn is not None
            if self.origin_conn.lost_reason is not None:
                raise TransferError(f"connection to the origin lost "
                                    f"({self.origin_conn.lost_reason})")
            return self.origin_conn
        return await conns.get()

    async def _fetch_chunk(self, key: str, index: int) -> None:
        offset, length = self.hashes.chunk_range(index)
        # Called from within the client's parsing: the fetch is cancelled a turn later.
        sink = _ChunkSink(length, lambda: self.ms.clock.callLater(0, self._reject, key, index))
        holder = self.holders[key]
        try:
            conn = await self._connection(key)
            d = conn.fetch(holder.path, sink, offset, length, expect_size=self.hashes.file_size)
            self.in_flight[(key, index)] = d
            try:
                await d
            finally:
                self.in_flight.pop((key, index), None)
            if sink.wrong is not None:
                raise TransferError(f"{key}: {sink.wrong}")
            assert self.assembler is not None
            ok = await self.ms.threads.run(self.assembler.put, index, sink.pieces)
        except CancelledError:
            if (key, index) in self.cancelled:
                self.cancelled.discard((key, index))
                return  # another copy won, or the holder was dropped: already released
            if (key, index) not in self.rejected:
                raise
            self.rejected.discard((key, index))
            self._holder_failed(key, index, f"{key}: {sink.wrong}")
            return
        except (TransferError, StoreError) as e:
            if isinstance(e, StoreError):
                raise  # our disk, not the holder: the whole attempt fails
            self._holder_failed(key, index, str(e))
            return
        if not ok:
            self.log.warn("{path}: holder {key} sent a bad chunk {index}: dropped",
                          path=self.path, key=key, index=index)
            self.sched.bad(key, index)
            self._cancel_holder(key)
            return
        if index in self.sched.have:
            self.sched.cancelled(key, index)  # a copy that lost the race: counts nothing
            return
        for loser in self.sched.done(key, index):
            assert isinstance(loser, str)
            self._cancel(loser, index)
            self.sched.cancelled(loser, index)
        self.counted += length
        self.count(length)

    def _holder_failed(self, key: str, index: int, reason: str) -> None:
        self.log.info("{path}: holder {key} dropped: {reason}", path=self.path, key=key,
                      reason=reason)
        self.sched.failed(key, index, reason)
        self._cancel_holder(key)

    def _reject(self, key: str, index: int) -> None:
        """The fetch of ``index`` from ``key`` announced a wrong size: end it now."""
        d = self.in_flight.pop((key, index), None)
        if d is not None:
            self.rejected.add((key, index))
            d.cancel()

    def _cancel(self, key: str, index: int) -> None:
        d = self.in_flight.pop((key, index), None)
        if d is not None:
            self.cancelled.add((key, index))
            d.cancel()

    def _cancel_holder(self, key: str) -> None:
        for k, index in list(self.in_flight):
            if k == key:
                self._cancel(k, index)

    def _cancel_all(self) -> None:
        for k, index in list(self.in_flight):
            self._cancel(k, index)


class Settings(Protocol):
    @property
    def multi_source_threshold(self) -> int: ...

    @property
    def max_holders(self) -> int: ...

    @property
    def stall_timeout(self) -> float: ...

    @property
    def max_file_size(self) -> int: ...


def for_job(finder: HolderFinder | None, settings: Settings, clock: IReactorTime,
            threads: Threads, endpoints: EndpointFactory, throttle: Any, enabled: bool
            ) -> MultiSource | None:
    """The multi-source download of a job, or None: no holder finder, ``--max-holders 1``,
    or the job turned it off (mirror-init ``--no-multi-source``)."""
    if finder is None or not enabled or settings.max_holders <= 1:
        return None
    options = {"stall_timeout": settings.stall_timeout, "max_file_size": settings.max_file_size,
               "throttle": throttle}
    return MultiSource(finder, clock, threads, endpoints, options,
                       settings.multi_source_threshold, settings.max_holders)
