"""The mirror server's side of the content protocol: LIST and FETCH requests, pipelined.

Everything the content server sends is checked here against what was asked: frame sizes, the
number of DATA bytes against the FILE header, which response belongs to which request. A
violation that leaves the framing intact fails that one request; one that breaks the framing
fails every request on the connection and aborts it. This module never touches the disk:
FETCH bodies go to a `FetchSink`, LIST entries to a callback.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mirror.limits import ClosingMixin, Deadline
from mirror.mirror_server.min_rate import DEFAULT_WINDOW, RateFloor
from mirror.mirror_server.throttle import Throttle
from mirror.rates import format_rate
from mirror.wire import frames

#: Per-request limit on silence: no frame for this request for this long fails it.
STALL_TIMEOUT = 30.0


class TransferError(Exception):
    """A request failed; the message is for users and names what went wrong. ``code`` is
    the error code of the server's ERROR frame, if that is what failed it."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class FlowControl:
    """Pauses the connection while too many received bytes wait to be written to disk."""

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None],
                 high: int = 8 << 20, low: int = 2 << 20) -> None:
        self._pause = pause
        self._resume = resume
        self.high = high
        self.low = low
        self.pending = 0
        self.paused = False

    def queued(self, n: int) -> None:
        self.pending += n
        if not self.paused and self.pending > self.high:
            self.paused = True
            self._pause()

    def written(self, n: int) -> None:
        self.pending -= n
        if self.paused and self.pending <= self.low:
            self.paused = False
            self._resume()


class FetchSink(Protocol):
    """Where a FETCH's bytes go (see `mirror.mirror_server.receiver.FileReceiver`)."""

    def head(self, header: frames.FileHeader, flow: FlowControl) -> None: ...

    def data(self, piece: memoryview) -> None: ...


class _Request:
    #: The content server waits the SPEC's delay before answering (`measured` says when
    #: that is over).
    delayed = False

    def __init__(self, client: ContentClientProtocol, request_id: int, what: str,
                 timeout: float) -> None:
        self.client = client
        self.id = request_id
        self.what = what
        # Cancelling (the service stopping) forgets the request, so that a late answer for
        # it is ignored rather than fired into a Deferred that already has a result.
        self.done: Deferred[Any] = Deferred(lambda d: self._forget())
        self.deadline = Deadline(client.clock, timeout, self._stalled)
        #: The code of the ERROR frame that failed the request, if one did.
        self.error_code: int | None = None
        if not client.reading_paused:
            self.deadline.start()

    def _stalled(self) -> None:
        self.fail(f"{self.what}: no answer for {self.deadline.seconds:g} s (stalled)")

    def _forget(self) -> None:
        if self.client.requests.pop(self.id, None) is self:
            self.deadline.stop()
            self.client.request_ended()

    def fail(self, message: str) -> None:
        if self.client.requests.pop(self.id, None) is self:
            self.deadline.stop()
            self.done.errback(TransferError(message, self.error_code))
            self.client.request_ended()

    def finish(self, result: Any) -> None:
        if self.client.requests.pop(self.id, None) is self:
            self.deadline.stop()
            self.done.callback(result)
            self.client.request_ended()

    def frame(self, opcode: int, payload: bytes) -> None:
        raise NotImplementedError

    @property
    def measured(self) -> bool:
        """The server owes us this request's bytes now (see `mirror_server.min_rate`):
        a transfer whose delay is over. A LIST never is: walking a tree is not a transfer."""
        return False

    def piece(self, piece: memoryview) -> None:
        self.fail(f"{self.what}: unexpected DATA")


