"""Receiving one FETCH into the store without blocking the reactor.

A small file (at most `SMALL_FILE` bytes) is gathered in memory and written, verified and
renamed in a single thread call. A large one streams: received pieces queue up and one thread
call at a time writes (and hashes) everything queued so far, in order. The connection's
`FlowControl` hears of every queued and written byte, so a slow disk pauses the socket
instead of growing memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from mirror import paths
from mirror.mirror_server.content_client import FlowControl
from mirror.mirror_server.store import MirrorStore, PartialFile
from mirror.threads import Threads
from mirror.wire import frames

SMALL_FILE = 256 * 1024


class FileReceiver:
    """A `FetchSink` for one attempt at one file; ``commit`` or ``discard`` ends it."""

    def __init__(self, store: MirrorStore, parts: paths.Parts, threads: Threads,
                 on_bytes: Callable[[int], None] = lambda n: None) -> None:
        self._store = store
        self._parts = parts
        self._threads = threads
        self._on_bytes = on_bytes
        #: Bytes handed to this receiver so far (for undoing progress on failure).
        self.received = 0
        self._flow: FlowControl | None = None
        self._small: list[bytes] | None = None
        self._partial: PartialFile | None = None
        self._queue: list[bytes | memoryview] = []
        self._queued = 0
        self._busy: Deferred[Any] | None = None
        self._error: BaseException | None = None
        self._idle_waiters: list[Deferred[None]] = []

    # -- FetchSink ------------------------------------------------------------------------

    def head(self, header: frames.FileHeader, flow: FlowControl) -> None:
        self._flow = flow
        if header.size <= SMALL_FILE:
            self._small = []
        else:
            self._start(self._store.create, self._parts, on_result=self._set_partial)

    def data(self, piece: memoryview) -> None:
        n = len(piece)
        self.received += n
        self._on_bytes(n)
        if self._error is not None:
            return  # already failed; the request will be discarded
        if self._small is not None:
            # Not counted by flow control: it is released only when more data completes the
            # file, so pausing for it could stall the connection for good. Bounded instead
            # by the requests in flight per connection (32 x SMALL_FILE).
            self._small.append(bytes(piece))
            return
        # A view pins the whole socket read it came from (up to 1 MiB): a peer mixing one byte
        # of this file into each read would pin far more than flow control counts. A piece
        # that is a small part of its read is copied; a large one (the usual case) is not.
        self._queue.append(bytes(piece) if n * 4 < memoryview(piece.obj).nbytes else piece)
        self._queued += n
        assert self._flow is not None, "data before head"
        self._flow.queued(n)
        self._kick()

    # -- ending -----------------------------------------------------------------------------

    async def commit(self, header: frames.FileHeader, digest: bytes) -> None:
        """Write what is left, verify, and rename into place; raises `StoreError`."""
        if self._small is not None:
            data, self._small = b"".join(self._small), None
            await self._threads.run_batched(self._store.write_whole, self._parts, data, header,
                                            digest)
            return
        await self._drain()
        partial, self._partial = self._partial, None
        # Drained without an error: the temporary file was made.
        assert partial is not None
        try:
            await self._threads.run(partial.commit, header, digest)
        except BaseException:
            await self._threads.run(partial.discard)
            raise

    async def discard(self) -> None:
        """Forget this attempt; the temporary file, if any, is removed."""
        self._small = None
        # Ended first, then the queued pieces' credit back (see `_finished`); the credit of a
        # write in flight comes back when it ends.
        self._error = self._error or RuntimeError("discarded")
        self._release_queue()
        while self._busy is not None:
            d: Deferred[None] = Deferred()
            self._idle_waiters.append(d)
            await d
        partial, self._partial = self._partial, None
        if partial is not None:
            await self._threads.run(partial.discard)

    # -- the writer -------------------------------------------------------------------------

    def _start(self, f: Callable[..., Any], *args: Any,
               on_result: Callable[[Any], None] | None = None, written: int = 0) -> None:
        """Run one blocking step in a thread; only one runs at a time, in order."""
        self._busy = self._threads.run(f, *args)
        self._busy.addBoth(self._finished, on_result, written)

    def _finished(self, result: Any, on_result: Callable[[Any], None] | None,
                  written: int) -> None:
        self._busy = None
        released = written
        if isinstance(result, Failure):
            if self._error is None:
                self._error = result.value
            # Pieces queued behind the failed step are never written: their credit comes
            # back with it (kept, the connection could stay paused for good, and a paused
            # connection's stall timers are stopped).
            released += self._drop_queue()
        elif on_result is not None:
            on_result(result)
        if self._error is None:
            self._kick()
        # Credit goes back last: it may resume the connection, which delivers what it read
        # before pausing at once, re-entering `data`; by now the failure is recorded (so the
        # pieces are dropped, not written after it) and the next write is started.
        if released and self._flow is not None:
            self._flow.written(released)
        if self._busy is None:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def _set_partial(self, partial: PartialFile) -> None:
        self._partial = partial

    def _kick(self) -> None:
        if self._busy is not None or not self._queue or self._partial is None:
            return
        batch, self._queue = self._queue, []
        n, self._queued = self._queued, 0
        self._start(self._partial.write, batch, written=n)

    def _drop_queue(self) -> int:
        """Forget the pieces not yet handed to a write; returns the credit they held."""
        n = self._queued
        self._queue, self._queued = [], 0
        return n

    def _release_queue(self) -> None:
        n = self._drop_queue()
        if n and self._flow is not None:
            self._flow.written(n)

    async def _drain(self) -> None:
        while self._busy is not None or (self._queue and self._error is None):
            d: Deferred[None] = Deferred()
            self._idle_waiters.append(d)
            await d
        if self._error is not None:
            raise self._error
