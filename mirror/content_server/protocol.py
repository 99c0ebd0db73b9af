"""The content server's side of the content protocol: answers LIST and FETCH.

Each request runs as its own coroutine, so many are in flight on one connection and a delayed
FETCH holds up nothing else. Responses interleave frame by frame. The protocol is the
connection's single push producer: when the transport's buffer fills, every stream waits in
`_writable` (back-pressure), so memory per connection stays at about one chunk per stream.
"""

from __future__ import annotations

import errno
import json
import threading
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mirror import paths
from mirror.content_server.access import ReadAccess
from mirror.content_server.egress import EgressLimit
from mirror.content_server.fetch import (
    BIG_CHUNK_SIZE,
    CHUNK_SIZE,
    DigestCache,
    FileChanged,
    RangeReader,
    open_range,
    read_bundle,
)
from mirror.content_server.hashes import ChunkHashCache, compute_chunk_hashes
from mirror.content_server.listing import TreeWalker
from mirror.content_server.observed import ServingStats
from mirror.limits import ClosingMixin, Deadline, LimitedConnection, LimitedFactory
from mirror.security.rights import Reader, Unrestricted
from mirror.threads import Threads
from mirror.wire import chunk_hashes, frames

T = TypeVar("T")

#: Bytes the transport may buffer before it pauses the streams (see connectionMade).
WRITE_BUFFER = 1 << 20
#: Streams of one connection that may read `BIG_CHUNK_SIZE` chunks; the rest read
#: `CHUNK_SIZE` ones (see `ContentServerProtocol._chunk_size`).
BIG_CHUNK_STREAMS = 4


@dataclass
class ContentSettings:
    """Local limits of a content server (doc/protocol.md lists them with their flags)."""

    max_requests: int = 64
    max_connections: int = 1024
    max_per_peer: int = 256
    frame_timeout: float = 10.0
    idle_timeout: float = 60.0
    write_timeout: float = 60.0
    max_delay: float = 60.0
    #: LISTs walking at once, per connection and in the whole server (each walker holds one
    #: directory descriptor and the names not yet listed of the directories it is in);
    #: more wait their turn.
    max_lists_per_connection: int = 4
    max_lists: int = 64
    #: --max-rate: bytes per second the whole daemon sends at most (0: no cap).
    max_rate: int = 0
    #: HASHES: seconds within which a file's chunk hashes must be computed, and how many
    #: files are hashed at once in the server (more wait their turn, within the deadline).
    hashes_timeout: float = 120.0
    max_hashing: int = 2


class RequestError(Exception):
    """A request that gets an ERROR frame: ``code`` from frames.E_*, and a message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class ContentFactoryBase(LimitedFactory):
    """What a connection needs from its content server: declared here, provided by
    `mirror.content_server.factory.ContentServerFactory`, so that this module does not import
    the factory's (which imports this one)."""

    root_fd: int
    threads: Threads
    digests: DigestCache
    settings: ContentSettings
    clock: IReactorTime
    #: Walkers at once in the whole server (``ContentSettings.max_lists``).
    list_slots: DeferredSemaphore
    #: What was served (bytes per client, errors), for the web status page.
    serving: ServingStats
    #: --max-rate: the cap on everything the daemon sends (None: no cap).
    egress: EgressLimit | None = None
    #: HASHES answers, beside ``digests``; files hashed at once (``max_hashing``).
    chunk_hashes: ChunkHashCache
    hash_slots: DeferredSemaphore
    server_name = "content server"
    #: Who may read what (--accounts); by default everyone everything.
    access = ReadAccess(None, None)

    def refusal(self, reason: str) -> bytes:
        """A connection-level ERROR (request id 0, busy): the client's requests fail with it."""
        return frames.frame(frames.ERROR, 0, frames.encode_error(frames.E_BUSY, reason))


async def _disk(path: str, work: Deferred[T]) -> T:
    """Await disk work running in a thread on behalf of a request for ``path``; what it
    raises becomes the `RequestError` the client is told."""
    try:
        return await work
    except Exception as e:
        raise _request_error(e, path) from None


