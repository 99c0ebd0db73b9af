"""The node's (and a querier's) side of one index connection: requests with ids, answers
matched to them. `mirror.index.client.IndexClient` drives it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from mirror.index import codec
from mirror.limits import abort_connection
from mirror.wire.frames import FrameReceiver

#: Seconds an answer may take before the connection is given up (and made again).
ANSWER_TIMEOUT = 30.0


class IndexRefused(Exception):
    """The index answered ERROR (code, message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class IndexClientProtocol(FrameReceiver):
    log = Logger()
    MAX_LENGTH = codec.MAX_FRAME - 4

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._next_id = 1
        self._pending: dict[int, Deferred[Any]] = {}
        self._rows: dict[int, list[codec.Holder]] = {}
        self.lost = False

    def connectionMade(self) -> None:
        on_connect = getattr(self.factory, "on_connect", None)
        if on_connect is not None:
            on_connect(self)

    def request(self, opcode: int, message: dict[str, Any]) -> Deferred[Any]:
        """Send a request; its OK message, or for WHERE the list of `codec.Holder`."""
        if self.lost or self.transport is None:
            return fail(ConnectionError("not connected to the index"))
        request_id = self._next_id
        self._next_id = self._next_id % (2**32 - 1) + 1
        d: Deferred[Any] = Deferred()
        self._pending[request_id] = d
        if opcode == codec.WHERE:
            self._rows[request_id] = []
        self.transport.write(codec.frame(opcode, request_id, message))

        def timed_out(failure: Failure) -> Failure:
            if failure.check(TimeoutError):
                self._pending.pop(request_id, None)
                self._rows.pop(request_id, None)
                self.frameError("the index did not answer in time")
            return failure

        d.addTimeout(ANSWER_TIMEOUT, self.clock)
        d.addErrback(timed_out)
        return d

    def stringReceived(self, frame: bytes) -> None:
        try:
            opcode, request_id, message = codec.decode_answer(frame)
            if request_id == 0 and opcode == codec.ERROR:
                # Connection-level: the index refuses or closes this connection.
                self._fail_all(IndexRefused(message["code"], message["message"]))
                if self.transport is not None:
                    abort_connection(self.transport)
                return
            d = self._pending.get(request_id)
            if d is None:
                raise codec.BadMessage(f"answer for unknown request {request_id}")
            if opcode == codec.HOLDERS:
                rows = self._rows.get(request_id)
                if rows is None:
                    raise codec.BadMessage("HOLDERS for a request that is not WHERE")
                rows += codec.holders_of(message)
                if len(rows) > codec.MAX_ROWS:
                    raise codec.BadMessage(f"more than {codec.MAX_ROWS} rows")
                return
            del self._pending[request_id]
            rows = self._rows.pop(request_id, None)
            if opcode == codec.ERROR:
                d.errback(IndexRefused(message["code"], message["message"]))
            elif (opcode == codec.DONE) != (rows is not None):
                raise codec.BadMessage("answer of the wrong kind")
            else:
                d.callback(rows if rows is not None else message)
        except codec.BadMessage as e:
            self.log.warn("bad answer from the index: {reason}", reason=str(e))
            self.frameError(f"bad answer: {e}")

    def frameError(self, reason: str) -> None:
        super().frameError(reason)
        self._fail_all(ConnectionError(reason))

    def _fail_all(self, error: Exception) -> None:
        pending, self._pending = self._pending, {}
        self._rows.clear()
        for d in pending.values():
            if not d.called:
                d.errback(error)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.lost = True
        self._fail_all(ConnectionError("connection to the index lost"))


class IndexClientFactory(Factory[IndexClientProtocol]):
    """Builds `IndexClientProtocol`; ``on_connect(proto)`` runs once each is connected."""

    def __init__(self, clock: IReactorTime,
                 on_connect: Callable[[IndexClientProtocol], None] | None = None) -> None:
        self.clock = clock
        self.on_connect = on_connect

    def buildProtocol(self, addr: object) -> IndexClientProtocol:
        proto = IndexClientProtocol(self.clock)
        proto.factory = self
        return proto
