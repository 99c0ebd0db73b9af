"""Links on the control protocol: LINKS (client), LINK-SKIPPED and LINKS-DONE (server, only
to a client that sent LINKS), mirror-init's --no-links and its report."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mirror.initiator import cli
from mirror.initiator.client import ControlSession, JobResult, ProtocolViolation
from mirror.initiator.report import build_report, format_json, format_text
from mirror.job_options import JobOptions
from mirror.wire import control
from mirror.wire.control import (
    ControlError,
    LinksDone,
    LinkSkipped,
    LinksOption,
    SourceDone,
    SourceRequest,
)
from tests.unit.test_limits import FakeService

SOURCES = [SourceRequest("files.example", 8000, "pub", 0.0), SourceRequest("::1", 8001, "", 0)]


class Codec(SynchronousTestCase):
    def test_links_option(self) -> None:
        for mode in ("safe", "skip"):
            line = control.encode_links(LinksOption(mode))
            self.assertEqual(line, b"LINKS " + mode.encode())
            self.assertEqual(control.parse_client_line(line), LinksOption(mode))
        for bad in (b"LINKS", b"LINKS all", b"LINKS safe skip", b"LINKS SAFE", b"LINKS "):
            with self.assertRaises(ControlError):
                control.parse_client_line(bad)
        with self.assertRaises(ControlError):
            control.encode_links(LinksOption("all"))

    def test_link_skipped(self) -> None:
        for event in [LinkSkipped(3, "dists/abs", "unsafe link skipped: absolute target '/etc'"),
                      LinkSkipped(0, None, "the content server does not list links"),
                      LinkSkipped(1, "-", ""), LinkSkipped(2, "a b/\u00e9\x1b", "x\ny")]:
            line = control.encode_event(event)
            self.assertTrue(line.startswith(b"LINK-SKIPPED "))
            self.assertNotIn(b"\n", line)
            self.assertEqual(control.parse_server_line(line), event)

    def test_long_message_fits_a_line(self) -> None:
        line = control.encode_event(LinkSkipped(0, "p" * 4000, "m" * 20000))
        self.assertLessEqual(len(line), control.MAX_LINE - 2)
        event = control.parse_server_line(line)
        assert isinstance(event, LinkSkipped)
        self.assertEqual(event.path, "p" * 4000)
        self.assertTrue(event.message.endswith("\u2026"))

    def test_links_done(self) -> None:
        event = LinksDone(63, 2**64 - 1, 0)
        self.assertEqual(control.encode_event(event), b"LINKS-DONE 63 18446744073709551615 0")
        self.assertEqual(control.parse_server_line(control.encode_event(event)), event)
        for bad in (b"LINKS-DONE 0 1", b"LINKS-DONE 64 1 1", b"LINKS-DONE 0 -1 1",
                    b"LINKS-DONE 0 1 18446744073709551616", b"LINKS-DONE 0 1 1 1"):
            with self.assertRaises(ControlError):
                control.parse_server_line(bad)


class RecordingService(FakeService):
    def __init__(self) -> None:
        super().__init__()
        self.modes: list[str] = []

    def submit(self, sources: object, observer: object, options: object = None,
               **settings: Any) -> Any:
        self.modes.append(settings.get("links_mode", "safe"))
        return super().submit(sources, observer, options)


class ControlPort(SynchronousTestCase):
    def connect(self) -> tuple[Any, StringTransport, RecordingService]:
        from mirror.mirror_server.control import ControlFactory

        service = RecordingService()
        factory = ControlFactory(cast(Any, service))
        addr = IPv4Address("TCP", "10.0.0.1", 1)
        proto = factory.buildProtocol(addr)
        assert proto is not None
        transport = StringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        return proto, transport, service

    def events(self, transport: StringTransport) -> list[Any]:
        return [control.parse_server_line(line) for line in transport.value().split(b"\r\n")
                if line]

    def run_of(self) -> Any:
        return SimpleNamespace(index=0, ok=True, dirs=1, skipped=0, failed=0, elapsed=1.0,
                               not_exported=0, links=SimpleNamespace(placed=2, skipped=3),
                               sync=None, job=SimpleNamespace(options=JobOptions()),
                               holder_bytes={},
                               stats=SimpleNamespace(count=0, total=0, sum_sq=0))

    def test_mode_reaches_the_job(self) -> None:
        for lines, mode in [(b"", "safe"), (b"LINKS safe\r\n", "safe"),
                            (b"LINKS skip\r\n", "skip")]:
            proto, _, service = self.connect()
            proto.dataReceived(b"SOURCE h 1 . 0\r\n" + lines + b"GO\r\n")
            self.assertEqual(service.modes, [mode])

    def test_links_twice_refused(self) -> None:
        proto, transport, service = self.connect()
        proto.dataReceived(b"SOURCE h 1 . 0\r\nLINKS safe\r\nLINKS skip\r\nGO\r\n")
        self.assertEqual(self.events(transport), [control.Refused("LINKS given twice")])
        self.assertEqual(service.modes, [])

    def test_new_lines_only_to_a_client_that_asked(self) -> None:
        for asked in (False, True):
            proto, transport, _ = self.connect()
            proto.dataReceived(b"SOURCE h 1 . 0\r\n" + (b"LINKS safe\r\n" if asked else b"")
                               + b"GO\r\n")
            proto.link_skipped(0, "abs", "unsafe link skipped: absolute target '/etc'")
            proto.source_done(self.run_of())
            kinds = [type(e) for e in self.events(transport)]
            expected = [LinkSkipped, LinksDone, SourceDone] if asked else [SourceDone]
            self.assertEqual(kinds, expected)
            if asked:
                self.assertEqual(self.events(transport)[1], LinksDone(0, 2, 3))


def new_session(links: str = "safe") -> tuple[ControlSession, list[Any]]:
    seen: list[Any] = []
    return ControlSession(SOURCES, seen.append, links=links), seen


class Session(SynchronousTestCase):
    def test_submission_names_the_mode(self) -> None:
        self.assertTrue(new_session("skip")[0].request.endswith(b"LINKS skip\r\nGO\r\n"))
        self.assertTrue(new_session()[0].request.endswith(b"LINKS safe\r\nGO\r\n"))

    def test_events_recorded(self) -> None:
        session, _ = new_session()
        session.feed(b"JOB 1\r\nLINK-SKIPPED 1 abs unsafe\r\nLINKS-DONE 1 2 3\r\n"
                     b"LINK-SKIPPED 0 - older%20server\r\n")
        result = session.result
        self.assertEqual(result.links_done, [None, LinksDone(1, 2, 3)])
        self.assertEqual(result.links_skipped, [LinkSkipped(1, "abs", "unsafe"),
                                                LinkSkipped(0, None, "older server")])

    def test_index_beyond_the_job(self) -> None:
        for line in (b"LINK-SKIPPED 2 a b\r\n", b"LINKS-DONE 2 0 0\r\n"):
            session, _ = new_session()
            with self.assertRaises(ProtocolViolation):
                session.feed(line)


class Report(SynchronousTestCase):
    def result(self) -> JobResult:
        result = JobResult(sources=SOURCES, job_id="7", done_ok=True)
        result.source_done[0] = SourceDone(0, True, 0, 2, 0, 0, 1, 0, 2.0, 0)
        result.source_done[1] = SourceDone(1, True, 0, 0, 0, 0, 0, 0, 2.0, 0)
        result.links_done[0] = LinksDone(0, 4, 2)
        result.links_skipped += [LinkSkipped(0, "abs", "unsafe link skipped: absolute target "
                                                       "'/etc'"),
                                 LinkSkipped(0, "e\x1b", "unsafe link skipped: leads outside")]
        return result

    def test_json(self) -> None:
        report = json.loads(format_json(build_report(SOURCES, self.result(), 3.0)))
        first, second = report["sources"]
        self.assertEqual((first["links"], first["links_skipped"]), (4, 2))
        self.assertEqual(first["skipped_links"][0],
                         {"path": "abs", "message": "unsafe link skipped: absolute target "
                                                    "'/etc'"})
        self.assertEqual((second["links"], second["links_skipped"]), (None, None))
        self.assertEqual(second["skipped_links"], [])
        self.assertEqual((report["totals"]["links"], report["totals"]["links_skipped"]), (4, 2))
        self.assertTrue(report["ok"])  # a skipped link is not a failure

    def test_text(self) -> None:
        text = format_text(build_report(SOURCES, self.result(), 3.0))
        self.assertIn("links of files.example:8000:pub: 4 placed, 2 skipped\n"
                      "  abs: unsafe link skipped: absolute target '/etc'\n"
                      "  e\\x1b: unsafe link skipped: leads outside\n", text)
        self.assertNotIn("links of [::1]", text)
        self.assertNotIn("\x1b", text)

    def test_text_without_links(self) -> None:
        result = self.result()
        result.links_done[0] = None
        result.links_skipped.clear()
        self.assertNotIn("links of", format_text(build_report(SOURCES, result, 3.0)))


class CommandLine(SynchronousTestCase):
    def test_no_links(self) -> None:
        self.assertEqual(cli.parse_arguments(["-s", "127.0.0.1:1:."]).links, "safe")
        self.assertEqual(cli.parse_arguments(["-s", "127.0.0.1:1:.", "--no-links"]).links,
                         "skip")

    def test_help_mentions_it(self) -> None:
        out = io.StringIO()
        cli.build_parser().print_help(out)
        self.assertIn("--no-links", out.getvalue())
        self.assertIn("--safe-links", out.getvalue())
