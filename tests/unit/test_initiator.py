"""mirror-init: the control client, the progress display, the report and the command line."""

from __future__ import annotations

import io
import json
import sys
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mirror.initiator import cli
from mirror.initiator.client import (
    ConnectionLostBeforeDone,
    ControlClientProtocol,
    JobRefused,
    JobResult,
    JobTimeout,
    MirrorServerUnreachable,
    ProtocolViolation,
    submit_job,
)
from mirror.initiator.progress import ProgressDisplay
from mirror.initiator.report import (
    build_report,
    format_bytes,
    format_clock,
    format_json,
    format_text,
)
from mirror.wire.control import (
    Done,
    JobAccepted,
    Progress,
    Refused,
    SourceDone,
    SourceError,
    SourceRequest,
    encode_event,
)

SOURCES = [
    SourceRequest("files.example", 8000, "pub", 0.0),
    SourceRequest("::1", 8001, "", 0.5),
]
MiB = 1024 * 1024


#: Text a hostile server could send: clear screen, set title, carriage return, C1 CSI, bidi
#: override, line separator, DEL, and how mirror-init must show it.
HOSTILE = "\x1b[2J\x1b]0;t\x07\rx\x9b1m\u202eexe.txt\u2028\x7f\u00e9"
SHOWN = "\\x1b[2J\\x1b]0;t\\x07\\rx\\x9b1m\\u202eexe.txt\\u2028\\x7f\u00e9"


def lines(*events: Any) -> bytes:
    return b"".join(encode_event(e) + b"\r\n" for e in events)


def success_events() -> list[Any]:
    return [
        JobAccepted("7"),
        Progress(0, 0, 3, 30, True),
        Progress(3, 30, 3, 30, True),
        SourceDone(0, True, 2, 1, 20, 200, 1, 0, 2.0),
        SourceDone(1, True, 1, 0, 10, 100, 0, 0, 1.0),
        Done(True),
    ]


def connected(sources: list[SourceRequest] = SOURCES) -> tuple[
    ControlClientProtocol, StringTransport, list[Any]
]:
    seen: list[Any] = []
    proto = ControlClientProtocol(sources, seen.append)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, seen


