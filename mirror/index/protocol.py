"""The index's side of the index protocol (doc/protocol.md, "Index protocol").

A connection's requests run one after the other, in the order they came (a node's FILES
must land before its END); the connection stops reading while more than `MAX_QUEUED`
wait. A WHERE answer is streamed page by page from the registry, each page fetched only once
the client has read the previous one (the protocol is the transport's push producer), so
neither memory nor the database's work grows with a slow reader.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol as TypingProtocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mirror.index import codec, identity
from mirror.index.activity import IndexActivity
from mirror.index.registry import NotRegistered, Query, Registry, RegistryLimit
from mirror.index.settings import IndexSettings
from mirror.limits import ClosingMixin, Deadline, LimitedConnection
from mirror.wire.frames import FrameReceiver

#: Requests read but not answered yet, beyond which the connection is not read.
MAX_QUEUED = 8
#: Rows fetched from the registry at a time for a WHERE answer.
PAGE = 500
#: A node's requests by kind (`IndexActivity.requests`).
_KINDS = {codec.HELLO: "hello", codec.RENEW: "renew", codec.BEGIN: "begin",
          codec.FILES: "files", codec.REMOVE: "remove", codec.END: "end",
          codec.WITHDRAW: "withdraw"}


class _Context(TypingProtocol):
    """What the protocol needs of its factory (`mirror.index.factory.IndexFactory`)."""

    registry: Registry
    clock: IReactorTime
    settings: IndexSettings
    activity: IndexActivity

    def unregisterProtocol(self, proto: LimitedConnection) -> None: ...

    def refusal(self, reason: str) -> bytes: ...


class _Refused(Exception):
    """A request answered with ERROR (code, message); the connection stays open."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@implementer(IPushProducer)
