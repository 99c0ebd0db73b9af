"""The mirror server's control port: mirror-init submits a job and hears how it goes.

A ``LineReceiver`` (short lines only; grammar in doc/protocol.md). The submission phase has an
absolute deadline, so a client trickling bytes cannot hold a connection open; once the job
runs, the client only reads, and one that stops reading is dropped (the job goes on).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from mirror.filters import MAX_RULES, PatternError
from mirror.job_options import options_from_lines
from mirror.limits import (
    ClosingMixin,
    ConnectionLimiter,
    Deadline,
    LimitedConnection,
    LimitedFactory,
)
from mirror.mirror_server.journal import JournalFull
from mirror.mirror_server.subtree_lock import SubtreeLocked
from mirror.wire import control

if TYPE_CHECKING:
    from mirror.mirror_server.job import Job, SourceRun
    from mirror.mirror_server.job_access import JobAccess
    from mirror.mirror_server.registry import JobFeed
    from mirror.mirror_server.service import MirrorService


@implementer(IPushProducer)
class ControlProtocol(LineReceiver, LimitedConnection, ClosingMixin):
    """One mirror-init connection: its submission, then its job's events."""

    log = Logger()
    MAX_LENGTH = control.MAX_LINE
    delimiter = b"\n"
    factory: ControlFactory

    def __init__(self) -> None:
        self.sources: list[control.SourceRequest] = []
        #: OPTION and FILTER lines, in the order received.
        self.option_lines: list[control.JobOption | control.FilterRule] = []
        #: The job's BWLIMIT (bytes per second), 0 if none was sent.
        self.bwlimit = 0
        #: The client's LINKS line, if it sent one (then it hears of links as they go).
        self.links: control.LinksOption | None = None
        self.job: Job | None = None
        self._job_over = False
        #: The job this connection is attached to (ATTACH), if any.
        self._attached: JobFeed | None = None

    def makeConnection(self, transport: Any) -> None:
        # The factory is set after construction (Factory.buildProtocol): read it here.
        self.clock = self.factory.service.reactor
        settings = self.factory.service.settings
        self._submit_deadline = Deadline(self.clock, settings.submit_timeout,
                                         lambda: self.refuse("job not submitted in time"))
        self._write_deadline = Deadline(self.clock, settings.write_timeout,
                                        lambda: self.abort("client stopped reading"))
        super().makeConnection(transport)

    def activity(self) -> str:
        """What the peer is doing (``mirror-admin who``)."""
        if self.job is not None:
            return f"submitted job {self.job.id}"
        if self._attached is not None:
            return "following a job"
        return "submitting a job"

    def is_idle(self) -> bool:
        """Idle until GO and once the job is over; never while the job runs (nor while
        attached to a running job)."""
        if self._attached is not None:
            return self._job_over
        return self.job is None or self._job_over

    def evict(self, reason: str) -> None:
        if self.job is None:
            self.refuse(reason)
        else:
            self.abort(reason)  # DONE was sent: only the close is left

    def connectionMade(self) -> None:
        assert self.transport is not None
        # ITransport omits IConsumer's methods, which TCP, TLS and test transports all have.
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
        self._submit_deadline.start()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self._submit_deadline.stop()
        self._write_deadline.stop()
        self.cancel_close_timer()
        self.factory.unregisterProtocol(self)
        if self._attached is not None:
            self._attached.detach(self)  # a lost client never cancels: it only stops hearing
        self.transport = None  # the job may outlive us: its events go nowhere from now on

    def pauseProducing(self) -> None:
        self._write_deadline.start()

    def resumeProducing(self) -> None:
        self._write_deadline.stop()

    def stopProducing(self) -> None:
        pass

    # -- the submission ---------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.job is not None or self._attached is not None or self._closing:
            return  # nothing more is read once the job runs or the client was refused
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self.job is not None or self._attached is not None or self._closing:
            return  # nothing more is expected once the job runs
        line = line.rstrip(b"\r")
        try:
            message = control.parse_client_line(line)
        except control.ControlError as e:
            self.refuse(str(e))
            return
        if isinstance(message, (control.Attach, control.ListJobs, control.Cancel)):
            self._request(message)
            return
        if isinstance(message, control.Go):
            if not self.sources:
                self.refuse("GO without any SOURCE")
                return
            access = self.factory.job_access
            if access is not None:
                # Nothing more is read (nor refused twice) while the rights are checked.
                self._closing = True
                Deferred.fromCoroutine(self._check_then_submit(access))
                return
            self._submit()
            return
        if isinstance(message, (control.JobOption, control.FilterRule)):
            if len(self.option_lines) >= MAX_RULES + len(control.OPTION_NAMES):
                self.refuse(f"more than {MAX_RULES} include/exclude patterns")
                return
            self.option_lines.append(message)
            return
        if isinstance(message, control.BwLimit):
            if self.bwlimit:
                self.refuse("BWLIMIT given twice")
                return
            self.bwlimit = message.rate
            return
        if isinstance(message, control.LinksOption):
            if self.links is not None:
                self.refuse("LINKS given twice")
                return
            self.links = message
            return
        if len(self.sources) >= control.MAX_SOURCES:
            self.refuse(f"more than {control.MAX_SOURCES} sources")
            return
        self.sources.append(message)

    async def _check_then_submit(self, access: JobAccess) -> None:
        """GO with --accounts: submit only if the peer may make us mirror every SPEC."""
        host = self.peer_key
        try:
            why = await access.refusal(self.peer_identity,  # type: ignore[arg-type]
                                       host, self.sources)
        except Exception:
            self.log.failure("checking the rights of {host}", host=host)
            why = "internal error"
        self._closing = False
        if self.transport is None:
            return
        if why is not None:
            self.refuse(why)
            return
        self._submit()

    def _submit(self) -> None:
        # Without LINKS (an older mirror-init): safe links, as rsync -a --safe-links.
        mode = self.links.mode if self.links is not None else "safe"
        try:
            options = options_from_lines(self.option_lines)
            self.job = self.factory.service.submit(self.sources, self, options,
                                                   bwlimit=self.bwlimit, links_mode=mode)
        except (PatternError, SubtreeLocked) as e:
            self.refuse(str(e))
            return
        except JournalFull as e:
            self.refuse(f"mirror server busy: {e}")
            return
        self._submit_deadline.stop()
        self.clearLineBuffer()  # whatever followed GO in the same read is ignored too

    def lineLengthExceeded(self, line: bytes) -> None:
        if self.job is not None or self._closing:
            return
        self.refuse(f"line longer than {self.MAX_LENGTH} bytes")

    def _request(self, message: control.Attach | control.ListJobs | control.Cancel) -> None:
        """ATTACH, JOBS or CANCEL: a connection's only request, instead of a job."""
        if self.sources or self.option_lines or self.bwlimit or self.links is not None:
            # A new job's lines would be silently dropped: a client mixing them is confused.
            first = "SOURCE" if self.sources else "a job's OPTION, FILTER, BWLIMIT or LINKS"
            command = "JOBS" if isinstance(message, control.ListJobs) else (
                type(message).__name__.upper())
            self.refuse(f"{command} after {first}")
            return
        self._submit_deadline.stop()
        self.clearLineBuffer()
        registry = self.factory.service.registry
        if isinstance(message, control.Attach):
            self._attached = registry.attach(message.job_id, self)
            if self._attached is None:
                self.refuse(f"no job {message.job_id}")
            return
        if isinstance(message, control.ListJobs):
            for state in registry.states():
                self._send(state)
            self._send(control.Done(True))
        else:
            why = registry.cancel(message.job_id)
            if why is not None:
                self.refuse(why)
                return
            self._send(control.Cancelled(message.job_id))
        self._job_over = True
        self._closing = True
        self.close()

    # -- EventSink (registry.py): an attached job's events -----------------------------------

    def send_event(self, event: control.ServerEvent) -> None:
        self._send(event)

    def job_over(self) -> None:
        self._job_over = True
        if self.transport is not None:
            self.close()

    _closing = False

    def refuse(self, reason: str) -> None:
        if self._closing:
            return  # one REFUSED per connection
        self._closing = True
        self._submit_deadline.stop()
        self._send(control.Refused(reason))
        self.close()

    def _send(self, event: Any) -> None:
        # CRLF, the protocol's line end; ``delimiter`` is "\n" only so that both are read.
        if self.transport is not None:
            self.transport.write(control.encode_event(event) + b"\r\n")

    # -- JobObserver --------------------------------------------------------------------------

    def job_started(self, job: Job) -> None:
        self._send(control.JobAccepted(job.id))

    def progress(self, job: Job) -> None:
        self._send(control.Progress(job.files_done, job.bytes_done, job.files_total,
                                    job.bytes_total, job.listing_done))

    def source_error(self, index: int, path: str | None, message: str) -> None:
        self._send(control.SourceError(index, path, message))

    def link_skipped(self, index: int, path: str | None, message: str) -> None:
        if self.links is not None:  # an older client would refuse the line
            self._send(control.LinkSkipped(index, path, message))

    def source_done(self, run: SourceRun) -> None:
        sync = run.sync
        if run.job.options.reports_sync and sync is not None:
            self._send(control.SourceSync(run.index, sync.replaced, sync.deleted,
                                          sync.deleted_bytes, sync.deletion))
        if self.links is not None:
            self._send(control.LinksDone(run.index, run.links.placed, run.links.skipped))
        busiest = sorted(run.holder_bytes.items(), key=lambda kv: (-kv[1], kv[0]))
        for holder, n in busiest[: control.MAX_HOLDER_LINES]:
            self._send(control.SourceHolder(run.index, holder, n))
        s = run.stats
        self._send(control.SourceDone(run.index, run.ok, s.count, run.dirs, s.total, s.sum_sq,
                                      run.skipped, run.failed, run.elapsed, run.not_exported))

    def job_done(self, job: Job) -> None:
        self._job_over = True
        self._send(control.Done(job.ok))
        if self.transport is not None:
            self.close()


class ControlFactory(LimitedFactory):
    """The control port of ``service``, within its connection caps."""

    protocol = ControlProtocol
    server_name = "mirror server"
    #: --accounts: who may submit which jobs (None: anyone who may connect).
    job_access: JobAccess | None = None

    def __init__(self, service: MirrorService) -> None:
        self.service = service
        s = service.settings
        self.limiter = ConnectionLimiter(s.max_connections, s.max_per_peer)

    def refusal(self, reason: str) -> bytes:
        """A REFUSED line: mirror-init prints the reason and exits 1."""
        return control.encode_event(control.Refused(reason)) + b"\r\n"
