"""The mirror-init side of the control protocol: submit one job and follow it to DONE.

`submit_job` connects to a mirror server, sends one SOURCE line per source and GO, hands
every event to a callback (the progress display) and fires with a `JobResult` when DONE
arrives. It fails with a `ControlClientError` subclass whose message is one readable line
when the server cannot be reached, refuses the job, sends something malformed, drops the
connection before DONE, or the optional timeout expires.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from mirror.limits import abort_connection
from mirror.text import printable
from mirror.wire.control import (
    MAX_LINE,
    MAX_SOURCES,
    ControlError,
    Done,
    JobAccepted,
    Progress,
    Refused,
    ServerEvent,
    SourceDone,
    SourceError,
    SourceRequest,
    encode_go,
    encode_source,
    parse_server_line,
)

#: ERROR events kept for the final report; more are only counted (a server could send
#: one per file of a huge tree).
MAX_KEPT_ERRORS = 10_000


class ControlClientError(Exception):
    """The job could not be followed to DONE; ``str()`` is a one-line explanation.

    ``result`` holds what had arrived before the failure, if the connection was made.
    """

    result: JobResult | None = None


class MirrorServerUnreachable(ControlClientError):
    """The connection to the mirror server could not be made."""


class JobRefused(ControlClientError):
    """The mirror server answered REFUSED."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the mirror server refused the job: {reason}")
        self.reason = reason


class ProtocolViolation(ControlClientError):
    """The mirror server sent something this client cannot accept."""


class ConnectionLostBeforeDone(ControlClientError):
    """The connection closed before DONE."""


class JobTimeout(ControlClientError):
    """The job did not finish within the time allowed."""


@dataclass
class JobResult:
    """Everything the server said about a finished job."""

    sources: Sequence[SourceRequest]
    job_id: str | None = None
    done_ok: bool = False
    #: SOURCE-DONE per source index; None for a source the server never reported.
    source_done: list[SourceDone | None] = field(default_factory=list)
    errors: list[SourceError] = field(default_factory=list)
    #: ERROR events beyond `MAX_KEPT_ERRORS`, counted but not kept.
    errors_dropped: int = 0
    last_progress: Progress | None = None

    def __post_init__(self) -> None:
        if not self.source_done:
            self.source_done = [None] * len(self.sources)

    def source_ok(self, index: int) -> bool:
        done = self.source_done[index]
        return done is not None and done.ok

    @property
    def ok(self) -> bool:
        """True only if DONE said ok and every source reported full success."""
        return self.done_ok and all(self.source_ok(i) for i in range(len(self.sources)))


def _one_line(text: str) -> str:
    """A reason for a one-line message: it may come from the server and ends up on a
    terminal, so it is shown by `mirror.text.printable`'s rule (never empty)."""
    return printable(str(text)).strip() or "no reason given"