class _ListRequest(_Request):
    def __init__(self, client: ContentClientProtocol, request_id: int, what: str,
                 timeout: float, on_entries: Callable[[list[frames.Entry]], Deferred[None] | None]
                 ) -> None:
        super().__init__(client, request_id, what, timeout)
        self.on_entries = on_entries

    def frame(self, opcode: int, payload: bytes) -> None:
        if opcode == frames.ENTRIES:
            entries = frames.decode_entries(payload)  # ProtocolError: framing is suspect
            self.deadline.restart()
            waiting = self.on_entries(entries)
            if waiting is not None:
                # Back-pressure: read nothing more until the entries are taken in.
                self.client.hold(waiting)
        elif opcode == frames.LIST_END:
            self.finish(frames.decode_list_end(payload))
        else:
            self.fail(f"{self.what}: unexpected response {opcode:#x}")


class _FetchRequest(_Request):
    def __init__(self, client: ContentClientProtocol, request_id: int, what: str,
                 timeout: float, sink: FetchSink, max_size: int,
                 expect_size: int | None = None) -> None:
        super().__init__(client, request_id, what, timeout)
        self.sink = sink
        self.max_size = max_size
        self.expect_size = expect_size
        self.header: frames.FileHeader | None = None
        self.received = 0

    def frame(self, opcode: int, payload: bytes) -> None:
        if opcode == frames.FILE and self.header is None:
            header = frames.decode_file(payload)
            if header.size > self.max_size:
                self.fail(f"{self.what}: announced size {header.size} exceeds the limit "
                          f"of {self.max_size} bytes")
                return
            if self.expect_size is not None and header.file_size != self.expect_size:
                # Before any byte is taken: a server that listed 10 bytes cannot send more
                # (and progress totals, made of listed sizes, stay right).
                self.fail(f"{self.what}: file changed: listed with {self.expect_size} bytes, "
                          f"now {header.file_size}")
                return
            self.header = header
            self.deadline.seconds = self.client.stall_timeout  # the delay is over
            self.deadline.restart()
            self.sink.head(header, self.client.flow)
        elif opcode == frames.FILE_END and self.header is not None:
            if len(payload) != frames.DIGEST_SIZE:
                # A frame of the wrong size for its opcode: the framing itself is suspect.
                raise frames.ProtocolError(f"malformed digest: FILE_END of {len(payload)} bytes")
            if self.received != self.header.size:
                self.fail(f"{self.what}: short transfer: {self.received} of "
                          f"{self.header.size} bytes")
            else:
                self.finish((self.header, payload))
        else:
            self.fail(f"{self.what}: unexpected response {opcode:#x}")

    @property
    def measured(self) -> bool:
        return self.header is not None or not self.delayed

    def piece(self, piece: memoryview) -> None:
        if self.header is None:
            self.fail(f"{self.what}: DATA before FILE")
            return
        self.received += len(piece)
        if self.received > self.header.size:
            self.fail(f"{self.what}: more bytes than the announced {self.header.size}")
            return
        self.deadline.restart()
        self.sink.data(piece)


#: What a FETCH_MANY gives for each file, in request order: the file (a `frames.BundleItem`
#: with its header, digest and bytes, not verified yet), or why it failed (a message).
BundleResult = frames.BundleItem | str