class ClientProtocolTests(SynchronousTestCase):
    def test_sends_job_on_connect(self) -> None:
        _, transport, _ = connected()
        self.assertEqual(
            transport.value(),
            b"SOURCE files.example 8000 pub 0.0\r\nSOURCE ::1 8001 . 0.5\r\nGO\r\n",
        )

    def test_success(self) -> None:
        proto, transport, seen = connected()
        results: list[JobResult] = []
        proto.done.addCallback(results.append)
        events = success_events()
        proto.dataReceived(lines(*events))
        self.assertEqual(seen, events)
        (result,) = results
        self.assertTrue(result.ok)
        self.assertEqual(result.job_id, "7")
        self.assertEqual(result.source_done, [events[3], events[4]])
        self.assertEqual(result.last_progress, events[2])
        self.assertTrue(transport.disconnecting)

    def test_lines_split_anywhere_and_bare_lf(self) -> None:
        proto, _, seen = connected()
        data = b"JOB 7\nPROGRESS 1 2 3 4 0\r\nDONE failed\n"
        for i in range(len(data)):
            proto.dataReceived(data[i : i + 1])
        self.assertEqual(seen, [JobAccepted("7"), Progress(1, 2, 3, 4, False), Done(False)])
        self.assertFalse(self.successResultOf(proto.done).ok)

    def test_absurd_numbers_from_the_server_are_a_protocol_violation(self) -> None:
        """An elapsed time hundreds of digits long is refused, never printed (issue 7)."""
        proto, transport, seen = connected()
        proto.dataReceived(b"JOB 7\r\nSOURCE-DONE 0 ok 0 0 0 0 0 0 " + b"9" * 300 + b" 0\r\n")
        error = self.failureResultOf(proto.done, ProtocolViolation).value
        self.assertIn("elapsed", str(error))
        self.assertLess(len(str(error)), 300)
        self.assertEqual(seen, [JobAccepted("7")])
        self.assertTrue(transport.disconnected)

    def test_source_failure_makes_result_not_ok(self) -> None:
        proto, _, _ = connected()
        proto.dataReceived(
            lines(
                SourceError(1, None, "connection refused"),
                SourceDone(0, True, 0, 0, 0, 0, 0, 0, 0.1),
                SourceDone(1, False, 0, 0, 0, 0, 0, 0, 0.1),
                Done(False),
            )
        )
        result = self.successResultOf(proto.done)
        self.assertFalse(result.ok)
        self.assertEqual(result.errors, [SourceError(1, None, "connection refused")])
        self.assertTrue(result.source_ok(0))
        self.assertFalse(result.source_ok(1))

    def test_done_ok_without_every_source_done_is_not_ok(self) -> None:
        proto, _, _ = connected()
        proto.dataReceived(lines(SourceDone(0, True, 0, 0, 0, 0, 0, 0, 0.1), Done(True)))
        self.assertFalse(self.successResultOf(proto.done).ok)

    def test_refused(self) -> None:
        proto, transport, seen = connected()
        proto.dataReceived(lines(Refused("too many\nsources\x1b[2J")))
        self.assertEqual(seen, [Refused("too many\nsources\x1b[2J")])
        error = self.failureResultOf(proto.done, JobRefused).value
        self.assertEqual(
            str(error), "the mirror server refused the job: too many\\nsources\\x1b[2J"
        )
        self.assertTrue(transport.disconnecting)

    def test_malformed_line(self) -> None:
        proto, transport, seen = connected()
        proto.dataReceived(b"JOB 7\r\nPROGRESS 1 2 3\r\nDONE ok\r\n")
        self.assertEqual(seen, [JobAccepted("7")])
        error = self.failureResultOf(proto.done, ProtocolViolation).value
        self.assertIn("PROGRESS takes 5 fields", str(error))
        self.assertEqual(error.result.job_id, "7")
        self.assertTrue(transport.disconnecting)

    def test_index_beyond_the_job(self) -> None:
        proto, _, _ = connected()
        proto.dataReceived(lines(SourceError(2, None, "m")))
        self.failureResultOf(proto.done, ProtocolViolation)

    def test_second_source_done(self) -> None:
        proto, _, _ = connected()
        proto.dataReceived(lines(*[SourceDone(0, True, 0, 0, 0, 0, 0, 0, 0.1)] * 2))
        self.failureResultOf(proto.done, ProtocolViolation)

    def test_line_too_long(self) -> None:
        proto, _, _ = connected()
        proto.dataReceived(b"JOB " + b"x" * 20000)
        self.assertIn("over 16384 bytes", str(self.failureResultOf(proto.done).value))

    def test_connection_lost_before_done(self) -> None:
        proto, _, _ = connected()
        proto.dataReceived(lines(JobAccepted("7"), SourceDone(0, True, 0, 0, 0, 0, 0, 0, 0.1)))
        proto.connectionLost(Failure(ConnectionLost("reset by peer")))
        error = self.failureResultOf(proto.done, ConnectionLostBeforeDone).value
        self.assertIn("before the job finished", str(error))
        self.assertIsNotNone(error.result.source_done[0])

    def test_close_after_done_is_normal(self) -> None:
        proto, _, _ = connected()
        proto.dataReceived(lines(Done(True)))
        proto.connectionLost(Failure(ConnectionLost()))
        self.successResultOf(proto.done)

    def test_broken_event_handler_does_not_lose_the_job(self) -> None:
        def broken(event: Any) -> None:
            raise RuntimeError("display bug")

        proto = ControlClientProtocol(SOURCES[:1], broken)
        proto.makeConnection(StringTransport())
        proto.dataReceived(lines(SourceDone(0, True, 0, 0, 0, 0, 0, 0, 0.1), Done(True)))
        self.assertTrue(self.successResultOf(proto.done).ok)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_source_count_checked(self) -> None:
        self.assertRaises(ValueError, ControlClientProtocol, [], print)
        self.assertRaises(ValueError, ControlClientProtocol, SOURCES[:1] * 65, print)


class TriggerReactor(MemoryReactorClock):
    """A MemoryReactorClock whose system event triggers can be removed, like a real one's."""

    # Returns a trigger ID as a real reactor does (MemoryReactor's returns None).
    def addSystemEventTrigger(  # type: ignore[override]
        self, phase: str, eventType: str, f: Any, *args: Any, **kw: Any
    ) -> Any:
        super().addSystemEventTrigger(phase, eventType, f, *args, **kw)
        return (phase, eventType, (f, args, kw))

    def removeSystemEventTrigger(self, triggerID: Any) -> None:
        phase, eventType, entry = triggerID
        self.triggers[phase][eventType].remove(entry)