class ControlClientProtocol(LineReceiver):
    """Sends a job on connection and collects the events up to DONE.

    ``done`` fires with the `JobResult`, or fails with a `ControlClientError`. Every parsed
    event, REFUSED included, is passed to ``on_event`` first.
    """

    log = Logger()
    # Split on "\n" and let the codec drop a trailing "\r": both terminators are accepted.
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(
        self, sources: Sequence[SourceRequest], on_event: Callable[[ServerEvent], None]
    ) -> None:
        if not 1 <= len(sources) <= MAX_SOURCES:
            raise ValueError(f"a job has 1 to {MAX_SOURCES} sources, not {len(sources)}")
        # Encode before connecting so an invalid source is a ValueError for the caller, not a
        # REFUSED from the server.
        self._lines = [encode_source(s) for s in sources] + [encode_go()]
        self._on_event = on_event
        self.result = JobResult(sources=list(sources))
        self.done: Deferred[JobResult] = Deferred(self._cancel)
        self._finished = False

    def sendLine(self, line: bytes) -> None:
        # The protocol's canonical terminator is CRLF; `delimiter` is "\n" only for reading.
        assert self.transport is not None
        self.transport.write(line + b"\r\n")

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.writeSequence([line + b"\r\n" for line in self._lines])

    def lineReceived(self, line: bytes) -> None:
        if self._finished:
            return  # the server closes after DONE; anything later is not our business
        try:
            event = parse_server_line(line)
            self._check(event)
        except ControlError as e:
            self._fail(ProtocolViolation(f"bad line from the mirror server: {e}"))
            return
        try:
            self._on_event(event)
        except Exception:
            # A display bug must not lose the job's outcome.
            self.log.failure("event handler failed on {event!r}", event=event)
        self._record(event)

    def _check(self, event: ServerEvent) -> None:
        """Refuse events that contradict the job this client sent."""
        count = len(self.result.sources)
        if isinstance(event, (SourceError, SourceDone)) and event.index >= count:
            raise ControlError(f"source index {event.index} but the job has {count} sources")
        if isinstance(event, SourceDone) and self.result.source_done[event.index] is not None:
            raise ControlError(f"second SOURCE-DONE for source {event.index}")

    def _record(self, event: ServerEvent) -> None:
        result = self.result
        if isinstance(event, JobAccepted):
            result.job_id = event.job_id
        elif isinstance(event, Progress):
            result.last_progress = event
        elif isinstance(event, SourceError):
            if len(result.errors) < MAX_KEPT_ERRORS:
                result.errors.append(event)
            else:
                result.errors_dropped += 1
        elif isinstance(event, SourceDone):
            result.source_done[event.index] = event
        elif isinstance(event, Done):
            result.done_ok = event.ok
            self._finished = True
            assert self.transport is not None
            self.transport.loseConnection()
            self.done.callback(result)
        elif isinstance(event, Refused):
            self._fail(JobRefused(_one_line(event.message)))

    def lineLengthExceeded(self, line: bytes) -> None:
        self._fail(ProtocolViolation(f"the mirror server sent a line over {MAX_LINE} bytes"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._finished:
            if reason.check(ConnectionDone):
                why = "it closed the connection"
            else:
                why = _one_line(reason.getErrorMessage())
            self._fail(
                ConnectionLostBeforeDone(
                    f"lost the connection to the mirror server before the job finished: {why}"
                ),
                abort=False,
            )

    def _fail(self, error: ControlClientError, abort: bool = True) -> None:
        if self._finished:
            return
        self._finished = True
        error.result = self.result
        if abort and self.transport is not None:
            # abortConnection: a graceful close would wait on a peer that may not read.
            abort_connection(self.transport)
        self.done.errback(error)

    def _cancel(self, d: Deferred[JobResult]) -> None:
        # Deferred.cancel: stop following the job and drop the connection. The Deferred
        # fails with CancelledError (it was not fired by us).
        self._finished = True
        if self.transport is not None:
            abort_connection(self.transport)


async def _submit(endpoint: IStreamClientEndpoint, protocol: ControlClientProtocol) -> JobResult:
    try:
        await connectProtocol(endpoint, protocol)
    except CancelledError:
        raise
    except Exception as e:
        raise MirrorServerUnreachable(
            f"cannot reach the mirror server: {_one_line(str(e) or type(e).__name__)}"
        ) from None
    return await protocol.done


def submit_job(
    reactor: IReactorTime,
    endpoint: IStreamClientEndpoint,
    sources: Sequence[SourceRequest],
    on_event: Callable[[ServerEvent], None],
    timeout: float | None = None,
) -> Deferred[JobResult]:
    """Run one job on the mirror server at ``endpoint``; fire with its `JobResult`.

    ``on_event`` sees every event as it arrives. Fails with `MirrorServerUnreachable`,
    `JobRefused`, `ProtocolViolation`, `ConnectionLostBeforeDone`, or `JobTimeout` after
    ``timeout`` seconds (measured on ``reactor``); the error's ``result`` holds what arrived
    before. Cancelling the Deferred drops the connection. A result whose ``ok`` is False is
    still a result, not a failure.
    """
    protocol = ControlClientProtocol(sources, on_event)
    d = Deferred.fromCoroutine(_submit(endpoint, protocol))
    if timeout is not None:

        def timed_out(value: object, seconds: float) -> JobResult:
            error = JobTimeout(f"the job did not finish within {seconds:g} seconds")
            error.result = protocol.result if protocol.transport is not None else None
            raise error

        d.addTimeout(timeout, reactor, onTimeoutCancel=timed_out)
    return d