class _BundleRequest(_Request):
    """A FETCH_MANY: its BUNDLE frames must answer the files in order, each exactly once.

    Never errbacks for the peer's doing (only when cancelled): when the request fails (a bad
    answer, ERROR, stall, lost connection) the files not answered yet fail with the reason
    and those answered stand, so ``done`` always fires with one result per file.
    """

    def __init__(self, client: ContentClientProtocol, request_id: int, what: str,
                 timeout: float, sizes: list[int]) -> None:
        super().__init__(client, request_id, what, timeout)
        self.sizes = sizes
        self.results: list[BundleResult] = []

    @property
    def measured(self) -> bool:
        # With a delay the server waits before each file: only the delay-less are measured.
        return not self.delayed

    def frame(self, opcode: int, payload: bytes) -> None:
        if opcode != frames.BUNDLE:
            self.fail(f"{self.what}: unexpected response {opcode:#x}")
            return
        items = frames.decode_bundle(payload)  # ProtocolError: framing is suspect
        # A frame is taken whole or not at all: checked before any of it is.
        expect = len(self.results)
        for item in items:
            if item.index != expect or expect >= len(self.sizes):
                if item.index < expect:
                    why = "answered twice"
                elif item.index >= len(self.sizes):
                    why = "not asked for"
                else:
                    why = f"before #{expect}"
                self.fail(f"{self.what}: bad answer: file #{item.index} {why}")
                return
            expect += 1
        results = self.results
        for item in items:
            listed = self.sizes[item.index]
            if item.error is not None:
                results.append(item.error or f"{self.what}: error from server")
            elif item.size != listed:
                results.append(f"file changed: listed with {listed} bytes, now {item.size}")
            else:
                results.append(item)
        if len(results) == len(self.sizes):
            self.finish(results)
        else:
            self.deadline.restart()

    def fail(self, message: str) -> None:
        if self.client.requests.pop(self.id, None) is self:
            self.deadline.stop()
            self.results.extend([message] * (len(self.sizes) - len(self.results)))
            self.done.callback(self.results)
            self.client.request_ended()