class ScriptedServer(LineReceiver):
    """A fake mirror server: collects the submission, answers GO with ``script``."""

    delimiter = b"\n"

    def __init__(self, script: bytes, close: bool = True) -> None:
        self.script = script
        self.close = close
        self.received: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.received.append(line.rstrip(b"\r"))
        if line.rstrip(b"\r") == b"GO":
            self.transport.write(self.script)
            if self.close:
                self.transport.loseConnection()


@implementer(IStreamClientEndpoint)
class LoopbackEndpoint:
    """Connects a client to ``server`` through an in-memory iosim pump."""

    def __init__(self, server: Protocol) -> None:
        self.server = server
        self.pump: iosim.IOPump | None = None

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        client = factory.buildProtocol(iosim.FakeAddress())
        self.pump = iosim.connect(
            self.server, iosim.makeFakeServer(self.server),
            client, iosim.makeFakeClient(client), greet=False,
        )  # fmt: skip
        return succeed(client)


@implementer(IStreamClientEndpoint)
class StringEndpoint:
    """Connects a client to a StringTransport the test drives by hand."""

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.protocol: IProtocol | None = None

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        self.protocol = factory.buildProtocol(iosim.FakeAddress())
        self.protocol.makeConnection(self.transport)
        return succeed(self.protocol)


@implementer(IStreamClientEndpoint)
class RefusingEndpoint:
    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        return fail(ConnectionRefusedError("Connection refused"))


class SubmitJobTests(SynchronousTestCase):
    def test_whole_exchange_over_iosim(self) -> None:
        server = ScriptedServer(lines(*success_events()))
        endpoint = LoopbackEndpoint(server)
        seen: list[Any] = []
        d = submit_job(Clock(), endpoint, SOURCES, seen.append)
        endpoint.pump.flush()
        self.assertEqual(
            server.received,
            [b"SOURCE files.example 8000 pub 0.0", b"SOURCE ::1 8001 . 0.5", b"GO"],
        )
        self.assertTrue(self.successResultOf(d).ok)
        self.assertEqual(seen, success_events())

    def test_server_drops_connection(self) -> None:
        server = ScriptedServer(lines(JobAccepted("1"), Progress(0, 0, 1, 1, False)))
        endpoint = LoopbackEndpoint(server)
        d = submit_job(Clock(), endpoint, SOURCES, lambda e: None)
        endpoint.pump.flush()
        self.failureResultOf(d, ConnectionLostBeforeDone)

    def test_unreachable(self) -> None:
        d = submit_job(Clock(), RefusingEndpoint(), SOURCES, lambda e: None)
        error = self.failureResultOf(d, MirrorServerUnreachable).value
        self.assertIn("cannot reach the mirror server", str(error))
        self.assertIn("refused", str(error))

    def test_timeout(self) -> None:
        clock = Clock()
        endpoint = StringEndpoint()
        d = submit_job(clock, endpoint, SOURCES, lambda e: None, timeout=30)
        endpoint.protocol.dataReceived(lines(JobAccepted("9")))
        clock.advance(29)
        self.assertNoResult(d)
        clock.advance(1)
        error = self.failureResultOf(d, JobTimeout).value
        self.assertIn("within 30 seconds", str(error))
        self.assertEqual(error.result.job_id, "9", "what arrived is kept")
        self.assertTrue(endpoint.transport.disconnecting)

    def test_timeout_while_connecting(self) -> None:
        clock = Clock()
        connecting: Deferred[IProtocol] = Deferred()

        @implementer(IStreamClientEndpoint)
        class Hanging:
            def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
                return connecting

        d = submit_job(clock, Hanging(), SOURCES, lambda e: None, timeout=5)
        clock.advance(5)
        self.assertIsNone(self.failureResultOf(d, JobTimeout).value.result)

    def test_cancel_drops_connection(self) -> None:
        endpoint = StringEndpoint()
        d = submit_job(Clock(), endpoint, SOURCES, lambda e: None)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(endpoint.transport.disconnecting)