def _request_error(exc: BaseException, path: str) -> RequestError:
    """Map what reading the tree raised to what the client is told (never a traceback)."""
    where = path or "."
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return RequestError(frames.E_NOT_FOUND, f"{where}: no such file or directory")
    if isinstance(exc, paths.UnsafePath):
        return RequestError(frames.E_NOT_ALLOWED, f"{where}: {exc}")
    if isinstance(exc, FileChanged):
        return RequestError(frames.E_CHANGED, f"{where}: {exc}")
    if isinstance(exc, NotADirectoryError) or (
        isinstance(exc, OSError) and exc.errno == errno.ENOTDIR
    ):
        return RequestError(frames.E_NOT_FOUND, f"{where}: no such file or directory")
    if isinstance(exc, PermissionError):
        return RequestError(frames.E_NOT_ALLOWED, f"{where}: permission denied")
    if isinstance(exc, ValueError):
        return RequestError(frames.E_BAD_REQUEST, f"{where}: {exc}")
    if isinstance(exc, OSError):
        return RequestError(frames.E_IO, f"{where}: {exc.strerror or exc}")
    return RequestError(frames.E_IO, f"{where}: internal error")


def _item_error(exc: BaseException, path: str) -> tuple[int, str]:
    """`_request_error` as a FETCH_MANY's error item says it: (code, message)."""
    error = _request_error(exc, path)
    return error.code, str(error)


