"""mirror-init: the control client, the progress display, the report and the command line.

The client runs on a blocking socket: these tests drive it over a socket pair whose other end
the test writes a server's script into (and reads the submission from), or feed its
`ControlSession` bytes directly, with a fake clock for every deadline.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mirror.initiator import cli, client
from mirror.initiator.client import (
    CONNECT_TIMEOUT,
    ConnectionLostBeforeDone,
    ControlSession,
    JobInterrupted,
    JobRefused,
    JobResult,
    JobTimeout,
    MirrorServerUnreachable,
    ProtocolViolation,
    connect,
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
    MAX_LINE,
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
SUBMISSION = (b"SOURCE files.example 8000 pub 0.0\r\nSOURCE ::1 8001 . 0.5\r\nLINKS safe\r\n"
              b"GO\r\n")


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


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def new_session(sources: list[SourceRequest] = SOURCES) -> tuple[ControlSession, list[Any]]:
    seen: list[Any] = []
    return ControlSession(sources, seen.append), seen


class SessionTests(SynchronousTestCase):
    """The protocol itself: bytes in, events and a result (or one error) out."""

    def test_submission(self) -> None:
        session, _ = new_session()
        self.assertEqual(session.request, SUBMISSION)

    def test_success(self) -> None:
        session, seen = new_session()
        events = success_events()
        session.feed(lines(*events))
        self.assertEqual(seen, events)
        self.assertTrue(session.finished)
        result = session.result
        self.assertTrue(result.ok)
        self.assertEqual(result.job_id, "7")
        self.assertEqual(result.source_done, [events[3], events[4]])
        self.assertEqual(result.last_progress, events[2])

    def test_lines_split_anywhere_and_bare_lf(self) -> None:
        session, seen = new_session()
        data = b"JOB 7\nPROGRESS 1 2 3 4 0\r\nDONE failed\n"
        for i in range(len(data)):
            session.feed(data[i : i + 1])
        self.assertEqual(seen, [JobAccepted("7"), Progress(1, 2, 3, 4, False), Done(False)])
        self.assertTrue(session.finished)
        self.assertFalse(session.result.ok)

    def test_nothing_after_done(self) -> None:
        session, seen = new_session()
        session.feed(lines(Done(True)) + b"garbage\r\n" + b"x" * (2 * MAX_LINE))
        self.assertEqual(seen, [Done(True)])
        session.end_of_stream()  # the close after DONE is normal

    def test_absurd_numbers_from_the_server_are_a_protocol_violation(self) -> None:
        """An elapsed time hundreds of digits long is refused, never printed (issue 7)."""
        session, seen = new_session()
        with self.assertRaises(ProtocolViolation) as cm:
            session.feed(b"JOB 7\r\nSOURCE-DONE 0 ok 0 0 0 0 0 0 " + b"9" * 300 + b" 0\r\n")
        self.assertIn("elapsed", str(cm.exception))
        self.assertLess(len(str(cm.exception)), 300)
        self.assertEqual(seen, [JobAccepted("7")])

    def test_source_failure_makes_result_not_ok(self) -> None:
        session, _ = new_session()
        session.feed(
            lines(
                SourceError(1, None, "connection refused"),
                SourceDone(0, True, 0, 0, 0, 0, 0, 0, 0.1),
                SourceDone(1, False, 0, 0, 0, 0, 0, 0, 0.1),
                Done(False),
            )
        )
        result = session.result
        self.assertFalse(result.ok)
        self.assertEqual(result.errors, [SourceError(1, None, "connection refused")])
        self.assertTrue(result.source_ok(0))
        self.assertFalse(result.source_ok(1))

    def test_done_ok_without_every_source_done_is_not_ok(self) -> None:
        session, _ = new_session()
        session.feed(lines(SourceDone(0, True, 0, 0, 0, 0, 0, 0, 0.1), Done(True)))
        self.assertTrue(session.finished)
        self.assertFalse(session.result.ok)

    def test_refused(self) -> None:
        session, seen = new_session()
        with self.assertRaises(JobRefused) as cm:
            session.feed(lines(Refused("too many\nsources\x1b[2J")))
        self.assertEqual(seen, [Refused("too many\nsources\x1b[2J")])
        self.assertEqual(
            str(cm.exception), "the mirror server refused the job: too many\\nsources\\x1b[2J"
        )

    def test_malformed_line(self) -> None:
        session, seen = new_session()
        with self.assertRaises(ProtocolViolation) as cm:
            session.feed(b"JOB 7\r\nPROGRESS 1 2 3\r\nDONE ok\r\n")
        self.assertEqual(seen, [JobAccepted("7")])
        self.assertIn("PROGRESS takes 5 fields", str(cm.exception))
        assert cm.exception.result is not None
        self.assertEqual(cm.exception.result.job_id, "7")

    def test_index_beyond_the_job(self) -> None:
        session, _ = new_session()
        self.assertRaises(ProtocolViolation, session.feed, lines(SourceError(2, None, "m")))

    def test_second_source_done(self) -> None:
        session, _ = new_session()
        self.assertRaises(ProtocolViolation, session.feed,
                          lines(*[SourceDone(0, True, 0, 0, 0, 0, 0, 0, 0.1)] * 2))

    def test_line_too_long(self) -> None:
        session, _ = new_session()
        with self.assertRaises(ProtocolViolation) as cm:
            session.feed(b"JOB " + b"x" * 20000)
        self.assertIn("over 16384 bytes", str(cm.exception))

    def test_line_too_long_with_its_end(self) -> None:
        """A complete over-long line is refused too, not parsed."""
        session, seen = new_session()
        self.assertRaises(ProtocolViolation, session.feed,
                          b"REFUSED " + b"x" * MAX_LINE + b"\r\nDONE ok\r\n")
        self.assertEqual(seen, [])

    def test_line_length_limit_is_exact(self) -> None:
        """Up to MAX_LINE bytes before the "\\n" are a line, even arriving in pieces; one
        more byte is refused, however it arrives."""
        session, seen = new_session()
        line = b"REFUSED " + b"x" * (MAX_LINE - len(b"REFUSED "))
        session.feed(line[:100])
        session.feed(line[100:])
        self.assertRaises(JobRefused, session.feed, b"\n")
        session, _ = new_session()
        session.feed(line)
        self.assertRaises(ProtocolViolation, session.feed, b"x")

    def test_connection_lost_before_done(self) -> None:
        session, _ = new_session()
        session.feed(lines(JobAccepted("7"), SourceDone(0, True, 0, 0, 0, 0, 0, 0, 0.1)))
        with self.assertRaises(ConnectionLostBeforeDone) as cm:
            session.end_of_stream("reset by peer")
        self.assertIn("before the job finished: reset by peer", str(cm.exception))
        assert cm.exception.result is not None
        self.assertIsNotNone(cm.exception.result.source_done[0])

    def test_broken_event_handler_does_not_lose_the_job(self) -> None:
        def broken(event: Any) -> None:
            raise RuntimeError("display bug")

        bugs: list[str] = []
        session = ControlSession(SOURCES[:1], broken, report_bug=bugs.append)
        session.feed(lines(SourceDone(0, True, 0, 0, 0, 0, 0, 0, 0.1), Done(True)))
        self.assertTrue(session.finished)
        self.assertTrue(session.result.ok)
        self.assertEqual(len(bugs), 2)
        self.assertIn("display bug", bugs[0])

    def test_errors_beyond_the_limit_are_counted_not_kept(self) -> None:
        self.patch(client, "MAX_KEPT_ERRORS", 2)
        session, seen = new_session()
        session.feed(lines(*[SourceError(0, f"f{i}", "gone") for i in range(5)]))
        self.assertEqual(len(seen), 5, "each is still shown")
        self.assertEqual([e.path for e in session.result.errors], ["f0", "f1"])
        self.assertEqual(session.result.errors_dropped, 3)

    def test_source_count_checked(self) -> None:
        self.assertRaises(ValueError, ControlSession, [], print)
        self.assertRaises(ValueError, ControlSession, SOURCES[:1] * 65, print)


class ScriptedServer:
    """The server end of a socket pair: its script is written before the client starts
    (the socket buffers hold it), and what the client sent is read back afterwards."""

    def __init__(self, script: bytes, close: bool = True, sock: type[socket.socket] = socket.socket
                 ) -> None:
        a, b = socket.socketpair()
        self.client = sock(fileno=a.detach())
        self.server = b
        self.server.settimeout(10)  # a bound: a test fails rather than hangs
        self.server.sendall(script)
        if close:
            self.server.shutdown(socket.SHUT_WR)
        self.opened: list[tuple[str, int, float | None]] = []

    def opener(self, host: str, port: int, timeout: float | None) -> socket.socket:
        self.opened.append((host, port, timeout))
        return self.client

    def received(self) -> list[bytes]:
        """Every line the client sent, up to its close."""
        data = b""
        while chunk := self.server.recv(65536):
            data += chunk
        self.server.close()
        return data.split(b"\r\n")[:-1]

    def client_closed(self) -> bool:
        return self.client.fileno() == -1


class InterruptedSocket(socket.socket):
    """Ctrl-C while mirror-init waits for the second read."""

    reads = 0

    def recv(self, size: int, flags: int = 0) -> bytes:
        self.reads += 1
        if self.reads > 1:
            raise KeyboardInterrupt
        return super().recv(size, flags)


def closed_port() -> int:
    """A loopback port that refuses connections: bound, never listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class SubmitJobTests(SynchronousTestCase):
    def test_whole_exchange(self) -> None:
        server = ScriptedServer(lines(*success_events()))
        seen: list[Any] = []
        result = submit_job("mirror.example", 7000, SOURCES, seen.append, opener=server.opener)
        self.assertTrue(result.ok)
        self.assertEqual(seen, success_events())
        self.assertEqual(server.opened, [("mirror.example", 7000, CONNECT_TIMEOUT)])
        self.assertEqual(server.received(), SUBMISSION.split(b"\r\n")[:-1])
        self.assertTrue(server.client_closed())

    def test_server_drops_connection(self) -> None:
        server = ScriptedServer(lines(JobAccepted("1"), Progress(0, 0, 1, 1, False)))
        with self.assertRaises(ConnectionLostBeforeDone) as cm:
            submit_job("m", 1, SOURCES, lambda e: None, opener=server.opener)
        self.assertIn("it closed the connection", str(cm.exception))
        assert cm.exception.result is not None
        self.assertEqual(cm.exception.result.job_id, "1")
        self.assertTrue(server.client_closed())

    def test_refused_closes(self) -> None:
        server = ScriptedServer(lines(Refused("busy")), close=False)
        self.assertRaises(JobRefused, submit_job, "m", 1, SOURCES, lambda e: None,
                          opener=server.opener)
        self.assertTrue(server.client_closed())

    def test_unreachable(self) -> None:
        with self.assertRaises(MirrorServerUnreachable) as cm:
            submit_job("127.0.0.1", closed_port(), SOURCES, lambda e: None)
        self.assertIn("cannot reach the mirror server", str(cm.exception))
        self.assertIn("refused", str(cm.exception))
        self.assertIsNone(cm.exception.result)

    def test_timeout(self) -> None:
        clock = FakeClock()

        def on_event(event: Any) -> None:
            clock.advance(30)

        server = ScriptedServer(lines(JobAccepted("9")), close=False)
        with self.assertRaises(JobTimeout) as cm:
            submit_job("m", 1, SOURCES, on_event, timeout=30, clock=clock, opener=server.opener)
        self.assertIn("within 30 seconds", str(cm.exception))
        assert cm.exception.result is not None
        self.assertEqual(cm.exception.result.job_id, "9", "what arrived is kept")
        self.assertTrue(server.client_closed())

    def test_no_timeout_before_the_deadline(self) -> None:
        clock = FakeClock()
        server = ScriptedServer(lines(JobAccepted("9")), close=False)

        def on_event(event: Any) -> None:
            if isinstance(event, JobAccepted):
                clock.advance(29.9)
                server.server.sendall(lines(Done(True)))

        result = submit_job("m", 1, SOURCES[:1], on_event, timeout=30, clock=clock,
                            opener=server.opener)
        self.assertTrue(result.done_ok)

    def test_connect_within_the_timeout(self) -> None:
        clock = FakeClock()
        server = ScriptedServer(lines(Done(True)))
        submit_job("m", 1, SOURCES, lambda e: None, timeout=5, clock=clock, opener=server.opener)
        self.assertEqual(server.opened, [("m", 1, 5.0)])

    def test_timeout_while_connecting(self) -> None:
        clock = FakeClock()

        def hanging(host: str, port: int, timeout: float | None) -> socket.socket:
            assert timeout is not None
            clock.advance(timeout)
            raise MirrorServerUnreachable("cannot reach the mirror server: timed out")

        with self.assertRaises(JobTimeout) as cm:
            submit_job("m", 1, SOURCES, lambda e: None, timeout=5, clock=clock, opener=hanging)
        self.assertIsNone(cm.exception.result)

    def test_interrupt_drops_connection(self) -> None:
        server = ScriptedServer(lines(JobAccepted("4")), close=False, sock=InterruptedSocket)
        with self.assertRaises(JobInterrupted) as cm:
            submit_job("m", 1, SOURCES, lambda e: None, opener=server.opener)
        self.assertEqual(str(cm.exception), "interrupted")
        assert cm.exception.result is not None
        self.assertEqual(cm.exception.result.job_id, "4")
        self.assertTrue(server.client_closed())

    def test_interrupt_while_connecting(self) -> None:
        def interrupted(host: str, port: int, timeout: float | None) -> socket.socket:
            raise KeyboardInterrupt

        with self.assertRaises(JobInterrupted) as cm:
            submit_job("m", 1, SOURCES, lambda e: None, opener=interrupted)
        self.assertIsNone(cm.exception.result)

    def test_held_back_redraw_happens_while_the_server_is_silent(self) -> None:
        """`tick` runs once `wake` says so, though no byte arrives meanwhile."""
        server = ScriptedServer(lines(JobAccepted("1")), close=False)
        ticks: list[bool] = []
        woken: list[bool] = []

        def wake() -> float | None:
            return 0.0 if not woken else None  # due at once (the clock is far past 0)

        def tick() -> None:
            ticks.append(True)
            if not woken and len(ticks) > 1:  # the first tick follows the JOB line
                woken.append(True)
                server.server.sendall(lines(Done(True)))

        result = submit_job("m", 1, SOURCES, lambda e: None, timeout=30, wake=wake, tick=tick,
                            opener=server.opener)
        self.assertTrue(result.done_ok)
        self.assertTrue(woken)