class ProgressTests(SynchronousTestCase):
    def make(self, tty: bool) -> tuple[ProgressDisplay, io.StringIO, Clock]:
        out, clock = io.StringIO(), Clock()
        return ProgressDisplay(out, SOURCES, clock=clock, tty=tty), out, clock

    def test_tty_bar(self) -> None:
        display, out, clock = self.make(tty=True)
        display(Progress(0, 0, 4, 4 * MiB, True))
        clock.advance(1)
        display(Progress(1, MiB, 4, 4 * MiB, True))
        text = out.getvalue()
        self.assertTrue(text.startswith("\r["))
        last = text.rsplit("\r", 1)[1]
        self.assertIn(" 25%", last)
        self.assertIn("1.0 MiB / 4.0 MiB", last)
        self.assertIn("1/4 files", last)
        self.assertIn("1.0 MiB/s", last)
        self.assertIn("ETA 0:03", last)
        self.assertNotIn("\n", text)

    def test_eta_at_a_crawl_is_bounded(self) -> None:
        display, out, clock = self.make(tty=False)
        display(Progress(0, 0, 1, 2**64 - 1, True))
        clock.advance(3600)
        display(Progress(0, 1, 1, 2**64 - 1, True))
        last = out.getvalue().splitlines()[-1]
        self.assertIn("ETA >9999:59:59", last)
        self.assertLess(len(last), 120)

    def test_tty_throttled_then_caught_up(self) -> None:
        display, out, clock = self.make(tty=True)
        display(Progress(0, 0, 100, 100, True))
        for i in range(1, 50):
            display(Progress(i, i, 100, 100, True))
        self.assertEqual(out.getvalue().count("\r"), 1, "redraws within 0.1 s are held back")
        clock.advance(0.1)
        self.assertEqual(out.getvalue().count("\r"), 2)
        self.assertIn(" 49%", out.getvalue().rsplit("\r", 1)[1])
        clock.advance(5)
        self.assertEqual(out.getvalue().count("\r"), 2, "nothing new, nothing drawn")

    def test_tty_shorter_line_overwrites_longer(self) -> None:
        display, out, clock = self.make(tty=True)
        display(Progress(0, 0, 10**6, 10 * 1024**4, False))
        clock.advance(1)
        display(Progress(1, 1, 1, 1, True))
        first, second = out.getvalue().split("\r")[1:]
        self.assertGreaterEqual(len(second), len(first))

    def test_tty_error_above_bar_and_finish(self) -> None:
        display, out, clock = self.make(tty=True)
        display(Progress(0, 0, 2, 2, True))
        display(SourceError(1, "dir/f\x1b[2J", "checksum mismatch"))
        display(Done(False))
        text = out.getvalue()
        self.assertIn("\rerror: [::1]:8001:.: dir/f\\x1b[2J: checksum mismatch\n[", text)
        self.assertNotIn("\x1b", text)
        self.assertTrue(text.endswith("\n"))

    def test_plain_lines_at_most_once_a_second(self) -> None:
        display, out, clock = self.make(tty=False)
        for i in range(30):  # one report every 0.25 s, from t=0 to t=7.25
            display(Progress(i, i * 10, 30, 300, i >= 4))
            clock.advance(0.25)
        display.finish()
        lines = out.getvalue().splitlines()
        self.assertNotIn("\r", out.getvalue())
        self.assertTrue(all(line.startswith("progress: ") for line in lines))
        # One line at t=0, 1, ..., 7 (each showing the latest report), then the final one.
        self.assertEqual(len(lines), 8 + 1)
        self.assertTrue(lines[0].startswith("progress: listing"))
        self.assertIn("7/30 files", lines[2])  # drawn at t=2 with the report of t=1.75
        self.assertIn("29/30 files", lines[-1])

    def test_plain_final_line_not_repeated(self) -> None:
        display, out, _ = self.make(tty=False)
        display(Progress(1, 1, 1, 1, True))
        display(Done(True))
        self.assertEqual(len(out.getvalue().splitlines()), 1)

    def test_plain_errors_and_failed_sources(self) -> None:
        display, out, _ = self.make(tty=False)
        display(SourceError(0, None, "connection refused"))
        display(SourceError(0, "", "not found"))
        display(SourceDone(0, False, 0, 0, 0, 0, 0, 0, 0.0))
        display.finish()
        self.assertEqual(
            out.getvalue().splitlines(),
            [
                "error: files.example:8000:pub: connection refused",
                "error: files.example:8000:pub: .: not found",
                "failed: files.example:8000:pub",
            ],
        )

    def test_complete(self) -> None:
        display, out, _ = self.make(tty=False)
        display(Progress(0, 0, 0, 0, True))
        display.finish()
        self.assertIn("100%", out.getvalue())
        self.assertIn("done", out.getvalue())

    def test_finish_cancels_pending_redraw(self) -> None:
        display, _, clock = self.make(tty=True)
        display(Progress(0, 0, 2, 2, True))
        display(Progress(1, 1, 2, 2, True))
        display.finish()
        self.assertEqual(clock.getDelayedCalls(), [])