@implementer(IPushProducer)
class ContentServerProtocol(frames.FrameReceiver, LimitedConnection, ClosingMixin):
    """One client connection of the content server (built by its factory's ``protocol``)."""

    log = Logger()
    MAX_LENGTH = frames.MAX_REQUEST  # requests only: a path is at most 4 KiB
    factory: ContentFactoryBase

    def __init__(self) -> None:
        self._requests: dict[int, Deferred[None]] = {}
        self._waits: set[Deferred[Any]] = set()
        self._paused = False
        self._resume_waiters: list[Deferred[None]] = []
        self._lost = False
        #: Streams (`_stream`) running on this connection.
        self._streams = 0

    # -- connection ---------------------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        # The factory is set after construction (Factory.buildProtocol): read it here.
        self.settings: ContentSettings = self.factory.settings
        self.clock = self.factory.clock
        s = self.settings
        #: Walkers this connection may hold at once (its LISTs beyond wait their turn).
        self._list_slots = DeferredSemaphore(s.max_lists_per_connection)
        self._frame_deadline = Deadline(self.clock, s.frame_timeout,
                                        lambda: self.abort("request frame not completed in time"))
        self._idle_deadline = Deadline(self.clock, s.idle_timeout,
                                       lambda: self.close("idle"))
        self._write_deadline = Deadline(self.clock, s.write_timeout,
                                        lambda: self.abort("client stopped reading"))
        super().makeConnection(transport)

    def is_idle(self) -> bool:
        """No request in flight: closing the connection loses the client nothing."""
        return not self._requests

    @property
    def in_flight(self) -> int:
        """Requests in flight on this connection (for the web status page)."""
        return len(self._requests)

    def evict(self, reason: str) -> None:
        """Tell the client why (a connection-level ERROR), then close."""
        self._send(self.factory.refusal(reason))
        self.close(reason)

    def connectionMade(self) -> None:
        assert self.transport is not None
        if hasattr(self.transport, "setTcpNoDelay"):
            # Many small responses: Nagle + delayed ACKs would add ~40 ms stalls.
            self.transport.setTcpNoDelay(True)
        if hasattr(self.transport, "bufferSize"):
            # The transport pauses its producer above this many buffered bytes; the default
            # (64 KiB) is less than one chunk, which would stop read-ahead after every chunk.
            self.transport.bufferSize = WRITE_BUFFER
        if hasattr(self.transport, "SEND_LIMIT"):
            # A TCP transport sends at most SEND_LIMIT (128 KiB) per send() and reactor turn:
            # eight of each per big chunk. One per chunk cost a fifth less CPU per GiB
            # (bench/NOTES.md, "Big files").
            self.transport.SEND_LIMIT = WRITE_BUFFER
        # ITransport omits IConsumer's and IPushProducer's methods (registerProducer,
        # pauseProducing, resumeProducing), which TCP, TLS and test transports all have.
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
        self._idle_deadline.start()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self._lost = True
        for deadline in (self._frame_deadline, self._idle_deadline, self._write_deadline):
            deadline.stop()
        self.cancel_close_timer()
        for d in list(self._waits):
            d.cancel()
        self.factory.unregisterProtocol(self)

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        # An absolute deadline for any partly received frame: trickling bytes cannot extend it.
        # Not while we are the ones not reading (paused below): that is not the client's fault.
        if self._buffer and not self._paused:
            self._frame_deadline.start()
        else:
            self._frame_deadline.stop()

    # -- IPushProducer: the transport tells us when its buffer is full or drained --------

    def pauseProducing(self) -> None:
        """The client is not reading what it asked for.

        Read no more requests until it does: a client pipelining requests for small files
        without reading the answers would otherwise make the server buffer every answer
        (each up to a chunk) without bound. Requests already parsed wait in `_writable`.
        The client gets ``write_timeout`` to catch up, whatever it asked for.
        """
        if self._paused:
            return
        self._paused = True
        self.paused = True  # FrameReceiver: parse no further frames of what was read
        self._frame_deadline.stop()
        self._write_deadline.start()
        if not self._lost and self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        if not self._paused:
            return
        self._paused = False
        self.paused = False
        self._write_deadline.stop()
        if self._lost or self.transport is None:
            return
        self.transport.resumeProducing()  # type: ignore[attr-defined]
        waiters, self._resume_waiters = self._resume_waiters, []
        for d in waiters:
            d.callback(None)
        # Requests read before the pause and not yet parsed.
        self.dataReceived(b"")

    def stopProducing(self) -> None:
        self._lost = True

    async def _wait(self, d: Deferred[Any]) -> Any:
        """Await ``d``, cancelled if the connection goes away meanwhile."""
        self._waits.add(d)
        try:
            return await d
        finally:
            self._waits.discard(d)

    async def _writable(self) -> None:
        """Wait until the transport wants more; raises `CancelledError` once it is gone.

        The client has ``write_timeout`` to read (LIST included: a mirror server that must
        stop reading a listing for longer closes it and resumes it from its cursor). A loop:
        of several streams woken together, the first may fill the buffer again.
        """
        while True:
            if self._lost:
                raise CancelledError()
            if not self._paused:
                egress = self.factory.egress
                over = egress.ready() if egress is not None else None
                if over is None:
                    return
                # Over --max-rate: wait for the bucket (not the client's fault: no
                # write deadline), then check the transport again.
                await self._wait(over)
                continue
            self._write_deadline.start()
            d: Deferred[None] = Deferred()
            self._resume_waiters.append(d)
            await self._wait(d)

    def _send(self, *chunks: bytes) -> None:
        if not self._lost and self.transport is not None:
            self.transport.writeSequence(chunks)
            n = sum(map(len, chunks))
            self.factory.serving.sent(self.peer_key, n)
            if self.factory.egress is not None:
                self.factory.egress.spend(n)

    # -- requests -----------------------------------------------------------------------

    def stringReceived(self, frame: bytes) -> None:
        opcode, request_id, payload = frames.split_frame(frame)
        if opcode not in frames.REQUEST_OPCODES:
            self.frameError(f"unknown opcode {opcode:#x}")
            return
        if request_id in self._requests:
            self.frameError(f"request id {request_id} already in flight")
            return
        if len(self._requests) >= self.settings.max_requests:
            self.factory.serving.error(frames.E_BUSY)
            self._send(frames.frame(frames.ERROR, request_id, frames.encode_error(
                frames.E_BUSY, f"more than {self.settings.max_requests} requests in flight")))
            return
        if opcode == frames.LIST:
            work: Awaitable[None] = self._serve_list(request_id, payload)
        elif opcode == frames.FETCH_MANY:
            work = self._serve_fetch_many(request_id, payload)
        elif opcode == frames.HASHES:
            work = self._serve_hashes(request_id, payload)
        elif opcode == frames.WHO:
            work = self._serve_who(request_id)
        else:
            work = self._serve_fetch(request_id, payload)
        self._idle_deadline.stop()
        d = Deferred.fromCoroutine(self._run(request_id, work))
        if not d.called:
            self._requests[request_id] = d

    def frameError(self, reason: str) -> None:
        self.log.warn("protocol error from {peer}: {reason}",
                      peer=self.transport.getPeer() if self.transport else "?", reason=reason)
        super().frameError(reason)

    async def _run(self, request_id: int, work: Awaitable[None]) -> None:
        try:
            await work
        except RequestError as e:
            self.factory.serving.error(e.code)
            self._send(frames.frame(frames.ERROR, request_id, frames.encode_error(e.code, str(e))))
        except CancelledError:
            pass  # the connection went away
        except Exception:
            self.log.failure("request {id} failed", id=request_id)
            self.factory.serving.error(frames.E_IO)
            self._send(frames.frame(frames.ERROR, request_id,
                                    frames.encode_error(frames.E_IO, "internal error")))
        finally:
            self._requests.pop(request_id, None)
            if not self._requests and not self._lost:
                self._idle_deadline.start()

    async def _reader(self) -> Reader | Unrestricted:
        """What this peer may read now (`ReadAccess`: checked at every request)."""
        return await self.factory.access.reader(self.peer_identity)  # type: ignore[arg-type]

    def _not_found(self, request: str, parts: paths.Parts, path: str) -> RequestError:
        """The answer to a path the peer may not read: that of a missing one (audited)."""
        self.factory.access.refused(self.peer_identity,  # type: ignore[arg-type]
                                    self.peer_key, request, parts)
        return RequestError(frames.E_NOT_FOUND, f"{path or '.'}: no such file or directory")

    async def _serve_who(self, request_id: int) -> None:
        """WHO: the daemon's connections, as JSON, for an administrator only."""
        access = self.factory.access
        answer = await access.who(self.peer_identity,  # type: ignore[arg-type]
                                  self.clock.seconds())
        if answer is None:
            access.refused(self.peer_identity, self.peer_key,  # type: ignore[arg-type]
                           "WHO", (), why="not an administrator")
            raise RequestError(frames.E_NOT_ALLOWED, "WHO: access denied")
        await self._writable()
        self._send(frames.frame(frames.WHO_LIST, request_id,
                                json.dumps(answer, ensure_ascii=True).encode("ascii")))

    def activity(self) -> str:
        """What the peer is doing (``mirror-admin who``)."""
        return f"{len(self._requests)} request(s) in flight, {self._streams} streaming"

    def _parse_path(self, raw: bytes) -> tuple[paths.Parts, str]:
        try:
            parts = paths.parse_request_path(raw)
        except paths.UnsafePath as e:
            raise RequestError(frames.E_NOT_ALLOWED, f"{paths.display_name(raw)}: {e}") from None
        return parts, paths.join_parts(parts)

    def _parse_cursor(self, raw: bytes, parts: paths.Parts) -> paths.Parts:
        try:
            cursor = paths.parse_wire_path(raw)
        except paths.UnsafePath as e:
            raise RequestError(frames.E_BAD_REQUEST, f"bad LIST cursor: {e}") from None
        if cursor[: len(parts)] != parts:
            raise RequestError(frames.E_BAD_REQUEST, "LIST cursor outside the requested path")
        return cursor

    async def _serve_list(self, request_id: int, payload: bytes) -> None:
        try:
            payload, links = frames.split_list_options(payload)
        except frames.ProtocolError as e:
            raise RequestError(frames.E_BAD_REQUEST, str(e)) from None
        raw_path, raw_cursor = frames.decode_list(payload)
        parts, path = self._parse_path(raw_path)
        cursor = None if raw_cursor is None else self._parse_cursor(raw_cursor, parts)
        reader = await self._reader()
        if not reader.may_see(parts, True):
            raise self._not_found("LIST", parts, path)
        # LISTs beyond the connection's share, then beyond the server's, wait their turn
        # holding no walker (--max-requests bounds how many per connection). Always in this
        # order, so that no two LISTs can each hold what the other waits for.
        await self._wait(self._list_slots.acquire())
        try:
            await self._wait(self.factory.list_slots.acquire())
            try:
                await self._walk(request_id, parts, path, cursor, links, reader)
            finally:
                self.factory.list_slots.release()
        finally:
            self._list_slots.release()

    async def _walk(self, request_id: int, parts: paths.Parts, path: str,
                    cursor: paths.Parts | None, links: bool = False,
                    reader: Reader | Unrestricted | None = None) -> None:
        threads = self.factory.threads
        visible = None if reader is None or isinstance(reader, Unrestricted) else reader.may_see
        walker = await _disk(path, threads.run(TreeWalker, self.factory.root_fd, parts, cursor,
                                               links, visible))
        try:
            while True:
                batch = await _disk(path, threads.run(walker.next_batch))
                if batch is None:
                    break
                await self._writable()
                self._send(frames.frame(frames.ENTRIES, request_id, batch))
            self._send(frames.frame(frames.LIST_END, request_id,
                                    frames.encode_list_end(walker.count, walker.skipped)))
        finally:
            walker.close()

    async def _serve_fetch(self, request_id: int, payload: bytes) -> None:
        try:
            offset, length, delay_ms, raw_path = frames.decode_fetch(payload)
        except frames.ProtocolError as e:
            raise RequestError(frames.E_BAD_REQUEST, str(e)) from None
        parts, path = self._parse_path(raw_path)
        if not parts:
            raise RequestError(frames.E_BAD_REQUEST, ".: is a directory")
        if not (await self._reader()).may_read(parts):
            raise self._not_found("FETCH", parts, path)
        delay = min(delay_ms / 1000.0, self.settings.max_delay)
        if delay > 0:
            await self._wait(task.deferLater(self.clock, delay, lambda: None))
        threads = self.factory.threads
        # Batched: the FETCHes of one reactor turn open (and, if small, read and hash) their
        # files in a single thread call.
        opened = await _disk(path, threads.run_batched(open_range, self.factory.root_fd, parts,
                                                       offset, length, self.factory.digests))
        if self._lost:
            if isinstance(opened, RangeReader):
                opened.close()
            return
        if not isinstance(opened, RangeReader):
            header, data, digest = opened
            # Only as fast as the client reads (see pauseProducing).
            await self._writable()
            self._send(
                frames.frame(frames.FILE, request_id, frames.encode_file(header)),
                frames.data_header(request_id, len(data)), data,
                frames.frame(frames.FILE_END, request_id, digest),
            )
            return
        await self._stream(request_id, path, opened)

    async def _serve_fetch_many(self, request_id: int, payload: bytes) -> None:
        """Answer a FETCH_MANY: each thread call reads (and hashes) as many of its files as
        one BUNDLE frame holds, and builds that frame; each frame waits for the client to
        read the one before (`_writable`). With a delay, the server waits it before each
        file, and sends each file in a frame of its own as soon as it is read."""
        try:
            delay_ms, wants = frames.decode_fetch_many(payload)
        except frames.ProtocolError as e:
            raise RequestError(frames.E_BAD_REQUEST, str(e)) from None
        delay = min(delay_ms / 1000.0, self.settings.max_delay)
        per_frame = 1 if delay > 0 else len(wants)
        reader = await self._reader()
        readable = None
        if not isinstance(reader, Unrestricted):
            def readable(parts: paths.Parts) -> bool:
                # Called in the bundle's thread: audited from there.
                if reader.may_read(parts):
                    return True
                self.factory.access.refused(self.peer_identity,  # type: ignore[arg-type]
                                            self.peer_key, "FETCH_MANY", parts, in_thread=True)
                return False
        threads = self.factory.threads
        index = 0
        while index < len(wants):
            if delay > 0:
                await self._wait(task.deferLater(self.clock, delay, lambda: None))
            # Per-file failures are items of the frame; this raises only on a bug.
            answer, index = await self._wait(threads.run(
                read_bundle, self.factory.root_fd, request_id, wants, index, _item_error,
                per_frame, readable))
            await self._writable()
            self._send(answer)

    async def _serve_hashes(self, request_id: int, payload: bytes) -> None:
        """Answer HASHES: the file's chunk hashes, computed in a disk thread (at most
        ``max_hashing`` files at once in the server) within ``hashes_timeout`` seconds of
        the request, then sent as HASHES_HEAD and HASH_LIST frames."""
        parts, path = self._parse_path(payload)
        if not parts:
            raise RequestError(frames.E_BAD_REQUEST, ".: is a directory")
        if not (await self._reader()).may_read(parts):
            raise self._not_found("HASHES", parts, path)
        stop = threading.Event()
        timeout = self.settings.hashes_timeout
        expired = self.clock.callLater(timeout, stop.set)
        try:
            await self._wait(self.factory.hash_slots.acquire())
            try:
                if stop.is_set():
                    raise RequestError(frames.E_BUSY, "waited too long for a hashing slot")
                result = await _disk(path, self.factory.threads.run(
                    compute_chunk_hashes, self.factory.root_fd, parts, self.factory.digests,
                    self.factory.chunk_hashes, stop))
            finally:
                self.factory.hash_slots.release()
        except RequestError:
            if stop.is_set():
                raise RequestError(frames.E_BUSY, f"{path}: chunk hashes not computed within "
                                   f"{timeout:g} s") from None
            raise
        finally:
            # The client went away (CancelledError): the thread stops at its next read.
            stop.set()
            if expired.active():
                expired.cancel()
        await self._writable()
        self._send(frames.frame(frames.HASHES_HEAD, request_id,
                                chunk_hashes.encode_head(result)))
        for body in chunk_hashes.encode_hash_frames(result.hashes):
            await self._writable()
            self._send(frames.frame(frames.HASH_LIST, request_id, body))

    def _chunk_size(self) -> int:
        """Bytes per read of a stream: big chunks (fewer thread hops) while few streams
        share the connection; the small size beyond, so that a client stalling all its
        streams pins about ``max_requests`` small chunks, as before."""
        return BIG_CHUNK_SIZE if self._streams <= BIG_CHUNK_STREAMS else CHUNK_SIZE

    async def _stream(self, request_id: int, path: str, reader: RangeReader) -> None:
        """Send a large range: the next chunk is read (and hashed) while this one is sent."""
        threads = self.factory.threads
        self._send(frames.frame(frames.FILE, request_id, frames.encode_file(reader.header)))
        self._streams += 1
        pending: Deferred[tuple[bytes, bytes | None]] | None = threads.run(
            reader.read_next, self._chunk_size())
        try:
            while pending is not None:
                # Awaited, a read has finished whether it failed or not: nothing reads in a
                # thread any more, so ``finally`` may close the reader at once.
                reading, pending = pending, None
                data, digest = await _disk(path, reading)
                # Read (and hash) the next chunk while this one drains to the socket, but
                # only once the socket takes more: a stream held up by a slow client holds
                # one chunk, not two.
                await self._writable()
                if digest is None:
                    pending = threads.run(reader.read_next, self._chunk_size())
                self._send(frames.data_header(request_id, len(data)), data)
                if digest is not None:
                    # The last chunk came with the digest of the file, proven unchanged.
                    self._send(frames.frame(frames.FILE_END, request_id, digest))
        finally:
            self._streams -= 1
            if pending is None:
                reader.close()
            else:
                # A read is still running in a thread: closing the fd under it could make it
                # read whatever file gets that descriptor number next.
                pending.addBoth(lambda _: reader.close())