class StartupTests(SynchronousTestCase):
    def test_mirror_init_imports_no_twisted(self) -> None:
        """Importing Twisted cost more than a whole no-op job (bench/NOTES.md): nothing
        mirror-init loads may import it, directly or through a shared module; nor the TLS
        libraries (``ssl`` only once a pin asks for TLS)."""
        code = (
            "import sys, mirror.initiator.cli\n"
            "print(' '.join(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope',"
            " 'cryptography', 'OpenSSL', 'ssl', '_ssl') or m == 'importlib.metadata'))"
        )
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, timeout=60, env=env).stdout
        self.assertEqual(out.strip(), "")


class DisplayClock(FakeClock):
    """Advancing it does what mirror-init's loop does when the display's wake-up time has
    come: it polls the display."""

    display: ProgressDisplay | None = None

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        if self.display is not None:
            wake = self.display.wake_at()
            if wake is not None and self.now >= wake:
                self.display.poll()


class ProgressTests(SynchronousTestCase):
    def make(self, tty: bool) -> tuple[ProgressDisplay, io.StringIO, DisplayClock]:
        out, clock = io.StringIO(), DisplayClock()
        clock.display = ProgressDisplay(out, SOURCES, clock=clock, tty=tty)
        return clock.display, out, clock

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
        self.assertEqual(display.wake_at(), clock.now + 0.1)
        display.finish()
        self.assertIsNone(display.wake_at())


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
        self.assertEqual(set(data), {"ok", "error", "job_id", "elapsed", "resumed", "cancelled",
                                     "dry_run", "sources", "totals"})

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
        self.assertEqual((options.host, options.port), ("::1", 7000))
        self.assertEqual(len(options.specs), 3)
        self.assertEqual(options.specs[1], SourceRequest("127.0.0.1", 1, "b", 2.0))
        self.assertTrue(options.json)
        self.assertEqual(options.timeout, 60.0)
        defaults = cli.parse_arguments(["-s", "127.0.0.1:1:."])
        self.assertEqual((defaults.host, defaults.port), ("localhost", cli.DEFAULT_PORT))
        self.assertIsNone(defaults.timeout)
        self.assertFalse(defaults.json)
        for argv in (["--host=::1", "-p7000"], ["-n", "::1", "--port", "7000"]):
            options = cli.parse_arguments([*argv, "-s", "127.0.0.1:1:."])
            self.assertEqual((options.host, options.port), ("::1", 7000))

    def test_main_exits_2_without_traceback(self) -> None:
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        self.patch(sys, "stdout", io.StringIO())
        with self.assertRaises(SystemExit) as cm:
            cli.main(["-s", "h:99999:."])
        self.assertEqual(cm.exception.code, 2)
        self.assertEqual(err.getvalue().count("\n"), 1)

    def test_help_explains(self) -> None:
        text = cli.build_parser().format_help()
        for needle in ("HOST:PORT:PATH[:DELAY]", "MIRROR_DIR/HOST_PORT/PATH", "Exit status",
                       "needs an explicit delay", "--json", "--timeout", "-n, --host",
                       "interrupted"):
            self.assertIn(needle, text)

    def run_cli(
        self, argv: list[str], opener: cli.Opener
    ) -> tuple[int, io.StringIO, io.StringIO]:
        out, err = io.StringIO(), io.StringIO()
        options = cli.parse_arguments(argv)
        status = cli.run(options, out, err, opener)
        return status, out, err

    def test_success_exit_0(self) -> None:
        server = ScriptedServer(lines(*success_events()))
        status, out, err = self.run_cli(["-s", "127.0.0.1:1:a,[::1]:2:."], server.opener)
        self.assertEqual(status, 0)
        self.assertIn("every source mirrored", out.getvalue())
        self.assertIn("TOTAL", out.getvalue())
        self.assertEqual(err.getvalue(), "")

    def test_failed_source_exit_1(self) -> None:
        script = lines(
            JobAccepted("1"),
            SourceError(0, "a/missing", "not found"),
            SourceDone(0, False, 0, 0, 0, 0, 0, 1, 0.1),
            Done(False),
        )
        server = ScriptedServer(script)
        status, out, _ = self.run_cli(["-s", "127.0.0.1:1:a"], server.opener)
        self.assertEqual(status, 1)
        self.assertIn("error: 127.0.0.1:1:a: a/missing: not found", out.getvalue())
        self.assertIn("FAILED", out.getvalue())

    def test_json_mode(self) -> None:
        server = ScriptedServer(lines(*success_events()))
        status, out, err = self.run_cli(["--json", "-s", "127.0.0.1:1:a,[::1]:2:."], server.opener)
        self.assertEqual(status, 0)
        data = json.loads(out.getvalue())
        self.assertTrue(data["ok"])
        self.assertEqual(data["totals"]["files"], 3)
        self.assertIn("progress:", err.getvalue())

    def test_unreachable_mirror_server_exit_1(self) -> None:
        status, out, err = self.run_cli(["-s", "127.0.0.1:1:a"], connect_refused)
        self.assertEqual(status, 1)
        self.assertEqual(err.getvalue().count("\n"), 1)
        self.assertIn("mirror-init: cannot reach the mirror server", err.getvalue())
        self.assertEqual(out.getvalue(), "")

    def test_unreachable_json_still_one_object(self) -> None:
        status, out, _ = self.run_cli(["--json", "-s", "127.0.0.1:1:a"], connect_refused)
        self.assertEqual(status, 1)
        data = json.loads(out.getvalue())
        self.assertFalse(data["ok"])
        self.assertIn("cannot reach", data["error"])

    def test_dropped_connection_exit_1(self) -> None:
        server = ScriptedServer(lines(JobAccepted("3")))
        status, out, err = self.run_cli(["-s", "127.0.0.1:1:a"], server.opener)
        self.assertEqual(status, 1)
        self.assertIn("lost the connection to the mirror server", err.getvalue())
        self.assertIn("job 3", out.getvalue(), "what arrived is still reported")

    def test_refused_exit_1(self) -> None:
        server = ScriptedServer(lines(Refused("busy")))
        status, _, err = self.run_cli(["-s", "127.0.0.1:1:a"], server.opener)
        self.assertEqual(status, 1)
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
        server = ScriptedServer(script)
        status, out, err = self.run_cli(["-s", "127.0.0.1:1:a"], server.opener)
        self.assertEqual(status, 1)
        self.assert_terminal_safe(out.getvalue(), err.getvalue())
        # Shown, not hidden: the progress line, then the report's note on the whole source.
        self.assertIn(f"error: 127.0.0.1:1:a: a/{SHOWN}: cannot fetch {SHOWN}\n", out.getvalue())
        self.assertIn(f"  127.0.0.1:1:a: whole source: {SHOWN}\n", out.getvalue())

    def test_hostile_refusal_never_reaches_the_terminal_raw(self) -> None:
        server = ScriptedServer(lines(Refused(HOSTILE)))
        status, out, err = self.run_cli(["-s", "127.0.0.1:1:a"], server.opener)
        self.assertEqual(status, 1)
        self.assert_terminal_safe(out.getvalue(), err.getvalue())
        self.assertEqual(err.getvalue(),
                         f"mirror-init: the mirror server refused the job: {SHOWN}\n")

    def test_hostile_names_in_json_are_ascii_and_intact(self) -> None:
        # JSON escapes C0 controls itself, but not DEL, C1 controls (U+009B is a CSI) or bidi
        # characters: the output is ASCII, and the data is still exactly what was sent.
        script = lines(JobAccepted("1"), SourceError(0, HOSTILE, HOSTILE),
                       SourceDone(0, False, 0, 0, 0, 0, 0, 1, 0.1), Done(False))
        server = ScriptedServer(script)
        status, out, err = self.run_cli(["--json", "-s", "127.0.0.1:1:a"], server.opener)
        self.assertEqual(status, 1)
        self.assertTrue(out.getvalue().isascii(), out.getvalue())
        self.assert_terminal_safe(out.getvalue(), err.getvalue())
        data = json.loads(out.getvalue())
        self.assertEqual(data["sources"][0]["errors"], [{"path": HOSTILE, "message": HOSTILE}])

    def test_interrupt_exit_130(self) -> None:
        server = ScriptedServer(lines(JobAccepted("5")), close=False, sock=InterruptedSocket)
        status, out, err = self.run_cli(["-s", "127.0.0.1:1:a"], server.opener)
        self.assertEqual(status, 130)
        self.assertEqual(err.getvalue(), "mirror-init: interrupted\n")
        self.assertIn("job 5", out.getvalue(), "what arrived is still reported")
        self.assertTrue(server.client_closed())

    def test_interrupt_json(self) -> None:
        server = ScriptedServer(lines(JobAccepted("5")), close=False, sock=InterruptedSocket)
        status, out, _ = self.run_cli(["--json", "-s", "127.0.0.1:1:a"], server.opener)
        self.assertEqual(status, 130)
        self.assertEqual(json.loads(out.getvalue())["error"], "interrupted")


def connect_refused(host: str, port: int, timeout: float | None) -> socket.socket:
    """Connect as mirror-init does, to a port where nothing listens."""
    return connect("127.0.0.1", closed_port(), timeout)