class ReportTests(SynchronousTestCase):
    def result(self) -> JobResult:
        result = JobResult(sources=SOURCES, job_id="7", done_ok=False)
        # Source 0: files of 10, 20 and 30 bytes; source 1 failed before reporting.
        result.source_done[0] = SourceDone(0, True, 3, 2, 60, 1400, 4, 0, 2.0, 5)
        result.errors.append(SourceError(1, None, "connection refused"))
        result.errors.append(SourceError(0, "x", "gone"))
        return result

    def test_figures(self) -> None:
        report = build_report(SOURCES, self.result(), elapsed=4.0)
        self.assertFalse(report["ok"])
        self.assertIsNone(report["error"])
        first, second = report["sources"]
        self.assertEqual(
            {k: first[k] for k in ("host", "port", "path", "delay", "ok", "reported")},
            {"host": "files.example", "port": 8000, "path": "pub", "delay": 0.0, "ok": True,
             "reported": True},
        )  # fmt: skip
        self.assertEqual((first["files"], first["dirs"], first["bytes"]), (3, 2, 60))
        self.assertEqual(first["mean_size"], 20.0)
        self.assertAlmostEqual(first["variance"], 200 / 3)
        self.assertAlmostEqual(first["stddev"], (200 / 3) ** 0.5)
        self.assertAlmostEqual(first["cv"], (200 / 3) ** 0.5 / 20)
        self.assertEqual((first["skipped"], first["not_exported"], first["failed"]), (4, 5, 0))
        self.assertEqual((first["elapsed"], first["throughput"]), (2.0, 30.0))
        self.assertEqual(first["errors"], [{"path": "x", "message": "gone"}])
        self.assertEqual(second["path"], ".")
        self.assertEqual(second["host"], "::1")
        self.assertFalse(second["reported"])
        self.assertIsNone(second["files"])
        self.assertEqual(second["errors"], [{"path": None, "message": "connection refused"}])
        totals = report["totals"]
        self.assertEqual((totals["files"], totals["bytes"], totals["elapsed"]), (3, 60, 4.0))
        self.assertEqual(totals["throughput"], 15.0)
        self.assertEqual(totals["errors"], 2)
        self.assertEqual((totals["skipped"], totals["not_exported"]), (4, 5))

    def test_figures_stay_printable_at_the_protocols_limits(self) -> None:
        """The largest figures a server may send, over the shortest time it may report: the
        JSON stays valid (no infinity) and no cell of the table runs away."""
        m = 2**64 - 1
        result = JobResult(sources=SOURCES, job_id="7", done_ok=True)
        result.source_done[0] = SourceDone(0, True, 1, m, m, m * m, m, m, 1e-300)
        result.source_done[1] = SourceDone(1, True, 0, 0, 0, 0, 0, 0, 1e9)
        report = build_report(SOURCES, result, elapsed=0.0)
        self.assertEqual(json.loads(format_json(report))["sources"][0]["bytes"], m)
        for line in format_text(report).splitlines():
            for cell in line.split():
                self.assertLessEqual(len(cell), 24, line)

    def test_clock_is_bounded(self) -> None:
        self.assertEqual(format_clock(3723), "1:02:03")
        self.assertEqual(format_clock(9999 * 3600 + 3599), "9999:59:59")
        for seconds in (9999 * 3600 + 3600, 1e300, float("inf"), float("nan")):
            self.assertEqual(format_clock(seconds), ">9999:59:59")

    def test_totals_merge_sources_exactly(self) -> None:
        result = JobResult(sources=SOURCES, done_ok=True)
        result.source_done[0] = SourceDone(0, True, 2, 0, 10, 50, 0, 0, 1.0, 1)  # 5, 5
        result.source_done[1] = SourceDone(1, True, 2, 0, 30, 450, 0, 0, 1.0, 2)  # 15, 15
        report = build_report(SOURCES, result, elapsed=1.0)
        self.assertTrue(report["ok"])
        self.assertEqual(report["sources"][0]["variance"], 0.0)
        self.assertEqual(report["totals"]["mean_size"], 10.0)
        self.assertEqual(report["totals"]["variance"], 25.0)
        self.assertEqual(report["totals"]["stddev"], 5.0)
        self.assertEqual(report["totals"]["cv"], 0.5)

    def test_json_is_one_object(self) -> None:
        text = format_json(build_report(SOURCES, self.result(), elapsed=4.0))
        self.assertEqual(text.count("\n"), 1)
        data = json.loads(text)
        self.assertEqual(set(data), {"ok", "error", "job_id", "elapsed", "sources", "totals"})

    def test_job_not_run(self) -> None:
        report = build_report(SOURCES, None, elapsed=0.5, error="cannot reach the mirror server")
        self.assertFalse(report["ok"])
        self.assertEqual(report["error"], "cannot reach the mirror server")
        self.assertFalse(any(s["ok"] or s["reported"] for s in report["sources"]))
        json.loads(format_json(report))

    def test_text_table(self) -> None:
        text = format_text(build_report(SOURCES, self.result(), elapsed=4.0))
        rows = text.splitlines()
        self.assertEqual(rows[0], "job 7")
        self.assertTrue(rows[1].startswith("SOURCE"))
        self.assertIn("VARIANCE", rows[1])
        self.assertEqual(rows[1].split()[9:11], ["SKIPPED", "NOT-EXPORTED"])
        self.assertEqual(rows[2].split()[12:14], ["4", "5"])  # BYTES, MEAN, STDDEV: 2 words
        self.assertTrue(rows[2].startswith("files.example:8000:pub"))
        self.assertIn("60 B", rows[2])
        self.assertIn("NO RESULT", rows[3])
        self.assertTrue(rows[4].startswith("TOTAL"))
        self.assertIn("  [::1]:8001:.: connection refused", rows)
        self.assertIn("some sources FAILED", rows[-1])

    def test_units(self) -> None:
        self.assertEqual(format_bytes(0), "0 B")
        self.assertEqual(format_bytes(1023), "1023 B")
        self.assertEqual(format_bytes(1536), "1.5 KiB")
        self.assertEqual(format_bytes(5 * 1024**3), "5.0 GiB")
        self.assertEqual(format_clock(61), "1:01")
        self.assertEqual(format_clock(3725), "1:02:05")


