"""The mirror-init side of the control protocol: submit one job and follow it to DONE.

Standard library only, on a blocking socket: mirror-init is started once per job, and
importing Twisted cost more than a whole no-op job (bench/NOTES.md, "mirror-init's start-up").

`submit_job` connects to a mirror server, sends one SOURCE line per source and GO, hands
every event to a callback (the progress display) and returns a `JobResult` when DONE
arrives. It raises a `ControlClientError` subclass whose message is one readable line when
the server cannot be reached, refuses the job, sends something malformed, drops the
connection before DONE, the optional timeout expires, or the user interrupts (Ctrl-C).

`ControlSession` is the protocol without I/O (bytes in, events and a result out), so that
the tests can feed it any bytes; `follow` runs a session on a connected socket.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from mirror.job_options import JobOptions, options_lines
from mirror.text import printable
from mirror.wire.control import (
    MAX_HOLDER_LINES,
    MAX_LINE,
    MAX_SOURCES,
    Attach,
    BwLimit,
    Cancel,
    Cancelled,
    ControlError,
    Done,
    JobAccepted,
    JobOption,
    JobState,
    LinksDone,
    LinkSkipped,
    LinksOption,
    ListJobs,
    Progress,
    Refused,
    Resumed,
    ServerEvent,
    SourceDone,
    SourceError,
    SourceHolder,
    SourceRequest,
    SourceSync,
    Spec,
    encode_bwlimit,
    encode_filter,
    encode_go,
    encode_links,
    encode_option,
    encode_request,
    encode_source,
    parse_server_line,
)

#: ERROR events kept for the final report; more are only counted (a server could send
#: one per file of a huge tree).
MAX_KEPT_ERRORS = 10_000
#: Seconds allowed to establish the connection to the mirror server.
CONNECT_TIMEOUT = 30.0
#: Bytes asked of the socket per read.
READ_SIZE = 65536
#: Shortest wait on the socket, in seconds, when a redraw or the deadline is already due.
MIN_WAIT = 0.001
#: Seconds mirror-init waits, after cancelling its job (Ctrl-C, SIGTERM, --timeout), for the
#: mirror server to report what was done.
CANCEL_WAIT = 30.0
#: Seconds mirror-init waits, when interrupted before the mirror server named the job it
#: sent, for that name (needed to cancel it).
JOB_ID_WAIT = 5.0

Clock = Callable[[], float]


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


class JobInterrupted(ControlClientError):
    """The user interrupted mirror-init (Ctrl-C, or SIGTERM turned into one)."""


class JobDetached(JobInterrupted):
    """The user interrupted mirror-init while it was attached (--attach): the job goes on."""


class JobResult:
    """Everything the server said about a finished job. (A plain class: see the note on
    the messages in `mirror.wire.control`.)"""

    def __init__(self, sources: Sequence[SourceRequest], job_id: str | None = None,
                 done_ok: bool = False) -> None:
        self.sources = sources
        self.job_id = job_id
        self.done_ok = done_ok
        #: SOURCE-DONE per source index; None for a source the server never reported.
        self.source_done: list[SourceDone | None] = [None] * len(sources)
        self.errors: list[SourceError] = []
        #: ERROR events beyond `MAX_KEPT_ERRORS`, counted but not kept.
        self.errors_dropped = 0
        self.last_progress: Progress | None = None
        #: Times the job was resumed after a restart of the mirror server (RESUMED).
        self.resumed = 0
        #: The job was cancelled at this client's request (Ctrl-C, SIGTERM, --timeout).
        self.cancelled = False
        #: SOURCE-SYNC per source index (replaced and deleted figures); None when not sent.
        self.source_sync: list[SourceSync | None] = [None] * len(sources)
        #: LINKS-DONE per source index (None: not reported, e.g. by an older server).
        self.links_done: list[LinksDone | None] = [None] * len(sources)
        #: LINK-SKIPPED events kept (at most `MAX_KEPT_ERRORS`), and those beyond, counted.
        self.links_skipped: list[LinkSkipped] = []
        self.links_skipped_dropped = 0
        #: SOURCE-HOLDER per source index: bytes of multi-source files by holder address.
        self.source_holders: list[dict[str, int]] = [{} for _ in sources]

    @property
    def deletion_refused(self) -> bool:
        """--max-delete was exceeded: nothing was deleted (mirror-init exits 3)."""
        return any(s is not None and s.deletion == "refused" for s in self.source_sync)

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


def _report_bug(text: str) -> None:
    sys.stderr.write(f"mirror-init: {text}\n")
    sys.stderr.flush()


class ControlSession:
    """One job's conversation, without I/O: `request` is what to send, `feed` takes what
    arrives. Lines end with ``\\n`` (the codec drops a trailing ``\\r``) and are at most
    `MAX_LINE` bytes.

    Every parsed event, REFUSED included, is passed to ``on_event`` first. `feed` raises a
    `ControlClientError` (its ``result`` set) on REFUSED or anything malformed; `finished`
    is True once DONE arrived, and `result` holds everything so far in any case.
    """

    def __init__(
        self,
        sources: Sequence[SourceRequest],
        on_event: Callable[[ServerEvent], None],
        report_bug: Callable[[str], None] = _report_bug,
        detach: bool = False,
        options: JobOptions | None = None,
        bwlimit: int = 0,
        links: str = "safe",
    ) -> None:
        if not 1 <= len(sources) <= MAX_SOURCES:
            raise ValueError(f"a job has 1 to {MAX_SOURCES} sources, not {len(sources)}")
        # Encode before connecting so an invalid source is a ValueError for the caller, not a
        # REFUSED from the server. The protocol's canonical terminator is CRLF.
        lines = [encode_source(s) for s in sources]
        for line in options_lines(options or JobOptions()):
            lines.append(encode_option(line) if isinstance(line, JobOption)
                         else encode_filter(line))
        if bwlimit:
            lines.append(encode_bwlimit(BwLimit(bwlimit)))
        lines.append(encode_links(LinksOption(links)))
        lines.append(encode_go())
        self.request = b"".join(line + b"\r\n" for line in lines)
        #: Finished as soon as the job has its id (--detach): the job goes on without us.
        self.detach = detach
        self._on_event = on_event
        self._report_bug = report_bug
        self.result = JobResult(sources=list(sources))
        self.finished = False
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        """Take bytes from the server: handle every complete line in them."""
        if self.finished:
            return  # the server closes after DONE; anything later is not our business
        buffer = self._buffer + data
        start = 0
        while not self.finished:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            if end - start > MAX_LINE:
                break  # refused below, without parsing
            line = buffer[start:end]
            start = end + 1
            self._line(line)
        self._buffer = buffer[start:]
        if not self.finished and len(self._buffer) > MAX_LINE:
            raise self._error(
                ProtocolViolation(f"the mirror server sent a line over {MAX_LINE} bytes")
            )

    def end_of_stream(self, why: str = "it closed the connection") -> None:
        """The connection is gone: raise unless DONE arrived."""
        if not self.finished:
            raise self._error(
                ConnectionLostBeforeDone(
                    "lost the connection to the mirror server before the job finished: "
                    + _one_line(why)
                )
            )

    def _error(self, error: ControlClientError) -> ControlClientError:
        error.result = self.result
        return error

    def _line(self, line: bytes) -> None:
        try:
            event = parse_server_line(line)
            self._check(event)
        except ControlError as e:
            raise self._error(ProtocolViolation(f"bad line from the mirror server: {e}")) from None
        try:
            self._on_event(event)
        except Exception as e:
            # A display bug must not lose the job's outcome.
            self._report_bug(f"event handler failed on {event!r}: {e!r}")
        self._record(event)

    def _check(self, event: ServerEvent) -> None:
        """Refuse events that contradict the job this client sent."""
        count = len(self.result.sources)
        if (isinstance(event, (SourceError, SourceDone, LinkSkipped, LinksDone))
                and event.index >= count):
            raise ControlError(f"source index {event.index} but the job has {count} sources")
        if isinstance(event, SourceDone) and self.result.source_done[event.index] is not None:
            raise ControlError(f"second SOURCE-DONE for source {event.index}")
        if isinstance(event, (Spec, JobState, Cancelled)):
            raise ControlError(f"unexpected {type(event).__name__} for a submitted job")
        if isinstance(event, SourceSync):
            if event.index >= count:
                raise ControlError(f"source index {event.index} but the job has {count} "
                                   "sources")
            if self.result.source_sync[event.index] is not None:
                raise ControlError(f"second SOURCE-SYNC for source {event.index}")
        if isinstance(event, SourceHolder):
            if event.index >= count:
                raise ControlError(f"source index {event.index} but the job has {count} "
                                   "sources")
            held = self.result.source_holders[event.index]
            if event.holder in held or len(held) >= MAX_HOLDER_LINES:
                raise ControlError(f"SOURCE-HOLDER repeated or beyond {MAX_HOLDER_LINES} for "
                                   f"source {event.index}")

    def _record(self, event: ServerEvent) -> None:
        result = self.result
        if isinstance(event, JobAccepted):
            result.job_id = event.job_id
            self.finished = self.detach
        elif isinstance(event, Resumed):
            result.resumed = event.count
        elif isinstance(event, Progress):
            result.last_progress = event
        elif isinstance(event, SourceError):
            if len(result.errors) < MAX_KEPT_ERRORS:
                result.errors.append(event)
            else:
                result.errors_dropped += 1
        elif isinstance(event, SourceDone):
            result.source_done[event.index] = event
        elif isinstance(event, SourceSync):
            result.source_sync[event.index] = event
        elif isinstance(event, LinksDone):
            result.links_done[event.index] = event
        elif isinstance(event, LinkSkipped):
            if len(result.links_skipped) < MAX_KEPT_ERRORS:
                result.links_skipped.append(event)
            else:
                result.links_skipped_dropped += 1
        elif isinstance(event, SourceHolder):
            result.source_holders[event.index][event.holder] = event.bytes
        elif isinstance(event, Done):
            result.done_ok = event.ok
            self.finished = True
        elif isinstance(event, Refused):
            raise self._error(JobRefused(_one_line(event.message)))


class AttachSession(ControlSession):
    """Following a job submitted earlier (ATTACH): its SOURCEs arrive as SPEC lines first,
    then the events so far, then the rest as they happen."""

    def __init__(self, job_id: str, on_event: Callable[[ServerEvent], None],
                 report_bug: Callable[[str], None] = _report_bug) -> None:
        self.request = encode_request(Attach(job_id)) + b"\r\n"
        self.detach = False
        self._on_event = on_event
        self._report_bug = report_bug
        #: The job's SOURCEs, as its SPEC lines say.
        self.sources: list[SourceRequest] = []
        self.result = JobResult(sources=self.sources)
        self.finished = False
        self._buffer = b""

    def _check(self, event: ServerEvent) -> None:
        result = self.result
        if isinstance(event, Spec):
            if result.job_id is None or event.index != len(result.sources):
                raise ControlError(f"SPEC {event.index} out of order")
            if event.index >= MAX_SOURCES:
                raise ControlError("too many SPECs")
            return
        if (isinstance(event, (SourceError, SourceDone, SourceSync, LinkSkipped, LinksDone,
                               Progress, Done))
                and not result.sources):
            raise ControlError(f"{type(event).__name__} before the job's SPECs")
        super()._check(event)

    def _record(self, event: ServerEvent) -> None:
        if isinstance(event, Spec):
            self.sources.append(event.source)
            self.result.source_done.append(None)
            self.result.source_sync.append(None)
            self.result.links_done.append(None)
            self.result.source_holders.append({})
            return
        super()._record(event)


def _timed_out(timeout: float, result: JobResult | None) -> JobTimeout:
    error = JobTimeout(f"the job did not finish within {timeout:g} seconds")
    error.result = result
    return error


def follow(
    sock: socket.socket,
    session: ControlSession,
    deadline: float | None = None,
    timeout: float | None = None,
    wake: Callable[[], float | None] = lambda: None,
    tick: Callable[[], None] = lambda: None,
    clock: Clock = time.monotonic,
    send: bool = True,
) -> JobResult:
    """Send the job on the connected ``sock`` (unless ``send`` is False: it was sent) and
    read events until DONE.

    ``deadline`` (on ``clock``) ends the job with `JobTimeout` (naming ``timeout``); ``wake``
    says when ``tick`` next wants to run (the progress display's held-back redraw), or None.
    The socket is left open: the caller closes it.
    """

    def wait_limit() -> float | None:
        """Seconds the next socket call may block, or raise when the deadline passed."""
        limits = [t for t in (deadline, wake()) if t is not None]
        if not limits:
            return None
        now = clock()
        if deadline is not None and now >= deadline:
            raise _timed_out(timeout or 0.0, session.result)
        # Never 0: that would make the socket non-blocking (BlockingIOError, not a timeout).
        return max(min(limits) - now, MIN_WAIT)

    try:
        sock.settimeout(wait_limit())
        # The request is a few KiB at most: one blocking send within the deadline.
        if send:
            sock.sendall(session.request)
        while not session.finished:
            sock.settimeout(wait_limit())
            try:
                data = sock.recv(READ_SIZE)
            except TimeoutError:
                tick()
                continue
            if not data:
                session.end_of_stream()
            session.feed(data)
            tick()
    except TimeoutError:
        # sendall timed out: the server does not read the job.
        raise _timed_out(timeout or 0.0, session.result) from None
    except OSError as e:
        session.end_of_stream(e.strerror or str(e) or type(e).__name__)
    return session.result


def connect(host: str, port: int, timeout: float | None = CONNECT_TIMEOUT) -> socket.socket:
    """A TCP connection to the mirror server; `MirrorServerUnreachable` if none can be made.

    Every address ``host`` resolves to is tried in turn (`socket.create_connection`).
    """
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except (OSError, UnicodeError) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        if isinstance(e, TimeoutError):
            reason = f"no answer within {timeout:g} seconds"
        raise MirrorServerUnreachable(
            f"cannot reach the mirror server: {_one_line(reason)}"
        ) from None


def submit_job(
    host: str,
    port: int,
    sources: Sequence[SourceRequest],
    on_event: Callable[[ServerEvent], None],
    timeout: float | None = None,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    wake: Callable[[], float | None] = lambda: None,
    tick: Callable[[], None] = lambda: None,
    clock: Clock = time.monotonic,
    opener: Callable[[str, int, float | None], socket.socket] = connect,
    detach: bool = False,
    options: JobOptions | None = None,
    bwlimit: int = 0,
    links: str = "safe",
) -> JobResult:
    """Run one job on the mirror server at ``host``:``port``; return its `JobResult`.

    ``on_event`` sees every event as it arrives; ``wake``/``tick`` as in `follow`. Raises
    `MirrorServerUnreachable`, `JobRefused`, `ProtocolViolation`, `ConnectionLostBeforeDone`,
    `JobTimeout` after ``timeout`` seconds (connecting included), or `JobInterrupted` on
    Ctrl-C; the error's ``result`` holds what arrived before (None if the connection was
    not made). A result whose ``ok`` is False is still a result, not an error. ``bwlimit``
    (bytes per second, 0: none) is the job's bandwidth limit.
    """
    session = ControlSession(sources, on_event, detach=detach, options=options,
                             bwlimit=bwlimit, links=links)
    return _run_session(host, port, session, timeout, cancel=not detach,
                        connect_timeout=connect_timeout, wake=wake, tick=tick, clock=clock,
                        opener=opener)


def attach_job(host: str, port: int, job_id: str, on_event: Callable[[ServerEvent], None],
               timeout: float | None = None, **options: Any) -> JobResult:
    """Follow the job ``job_id`` (running or finished) to its end, as `submit_job` follows a
    new one (``options``: its keyword options but ``detach``). Ctrl-C raises `JobDetached`
    and ``timeout`` `JobTimeout`: neither cancels the job."""
    return _run_session(host, port, AttachSession(job_id, on_event), timeout, cancel=False,
                        **options)


def _run_session(host: str, port: int, session: ControlSession, timeout: float | None,
                 cancel: bool, *, connect_timeout: float = CONNECT_TIMEOUT,
                 wake: Callable[[], float | None] = lambda: None,
                 tick: Callable[[], None] = lambda: None, clock: Clock = time.monotonic,
                 opener: Callable[[str, int, float | None], socket.socket] = connect
                 ) -> JobResult:
    """Connect, run ``session`` to its end; with ``cancel``, an interruption or the timeout
    cancels the job (then waits up to `CANCEL_WAIT` for the report of what was done)."""
    deadline = None if timeout is None else clock() + timeout
    sock: socket.socket | None = None
    try:
        limit = connect_timeout
        if deadline is not None:
            limit = min(limit, max(deadline - clock(), 0.0))
        try:
            sock = opener(host, port, limit)
        except MirrorServerUnreachable:
            if deadline is not None and clock() >= deadline:
                raise _timed_out(timeout or 0.0, None) from None
            raise
        try:
            return follow(sock, session, deadline, timeout, wake, tick, clock)
        except JobTimeout as e:
            if not cancel:
                raise
            if session.result.job_id is not None:
                _cancel_and_wait(host, port, sock, session, opener, clock)
            expired = JobTimeout(f"{e}{_cancelled(session)}")
            expired.result = session.result
            raise expired from None
    except KeyboardInterrupt:
        if sock is None:
            error: JobInterrupted = JobInterrupted("interrupted")
        elif not cancel:
            error = JobDetached(f"detached from job {session.result.job_id}")
        else:
            try:
                _cancel_and_wait(host, port, sock, session, opener, clock)
            except KeyboardInterrupt:
                pass  # interrupted again: report what arrived
            error = JobInterrupted(f"interrupted{_cancelled(session)}")
        error.result = session.result if sock is not None else None
        raise error from None
    finally:
        if sock is not None:
            sock.close()


def _cancelled(session: ControlSession) -> str:
    return f"; job {session.result.job_id} cancelled" if session.result.cancelled else ""


def _cancel_and_wait(host: str, port: int, sock: socket.socket, session: ControlSession,
                     opener: Callable[[str, int, float | None], socket.socket],
                     clock: Clock) -> None:
    """Cancel the job followed on ``sock`` and read its end (best effort, within
    `CANCEL_WAIT`): the report then says what was done."""
    deadline = clock() + CANCEL_WAIT
    try:
        if session.result.job_id is None:
            # Interrupted before JOB arrived: it is on its way (the job was sent).
            session.detach = True
            follow(sock, session, clock() + JOB_ID_WAIT, JOB_ID_WAIT, clock=clock, send=False)
            session.detach = False
            session.finished = False
        job_id = session.result.job_id
        if job_id is None or session.finished:
            return
        cancel_job(host, port, job_id, opener=opener)
        session.result.cancelled = True
        follow(sock, session, deadline, CANCEL_WAIT, clock=clock, send=False)
    except ControlClientError:
        pass  # the report says the job was interrupted; the server may have said no more


def _request(host: str, port: int, line: bytes,
             opener: Callable[[str, int, float | None], socket.socket],
             timeout: float = 10.0) -> list[ServerEvent]:
    """Send one request line (JOBS, CANCEL) and read the answer to its last line: DONE,
    CANCELLED or REFUSED (raised as `JobRefused`)."""
    sock = opener(host, port, min(timeout, CONNECT_TIMEOUT))
    try:
        sock.settimeout(timeout)
        sock.sendall(line + b"\r\n")
        events: list[ServerEvent] = []
        buffer = b""
        while True:
            try:
                data = sock.recv(READ_SIZE)
            except OSError as e:
                raise ConnectionLostBeforeDone(
                    f"lost the connection to the mirror server: {_one_line(str(e))}") from None
            if not data:
                raise ConnectionLostBeforeDone("the mirror server closed the connection "
                                               "before answering")
            buffer += data
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                try:
                    event = parse_server_line(raw)
                except ControlError as e:
                    raise ProtocolViolation(f"bad line from the mirror server: {e}") from None
                if isinstance(event, Refused):
                    raise JobRefused(_one_line(event.message))
                if isinstance(event, (Done, Cancelled)):
                    return events
                if not isinstance(event, JobState):
                    raise ProtocolViolation(f"unexpected {type(event).__name__} from the "
                                            "mirror server")
                events.append(event)
            if len(buffer) > MAX_LINE:
                raise ProtocolViolation(f"the mirror server sent a line over {MAX_LINE} bytes")
    finally:
        sock.close()


def list_jobs(host: str, port: int,
              opener: Callable[[str, int, float | None], socket.socket] = connect
              ) -> list[JobState]:
    """The jobs the mirror server knows (JOBS), oldest first."""
    return [e for e in _request(host, port, encode_request(ListJobs()), opener)
            if isinstance(e, JobState)]


def cancel_job(host: str, port: int, job_id: str,
               opener: Callable[[str, int, float | None], socket.socket] = connect) -> None:
    """Cancel the job ``job_id`` (CANCEL); `JobRefused` says why not (unknown, finished)."""
    _request(host, port, encode_request(Cancel(job_id)), opener)
