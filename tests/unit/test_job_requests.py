"""mirror-init's --detach, --attach, --jobs and --cancel, and their control lines (issue 12),
without a server: codec round trips, sessions fed bytes, the command line on socket pairs."""

from __future__ import annotations

import io
import socket
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mirror.initiator import cli
from mirror.initiator.client import (
    AttachSession,
    ControlSession,
    JobRefused,
    ProtocolViolation,
    cancel_job,
    list_jobs,
)
from mirror.wire.control import (
    Attach,
    Cancel,
    Cancelled,
    ControlError,
    Done,
    JobAccepted,
    JobState,
    LinksDone,
    ListJobs,
    Progress,
    Refused,
    Resumed,
    SourceDone,
    SourceError,
    SourceHolder,
    SourceRequest,
    SourceSync,
    Spec,
    encode_event,
    encode_request,
    parse_client_line,
    parse_server_line,
)

SOURCE = SourceRequest("127.0.0.1", 9000, "a b", 0.5)


def lines(*events: Any) -> bytes:
    return b"".join(encode_event(e) + b"\r\n" for e in events)


class Codec(SynchronousTestCase):
    def test_requests_round_trip(self) -> None:
        requests: list[tuple[Any, bytes]] = [
            (Attach("12"), b"ATTACH 12"), (Cancel("7"), b"CANCEL 7"), (ListJobs(), b"JOBS")]
        for message, line in requests:
            self.assertEqual(encode_request(message), line)
            self.assertEqual(parse_client_line(line), message)

    def test_events_round_trip(self) -> None:
        events: list[tuple[Any, bytes]] = [
            (Spec(1, SOURCE), b"SPEC 1 127.0.0.1 9000 a%20b 0.5"),
            (Resumed(2), b"RESUMED 2"),
            (JobState("3", "cancelled", 1700000000.5, 4, 5, "h:1:.,h:1:a"),
             b"JOB-STATE 3 cancelled 1700000000.5 4 5 h%3A1%3A.%2Ch%3A1%3Aa"),
            (Cancelled("3"), b"CANCELLED 3"),
        ]
        for event, line in events:
            self.assertEqual(encode_event(event), line)
            self.assertEqual(parse_server_line(line), event)

    def test_bad_lines_refused(self) -> None:
        for line in [b"ATTACH", b"ATTACH 1 2", b"ATTACH \xff", b"JOBS 1", b"CANCEL ",
                     b"SPEC 64 h 1 . 0", b"SPEC 0 h 0 . 0", b"RESUMED -1",
                     b"JOB-STATE 1 sleeping 0 0 0 x", b"JOB-STATE 1 ok nan 0 0 x"]:
            with self.assertRaises(ControlError, msg=line):
                (parse_client_line if line.split(b" ")[0] in (b"ATTACH", b"JOBS", b"CANCEL")
                 else parse_server_line)(line)


class Sessions(SynchronousTestCase):
    def test_attach_learns_the_sources_from_spec_lines(self) -> None:
        seen: list[Any] = []
        session = AttachSession("9", seen.append)
        self.assertEqual(session.request, b"ATTACH 9\r\n")
        session.feed(lines(JobAccepted("9"), Spec(0, SOURCE), Resumed(1),
                           SourceError(0, "x", "gone"), Progress(1, 2, 3, 4, True),
                           SourceDone(0, True, 1, 0, 2, 4, 5, 0, 1.0), Done(True)))
        self.assertTrue(session.finished)
        result = session.result
        self.assertEqual(result.sources, [SOURCE])
        self.assertEqual(result.job_id, "9")
        self.assertEqual(result.resumed, 1)
        self.assertTrue(result.ok)
        self.assertEqual(len(seen), 7)

    def test_attach_takes_every_per_source_event(self) -> None:
        # Each per-source list grows with the SPEC lines: an attached job's SOURCE-SYNC,
        # LINKS-DONE and SOURCE-HOLDER land in place (the last one used to raise IndexError).
        session = AttachSession("9", lambda e: None)
        session.feed(lines(JobAccepted("9"), Spec(0, SOURCE), Spec(1, SOURCE),
                           SourceSync(1, 2, 0, 0, "off"), LinksDone(1, 3, 0),
                           SourceHolder(1, "10.0.0.2:9000", 42)))
        result = session.result
        self.assertEqual(result.source_sync, [None, SourceSync(1, 2, 0, 0, "off")])
        self.assertEqual(result.links_done, [None, LinksDone(1, 3, 0)])
        self.assertEqual(result.source_holders, [{}, {"10.0.0.2:9000": 42}])

    def test_attach_refuses_events_before_the_specs(self) -> None:
        session = AttachSession("9", lambda e: None)
        with self.assertRaises(ProtocolViolation):
            session.feed(lines(JobAccepted("9"), SourceError(0, None, "x")))
        session = AttachSession("9", lambda e: None)
        with self.assertRaises(ProtocolViolation):
            session.feed(lines(JobAccepted("9"), Spec(1, SOURCE)))

    def test_submitted_job_refuses_attach_only_events(self) -> None:
        session = ControlSession([SOURCE], lambda e: None)
        with self.assertRaises(ProtocolViolation):
            session.feed(lines(JobAccepted("1"), Spec(0, SOURCE)))

    def test_detached_session_ends_at_the_job_id(self) -> None:
        session = ControlSession([SOURCE], lambda e: None, detach=True)
        session.feed(lines(JobAccepted("41")))
        self.assertTrue(session.finished)
        self.assertEqual(session.result.job_id, "41")