class IndexServerProtocol(FrameReceiver, LimitedConnection, ClosingMixin):
    """One connection to the index: a node registering, or a user asking."""

    log = Logger()
    MAX_LENGTH = codec.MAX_FRAME - 4
    factory: _Context

    def connectionMade(self) -> None:
        self.clock = self.factory.clock
        #: The identity established by HELLO (`mirror.index.identity`); None before.
        self.node: str | None = None
        self._queue: deque[bytes] = deque()
        self._busy = False
        self._lost = False
        self._reading_paused = False
        self._writable: Deferred[None] | None = None
        self._paused = False
        assert self.transport is not None
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
        settings = self.factory.settings
        self._idle = Deadline(self.clock, settings.idle_timeout,
                              lambda: self.close("idle connection"))
        self._frame = Deadline(self.clock, settings.frame_timeout,
                               lambda: self.abort("frame not completed in time"))
        self._idle.start()

    def is_idle(self) -> bool:
        return not self._busy and not self._queue

    def evict(self, reason: str) -> None:
        self._send(self.factory.refusal(reason))
        self.close(reason)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        # A node that goes away without WITHDRAW keeps its files until its lease runs out.
        self._lost = True
        self._idle.stop()
        self._frame.stop()
        self.cancel_close_timer()
        self._queue.clear()
        if self._writable is not None:
            d, self._writable = self._writable, None
            d.callback(None)
        self.factory.unregisterProtocol(self)

    # IPushProducer: the transport's write buffer is full / drained.
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._writable is not None:
            d, self._writable = self._writable, None
            d.callback(None)

    def stopProducing(self) -> None:
        self._lost = True

    def _wait_writable(self) -> Deferred[None]:
        if not self._paused or self._lost:
            return succeed(None)
        self._writable = Deferred()
        return self._writable

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        # An absolute deadline for a partly received frame: trickled bytes cannot extend it.
        if self._buffer:
            self._frame.start()
        else:
            self._frame.stop()

    def stringReceived(self, frame: bytes) -> None:
        self._idle.restart()
        self._queue.append(frame)
        if len(self._queue) > MAX_QUEUED and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        if not self._busy:
            self._busy = True
            Deferred.fromCoroutine(self._serve())

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self._lost:
            self.transport.write(data)

    def _answer(self, opcode: int, request_id: int, message: dict[str, Any]) -> None:
        if opcode == codec.ERROR:
            self.factory.activity.errors[message["code"]] += 1
        self._send(codec.frame(opcode, request_id, message))

    async def _serve(self) -> None:
        try:
            while self._queue and not self._lost:
                frame = self._queue.popleft()
                if self._reading_paused and len(self._queue) <= MAX_QUEUED // 2:
                    self._reading_paused = False
                    if self.transport is not None:
                        self.transport.resumeProducing()  # type: ignore[attr-defined]
                await self._handle(frame)
        finally:
            self._busy = False
            if not self._lost:
                self._idle.restart()

    async def _handle(self, frame: bytes) -> None:
        try:
            request = codec.decode_request(frame)
        except codec.BadMessage as e:
            # Broken framing or a hostile value: say why, then stop reading this peer.
            request_id = int.from_bytes(frame[1:5], "big") if len(frame) >= 5 else 0
            self._answer(codec.ERROR, request_id,
                         codec.error_message(codec.E_BAD_REQUEST, f"bad request: {e}"))
            self._queue.clear()
            self._broken = True
            self.close(f"bad request: {e}")
            return
        try:
            if request.opcode == codec.WHERE:
                await self._where(request)
                return
            result = await self._register(request)
        except _Refused as e:
            self._answer(codec.ERROR, request.request_id, codec.error_message(e.code, str(e)))
            return
        except RegistryLimit as e:
            self._answer(codec.ERROR, request.request_id,
                         codec.error_message(codec.E_LIMIT, str(e)))
            return
        except NotRegistered as e:
            self._answer(codec.ERROR, request.request_id,
                         codec.error_message(codec.E_NOT_REGISTERED, str(e)))
            return
        except Exception:
            self.log.failure("index request failed")
            self._answer(codec.ERROR, request.request_id,
                         codec.error_message(5, "index storage error"))
            return
        self._answer(codec.OK, request.request_id, result)

    async def _register(self, request: codec.Request) -> dict[str, Any]:
        registry = self.factory.registry
        lease = self.factory.settings.lease
        now = self.clock.seconds()
        self.factory.activity.requests[_KINDS[request.opcode]] += 1
        if request.opcode == codec.HELLO:
            claimed = identity.node_identity(self.transport, request.node)
            known = await registry.hello(claimed, request.address, now, lease)
            self.node = claimed
            return {"lease": lease, "known": known}
        if self.node is None:
            raise _Refused(codec.E_NOT_REGISTERED, "HELLO first")
        node: str = self.node
        if request.opcode == codec.RENEW:
            await registry.renew(node, now, lease)
            return {"lease": lease}
        if request.opcode == codec.BEGIN:
            await registry.begin(node)
            return {}
        if request.opcode == codec.FILES:
            return {"files": await registry.put(node, request.files)}
        if request.opcode == codec.REMOVE:
            return {"files": await registry.remove(node, request.paths)}
        if request.opcode == codec.END:
            return {"removed": await registry.end(node)}
        assert request.opcode == codec.WITHDRAW
        await registry.withdraw(node)
        self.node = None
        return {}

    async def _where(self, request: codec.Request) -> None:
        if not identity.may_query(self.transport):
            raise _Refused(2, "not allowed")
        query = Query(path=request.path, digest=request.digest)
        activity = self.factory.activity
        activity.queries["digest" if request.digest is not None else "path"] += 1
        limit = self.factory.settings.max_answer
        sent = 0
        after = None
        truncated = False
        while not self._lost:
            page = await self.factory.registry.holders(
                query, self.clock.seconds(), after, min(PAGE, limit - sent + 1))
            if sent + len(page) > limit:
                page, truncated = page[: limit - sent], True
            rows = [h.to_wire() for h in page]
            for run in codec.batches(rows, "holders"):
                self._answer(codec.HOLDERS, request.request_id, {"holders": run})
            sent += len(page)
            if truncated or len(page) < PAGE or not page:
                break
            after = (page[-1].path, page[-1].node)
            await self._wait_writable()
        activity.rows_answered += sent
        activity.truncated += truncated
        self._answer(codec.DONE, request.request_id, {"count": sent, "truncated": truncated})