class CommandLineTests(SynchronousTestCase):
    def parse_error(self, argv: list[str]) -> str:
        err = io.StringIO()
        with self.assertRaises(SystemExit) as cm:
            cli.parse_arguments(argv, err)
        self.assertEqual(cm.exception.code, 2)
        return err.getvalue()

    def test_argument_errors(self) -> None:
        cases = [
            ([], "missing -s"),
            (["-s", "h:1"], "missing PATH"),
            (["-s", "h:0:."], "out of range"),
            (["-s", "h:1:.:-1"], "negative DELAY"),
            (["-s", "127.0.0.1:1:.,"], "stray ','"),
            (["-s", "a" * 64 + ".example:1:."], "unknown host"),
            (["-p", "0", "-s", "127.0.0.1:1:."], "bad --port"),
            (["-p", "x"], "bad --port"),
            (["-n", "a b"], "bad --host"),
            (["--timeout", "0"], "bad --timeout"),
            (["--timeout", "nan"], "bad --timeout"),
            (["--bogus"], "not recognized"),
            (["-s", "127.0.0.1:1:.", "extra"], "unexpected argument"),
        ]
        for argv, why in cases:
            message = self.parse_error(argv)
            self.assertTrue(message.startswith("mirror-init: error: "), message)
            self.assertEqual(message.count("\n"), 1, message)
            self.assertIn(why, message)

    def test_options(self) -> None:
        options = cli.parse_arguments(
            ["-m", "[::1]", "-p", "7000", "-s", "127.0.0.1:1:a,127.0.0.1:1:b:2", "-s",
             "[::1]:2:.", "--json", "--timeout", "60"]
        )  # fmt: skip
        self.assertEqual((options["host"], options["port"]), ("::1", 7000))
        self.assertEqual(len(options["specs"]), 3)
        self.assertEqual(options["specs"][1], SourceRequest("127.0.0.1", 1, "b", 2.0))
        self.assertTrue(options["json"])
        self.assertEqual(options["timeout"], 60.0)
        defaults = cli.parse_arguments(["-s", "127.0.0.1:1:."])
        self.assertEqual((defaults["host"], defaults["port"]), ("localhost", cli.DEFAULT_PORT))

    def test_main_exits_2_without_traceback(self) -> None:
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        self.patch(sys, "stdout", io.StringIO())
        with self.assertRaises(SystemExit) as cm:
            cli.main(["-s", "h:99999:."])
        self.assertEqual(cm.exception.code, 2)
        self.assertEqual(err.getvalue().count("\n"), 1)

    def test_help_explains(self) -> None:
        text = str(cli.Options())
        for needle in ("HOST:PORT:PATH[:DELAY]", "MIRROR_DIR/HOST_PORT/PATH", "Exit status",
                       "needs an explicit delay", "--json", "--timeout", "-n, --host"):
            self.assertIn(needle, text)

    def run_cli(
        self, argv: list[str], endpoint: IStreamClientEndpoint
    ) -> tuple[Deferred[int], io.StringIO, io.StringIO, TriggerReactor]:
        reactor = TriggerReactor()
        out, err = io.StringIO(), io.StringIO()
        options = cli.parse_arguments(argv)
        d = Deferred.fromCoroutine(cli.run(reactor, options, out, err, endpoint))
        return d, out, err, reactor

    def test_success_exit_0(self) -> None:
        endpoint = LoopbackEndpoint(ScriptedServer(lines(*success_events())))
        d, out, err, reactor = self.run_cli(["-s", "127.0.0.1:1:a,[::1]:2:."], endpoint)
        endpoint.pump.flush()
        self.assertEqual(self.successResultOf(d), 0)
        self.assertIn("every source mirrored", out.getvalue())
        self.assertIn("TOTAL", out.getvalue())
        self.assertEqual(err.getvalue(), "")
        self.assertEqual(reactor.triggers, {"before": {"shutdown": []}})

    def test_failed_source_exit_1(self) -> None:
        script = lines(
            JobAccepted("1"),
            SourceError(0, "a/missing", "not found"),
            SourceDone(0, False, 0, 0, 0, 0, 0, 1, 0.1),
            Done(False),
        )
        endpoint = LoopbackEndpoint(ScriptedServer(script))
        d, out, _, _ = self.run_cli(["-s", "127.0.0.1:1:a"], endpoint)
        endpoint.pump.flush()
        self.assertEqual(self.successResultOf(d), 1)
        self.assertIn("error: 127.0.0.1:1:a: a/missing: not found", out.getvalue())
        self.assertIn("FAILED", out.getvalue())

    def test_json_mode(self) -> None:
        endpoint = LoopbackEndpoint(ScriptedServer(lines(*success_events())))
        d, out, err, _ = self.run_cli(["--json", "-s", "127.0.0.1:1:a,[::1]:2:."], endpoint)
        endpoint.pump.flush()
        self.assertEqual(self.successResultOf(d), 0)
        data = json.loads(out.getvalue())
        self.assertTrue(data["ok"])
        self.assertEqual(data["totals"]["files"], 3)
        self.assertIn("progress:", err.getvalue())

    def test_unreachable_mirror_server_exit_1(self) -> None:
        d, out, err, _ = self.run_cli(["-s", "127.0.0.1:1:a"], RefusingEndpoint())
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(err.getvalue().count("\n"), 1)
        self.assertIn("mirror-init: cannot reach the mirror server", err.getvalue())
        self.assertEqual(out.getvalue(), "")

    def test_unreachable_json_still_one_object(self) -> None:
        d, out, _, _ = self.run_cli(["--json", "-s", "127.0.0.1:1:a"], RefusingEndpoint())
        self.assertEqual(self.successResultOf(d), 1)
        data = json.loads(out.getvalue())
        self.assertFalse(data["ok"])
        self.assertIn("cannot reach", data["error"])

    def test_dropped_connection_exit_1(self) -> None:
        endpoint = LoopbackEndpoint(ScriptedServer(lines(JobAccepted("3"))))
        d, out, err, _ = self.run_cli(["-s", "127.0.0.1:1:a"], endpoint)
        endpoint.pump.flush()
        self.assertEqual(self.successResultOf(d), 1)
        self.assertIn("lost the connection to the mirror server", err.getvalue())
        self.assertIn("job 3", out.getvalue(), "what arrived is still reported")

    def test_refused_exit_1(self) -> None:
        endpoint = LoopbackEndpoint(ScriptedServer(lines(Refused("busy"))))
        d, _, err, _ = self.run_cli(["-s", "127.0.0.1:1:a"], endpoint)
        endpoint.pump.flush()
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(err.getvalue(), "mirror-init: the mirror server refused the job: busy\n")

    def assert_terminal_safe(self, *texts: str) -> None:
        for text in texts:
            # Only our own line ends; nothing a terminal would act on (ESC, CR, BEL, C1 CSI,
            # a bidi override or a line separator).
            bad = [ch for ch in text.replace("\n", "") if not ch.isprintable()]
            self.assertEqual(bad, [], text)

    def test_hostile_names_never_reach_the_terminal_raw(self) -> None:
        script = lines(
            JobAccepted("1"),
            SourceError(0, "a/" + HOSTILE, "cannot fetch " + HOSTILE),
            SourceError(0, None, "whole source: " + HOSTILE),
            SourceDone(0, False, 0, 0, 0, 0, 0, 1, 0.1),
            Done(False),
        )
        endpoint = LoopbackEndpoint(ScriptedServer(script))
        d, out, err, _ = self.run_cli(["-s", "127.0.0.1:1:a"], endpoint)
        endpoint.pump.flush()
        self.assertEqual(self.successResultOf(d), 1)
        self.assert_terminal_safe(out.getvalue(), err.getvalue())
        # Shown, not hidden: the progress line, then the report's note on the whole source.
        self.assertIn(f"error: 127.0.0.1:1:a: a/{SHOWN}: cannot fetch {SHOWN}\n", out.getvalue())
        self.assertIn(f"  127.0.0.1:1:a: whole source: {SHOWN}\n", out.getvalue())

    def test_hostile_refusal_never_reaches_the_terminal_raw(self) -> None:
        endpoint = LoopbackEndpoint(ScriptedServer(lines(Refused(HOSTILE))))
        d, out, err, _ = self.run_cli(["-s", "127.0.0.1:1:a"], endpoint)
        endpoint.pump.flush()
        self.assertEqual(self.successResultOf(d), 1)
        self.assert_terminal_safe(out.getvalue(), err.getvalue())
        self.assertEqual(err.getvalue(),
                         f"mirror-init: the mirror server refused the job: {SHOWN}\n")

    def test_hostile_names_in_json_are_ascii_and_intact(self) -> None:
        # JSON escapes C0 controls itself, but not DEL, C1 controls (U+009B is a CSI) or bidi
        # characters: the output is ASCII, and the data is still exactly what was sent.
        script = lines(JobAccepted("1"), SourceError(0, HOSTILE, HOSTILE),
                       SourceDone(0, False, 0, 0, 0, 0, 0, 1, 0.1), Done(False))
        endpoint = LoopbackEndpoint(ScriptedServer(script))
        d, out, err, _ = self.run_cli(["--json", "-s", "127.0.0.1:1:a"], endpoint)
        endpoint.pump.flush()
        self.assertEqual(self.successResultOf(d), 1)
        self.assertTrue(out.getvalue().isascii(), out.getvalue())
        self.assert_terminal_safe(out.getvalue(), err.getvalue())
        data = json.loads(out.getvalue())
        self.assertEqual(data["sources"][0]["errors"], [{"path": HOSTILE, "message": HOSTILE}])

    def test_shutdown_interrupts(self) -> None:
        endpoint = StringEndpoint()
        d, _, err, reactor = self.run_cli(["-s", "127.0.0.1:1:a"], endpoint)
        (trigger,) = reactor.triggers["before"]["shutdown"]
        trigger[0](*trigger[1], **trigger[2])
        self.assertEqual(self.successResultOf(d), 1)
        self.assertIn("interrupted", err.getvalue())
        self.assertTrue(endpoint.transport.disconnecting)