class Scripted:
    """Socket pairs with a scripted answer each, one per connection mirror-init opens."""

    def __init__(self, *scripts: bytes) -> None:
        self.scripts = list(scripts)
        self.servers: list[socket.socket] = []

    def opener(self, host: str, port: int, timeout: float | None) -> socket.socket:
        a, b = socket.socketpair()
        b.settimeout(10)
        b.sendall(self.scripts.pop(0))
        b.shutdown(socket.SHUT_WR)
        self.servers.append(b)
        return a

    def sent(self, index: int) -> bytes:
        data = b""
        while chunk := self.servers[index].recv(65536):
            data += chunk
        return data


class Requests(SynchronousTestCase):
    def test_list_jobs(self) -> None:
        state = JobState("3", "running", 1700000000.0, 4, 5, "h:1:.")
        server = Scripted(lines(state, Done(True)))
        self.assertEqual(list_jobs("m", 1, server.opener), [state])
        self.assertEqual(server.sent(0), b"JOBS\r\n")

    def test_cancel(self) -> None:
        server = Scripted(lines(Cancelled("3")))
        cancel_job("m", 1, "3", server.opener)
        self.assertEqual(server.sent(0), b"CANCEL 3\r\n")

    def test_cancel_refused(self) -> None:
        server = Scripted(lines(Refused("no job 3")))
        with self.assertRaises(JobRefused) as cm:
            cancel_job("m", 1, "3", server.opener)
        self.assertEqual(cm.exception.reason, "no job 3")


class CommandLine(SynchronousTestCase):
    def run_cli(self, argv: list[str], opener: Any) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        options = cli.parse_arguments(argv, stderr=err)
        status = cli.run(options, out, err, opener)
        return status, out.getvalue(), err.getvalue()

    def usage_error(self, argv: list[str], text: str) -> None:
        err = io.StringIO()
        with self.assertRaises(SystemExit) as cm:
            cli.parse_arguments(argv, stderr=err)
        self.assertEqual(cm.exception.code, 2)
        self.assertIn(text, err.getvalue())

    def test_option_combinations(self) -> None:
        self.usage_error(["--attach", "1", "-s", "127.0.0.1:1:."], "--attach takes no SPEC")
        self.usage_error(["--jobs", "--cancel", "1"], "cannot be used together")
        self.usage_error(["--detach", "--attach", "1"], "cannot be used together")
        self.usage_error(["--cancel", "a b"], "bad --cancel")
        self.usage_error(["--detach"], "missing -s/--sources")
        # A new job's options do not apply to a job already submitted.
        self.usage_error(["--attach", "1", "--delete"], "--delete is for a new job")
        self.usage_error(["--cancel", "1", "--bwlimit", "1M"], "--bwlimit is for a new job")
        self.usage_error(["--jobs", "--exclude", "*.o"], "--include/--exclude is for a new")
        self.usage_error(["--attach", "1", "--no-links"], "--no-links is for a new job")

    def test_detach_prints_the_id_alone(self) -> None:
        server = Scripted(lines(JobAccepted("17"), Progress(0, 0, 0, 0, False)))
        status, out, _ = self.run_cli(["--detach", "-s", "127.0.0.1:1:."], server.opener)
        self.assertEqual((status, out), (0, "17\n"))

    def test_attach_reports_like_a_follower(self) -> None:
        server = Scripted(lines(JobAccepted("17"), Spec(0, SOURCE),
                                SourceDone(0, False, 1, 0, 2, 4, 5, 1, 1.0), Done(False)))
        status, out, _ = self.run_cli(["--attach", "17"], server.opener)
        self.assertEqual(status, 1)
        self.assertIn("job 17", out)
        self.assertIn("127.0.0.1:9000:a b", out)
        self.assertEqual(server.sent(0), b"ATTACH 17\r\n")

    def test_jobs_table(self) -> None:
        server = Scripted(lines(JobState("3", "ok", 1700000000.0, 4, 2048, "h:1:."),
                                Done(True)))
        status, out, _ = self.run_cli(["--jobs"], server.opener)
        self.assertEqual(status, 0)
        header, row = out.splitlines()
        self.assertEqual(header.split(), ["ID", "STATE", "SUBMITTED", "FILES", "BYTES", "SPECS"])
        self.assertEqual(row.split()[:2], ["3", "ok"])
        self.assertIn("2.0 KiB", row)

    def test_cancel_unknown(self) -> None:
        server = Scripted(lines(Refused("no job 3")))
        status, _, err = self.run_cli(["--cancel", "3"], server.opener)
        self.assertEqual((status, err), (1, "mirror-init: cannot cancel job 3: no job 3\n"))