class ContentClientProtocol(frames.FrameReceiver, ClosingMixin):
    """One connection to a content server, carrying many requests at once."""

    log = Logger()
    MAX_LENGTH = frames.MAX_BUNDLE_FRAME  # every frame but DATA (BUNDLE included)
    MAX_DATA_LENGTH = 4 * 1024 * 1024
    #: Each socket read is one Python call: 1 MiB reads instead of 64 KiB (twisted.md).
    RECV_SIZE = 1 << 20

    def __init__(self, clock: IReactorTime | None = None, name: str = "content server",
                 stall_timeout: float = STALL_TIMEOUT, max_file_size: int = 1 << 40,
                 throttle: Throttle | None = None, min_rate: int = 0,
                 min_rate_window: float = DEFAULT_WINDOW) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.clock = clock
        self.name = name
        self.stall_timeout = stall_timeout
        self.max_file_size = max_file_size
        self.requests: dict[int, _Request] = {}
        #: Called after each request ends (a slot is free); see SourceConnections.
        self.on_request_done: Callable[[], None] = lambda: None
        self._next_id = 1
        self._pauses = 0
        self.lost_d: Deferred[None] = Deferred()
        self.flow: FlowControl
        self.lost_reason: str | None = None
        #: The job's bandwidth limit (--bwlimit), shared with its other connections.
        self.throttle = throttle
        self._min_rate = min_rate
        self._min_rate_window = min_rate_window
        self._floor: RateFloor | None = None

    @property
    def load(self) -> int:
        return len(self.requests)

    def connectionMade(self) -> None:
        assert self.transport is not None
        if hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = self.RECV_SIZE
            if self.throttle is not None:
                # Small reads under a limit: each is paid for before it is handed on.
                self.transport.bufferSize = min(self.RECV_SIZE, self.throttle.read_size)
        if hasattr(self.transport, "setTcpNoDelay"):
            # Pipelined small requests: Nagle + delayed ACKs would add ~40 ms stalls.
            self.transport.setTcpNoDelay(True)
        self.flow = FlowControl(self.pause, self.resume)
        if self._min_rate:
            self._floor = RateFloor(self.clock, self._min_rate, self._min_rate_window,
                                    self._too_slow)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.cancel_close_timer()
        if self._floor is not None:
            self._floor.stop()
        if self.throttle is not None:
            self.throttle.forget(self)
        if self.lost_reason is None:
            self.lost_reason = reason.getErrorMessage()
        for request in list(self.requests.values()):
            request.fail(f"{request.what}: connection to {self.name} lost ({self.lost_reason})")
        self.lost_d.callback(None)

    def _allocate(self) -> int:
        request_id = self._next_id
        self._next_id = (self._next_id % 0xFFFFFFFF) + 1
        return request_id

    def list(self, path: str,
             on_entries: Callable[[list[frames.Entry]], Deferred[None] | None],
             cursor: str | None = None, links: bool = False) -> Deferred[tuple[int, int]]:
        """LIST ``path`` (after ``cursor``, the last name received before, if resuming);
        ``on_entries`` gets each batch (and may return a Deferred to make the connection
        wait). Fires with ``(count, skipped)`` of this request. With ``links``, asks for
        link entries (the LIST option; an older server answers ERROR 3)."""
        request_id = self._allocate()
        req = _ListRequest(self, request_id, f"LIST {path or '.'}", self.stall_timeout,
                           on_entries)
        payload = frames.encode_list_options(frames.encode_list(path, cursor), links)
        return self._send(req, frames.LIST, payload)

    def fetch(self, path: str, sink: FetchSink, offset: int = 0, length: int = frames.TO_END,
              delay: float = 0.0, expect_size: int | None = None
              ) -> Deferred[tuple[frames.FileHeader, bytes]]:
        """FETCH a range of ``path`` into ``sink``; fires with ``(header, digest)`` once
        exactly ``header.size`` bytes have been handed to the sink. With ``expect_size`` (the
        size the listing announced) a FILE header with another ``file_size`` fails it."""
        request_id = self._allocate()
        req = _FetchRequest(self, request_id, path, self.stall_timeout + delay, sink,
                            self.max_file_size, expect_size)
        req.delayed = delay > 0
        delay_ms = min(int(delay * 1000), 0xFFFFFFFF)
        return self._send(req, frames.FETCH, frames.encode_fetch(path, offset, length, delay_ms))

    def fetch_many(self, wants: Sequence[tuple[bytes, int]], delay: float = 0.0
                   ) -> Deferred[builtins.list[BundleResult]]:
        """FETCH_MANY the small files ``wants`` (encoded wire path, listed size), in one
        request; the caller keeps it within `frames.fetch_many_room` and each size within
        `frames.BUNDLE_FILE_MAX`. Fires with one `BundleResult` per file, in order; a file
        whose size is not the listed one is a failure. Nothing is verified here: the digest
        is checked where the bytes are written."""
        request_id = self._allocate()
        # The server waits the delay before each file: every frame may take that long.
        req = _BundleRequest(self, request_id, f"FETCH_MANY of {len(wants)} files",
                             self.stall_timeout + delay, [size for _, size in wants])
        req.delayed = delay > 0
        delay_ms = min(int(delay * 1000), 0xFFFFFFFF)
        return self._send(req, frames.FETCH_MANY, frames.encode_fetch_many(delay_ms, wants))

    def _send(self, req: _Request, opcode: int, payload: bytes) -> Deferred[Any]:
        if self.lost_reason is not None or self.transport is None:
            req.deadline.stop()
            message = f"{req.what}: connection to {self.name} lost ({self.lost_reason})"
            if isinstance(req, _BundleRequest):
                req.done.callback([message] * len(req.sizes))
            else:
                req.done.errback(TransferError(message))
            return req.done
        self.requests[req.id] = req
        self.transport.write(frames.frame(opcode, req.id, payload))
        self._measure()
        return req.done

    def start_request(self, req: _Request, opcode: int, payload: bytes) -> Deferred[Any]:
        """Send a request made elsewhere (a `_Request` subclass of another module, e.g.
        `mirror.mirror_server.hashes_request`); fires as that request says."""
        return self._send(req, opcode, payload)

    def new_request_id(self) -> int:
        return self._allocate()

    def request_ended(self) -> None:
        """A request ended (answered, failed or forgotten): a slot is free."""
        self._measure()
        self.on_request_done()

    # -- --bwlimit and --min-rate ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if data:
            if self._floor is not None:
                self._floor.received(len(data))
            if self.throttle is not None and self.transport is not None:
                # Paid for before it is parsed: a read that overdraws the job's bucket
                # pauses us, and waits (unparsed) until the throttle resumes us.
                self.throttle.spend(self, len(data))
        super().dataReceived(data)
        self._measure()

    def _measure(self) -> None:
        """Tell the rate floor whether the server owes us data now."""
        if self._floor is not None:
            self._floor.set_active(not self.reading_paused and any(
                r.measured for r in self.requests.values()))

    def _too_slow(self, rate: float) -> None:
        """Below --min-rate: every request here fails (each file is retried once, on
        another connection) and the connection is dropped."""
        assert self._floor is not None
        self.lost_reason = (f"too slow: {format_rate(rate)} over {self._floor.window:g} s, "
                            f"below the minimum of {format_rate(self._floor.rate)}")
        self.log.info("{name}: {reason}", name=self.name, reason=self.lost_reason)
        for request in list(self.requests.values()):
            request.fail(f"{request.what}: {self.lost_reason}")
        self.abort()

    @property
    def reading_paused(self) -> bool:
        return self._pauses > 0

    def pause(self) -> None:
        """Stop reading; every `pause` needs its `resume` (several reasons may overlap).

        While we do not read, the server's silence cannot be measured: every request's stall
        timer is stopped, and restarted in full on `resume`. (A listing held while the work
        queue is full, or a disk slower than the network, is not a stalled server.)
        """
        self._pauses += 1
        if self._pauses == 1:
            for request in self.requests.values():
                request.deadline.stop()
            if self.transport is not None:
                self.pauseProducing()
            self._measure()

    def resume(self) -> None:
        self._pauses -= 1
        if self._pauses == 0:
            for request in list(self.requests.values()):
                request.deadline.restart()
            self._measure()
            if self.transport is not None:
                self.resumeProducing()

    def hold(self, waiting: Deferred[None]) -> None:
        """Stop reading until ``waiting`` fires (a consumer is not ready for more)."""
        self.pause()

        def release(result: Any) -> Any:
            self.resume()
            return result

        waiting.addBoth(release)

    def stringReceived(self, frame: bytes) -> None:
        opcode, request_id, payload = frames.split_frame(frame)
        if opcode not in frames.RESPONSE_OPCODES:
            self.frameError(f"unknown opcode {opcode:#x}")
            return
        if request_id == 0 and opcode == frames.ERROR:
            self._refused(payload)
            return
        req = self.requests.get(request_id)
        if req is None:
            # Responses to a request we already failed (e.g. stalled) may still be coming;
            # ids start at 1, so 0 was never sent.
            if request_id >= self._next_id or request_id == 0:
                self.frameError(f"response for unknown request {request_id}")
            return
        try:
            if opcode == frames.ERROR:
                req.error_code, message = frames.decode_error(payload)  # ProtocolError if short
                req.fail(f"{message}" if message else f"{req.what}: error from server")
                return
            req.frame(opcode, payload)
        except frames.ProtocolError as e:
            self.frameError(str(e))

    def _refused(self, payload: bytes) -> None:
        """A connection-level ERROR (doc/protocol.md): the server refuses or closes the whole
        connection (e.g. too many connections); every request fails with its message."""
        try:
            _, message = frames.decode_error(payload)
        except frames.ProtocolError as e:
            self.frameError(str(e))
            return
        self.lost_reason = message or f"{self.name} closed the connection"
        for request in list(self.requests.values()):
            request.fail(f"{request.what}: {self.lost_reason}")
        self.close()

    def dataFrameReceived(self, request_id: int, piece: memoryview) -> None:
        req = self.requests.get(request_id)
        if req is not None:
            req.piece(piece)
        elif request_id >= self._next_id or request_id == 0:
            self.frameError(f"DATA for unknown request {request_id}")

    def frameError(self, reason: str) -> None:
        self.lost_reason = f"protocol error: {reason}"
        self.log.warn("{name}: {reason}", name=self.name, reason=self.lost_reason)
        for request in list(self.requests.values()):
            request.fail(f"{request.what}: {self.lost_reason}")
        super().frameError(reason)

