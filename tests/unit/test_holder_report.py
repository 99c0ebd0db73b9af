"""Multi-source bytes per holder, from the mirror server to mirror-init's report:
SOURCE-HOLDER lines, the client's checks, the text and JSON report; and the flags."""

from __future__ import annotations

import io
import json
import os

from twisted.trial.unittest import SynchronousTestCase

from mirror.initiator import cli
from mirror.initiator.client import ProtocolViolation
from mirror.initiator.report import build_report, format_json, format_text
from mirror.job_options import JobOptions, options_from_lines, options_lines
from mirror.mirror_server import tap
from mirror.wire import control
from mirror.wire.control import ControlError, SourceHolder
from tests.unit.test_initiator import (
    SOURCES,
    ScriptedServer,
    lines,
    new_session,
    success_events,
)


class SourceHolderLine(SynchronousTestCase):
    def test_round_trip(self) -> None:
        for ev in (SourceHolder(0, "10.0.0.2:9000", 5 << 20),
                   SourceHolder(63, "[::1]:9000", 0)):
            line = control.encode_event(ev)
            self.assertEqual(control.parse_server_line(line), ev)
        self.assertEqual(control.encode_event(SourceHolder(1, "a b:1", 7)),
                         b"SOURCE-HOLDER 1 a%20b%3A1 7")

    def test_malformed(self) -> None:
        for line in (b"SOURCE-HOLDER 0 h:1", b"SOURCE-HOLDER 0 h:1 -1",
                     b"SOURCE-HOLDER 64 h:1 1", b"SOURCE-HOLDER 0 " + b"h" * 301 + b" 1",
                     b"SOURCE-HOLDER 0 h:1 1e3"):
            self.assertRaises(ControlError, control.parse_server_line, line)
        self.assertRaises(ControlError, control.encode_event, SourceHolder(0, "", 1))


class ClientRecords(SynchronousTestCase):
    def test_recorded_per_source(self) -> None:
        session, _ = new_session()
        events = success_events()
        events[3:3] = [SourceHolder(0, "o:1", 30), SourceHolder(0, "m:2", 12)]
        session.feed(lines(*events))
        self.assertEqual(session.result.source_holders, [{"o:1": 30, "m:2": 12}, {}])

    def test_repeated_or_out_of_range_is_a_violation(self) -> None:
        for bad in ([SourceHolder(0, "o:1", 1), SourceHolder(0, "o:1", 2)],
                    [SourceHolder(2, "o:1", 1)]):
            session, _ = new_session()
            with self.assertRaises(ProtocolViolation):
                session.feed(lines(*success_events()[:1], *bad))

    def test_bounded(self) -> None:
        session, _ = new_session()
        with self.assertRaises(ProtocolViolation):
            session.feed(lines(*success_events()[:1], *[
                SourceHolder(0, f"h:{i + 1}", 1) for i in range(control.MAX_HOLDER_LINES + 1)]))


class Report(SynchronousTestCase):
    def test_text_and_json(self) -> None:
        session, _ = new_session()
        events = success_events()
        events[3:3] = [SourceHolder(0, "m:2", 12 << 20), SourceHolder(0, "o:1", 30 << 20)]
        session.feed(lines(*events))
        report = build_report(SOURCES, session.result, elapsed=1.0)
        self.assertEqual(report["sources"][0]["holders"],
                         [{"holder": "o:1", "bytes": 30 << 20},
                          {"holder": "m:2", "bytes": 12 << 20}])
        self.assertEqual(report["sources"][1]["holders"], [])
        self.assertEqual(json.loads(format_json(report))["sources"][0]["holders"][1]["bytes"],
                         12 << 20)
        text = format_text(report)
        self.assertIn("o:1 30.0 MiB, m:2 12.0 MiB", text)

    def test_absent_without_multi_source(self) -> None:
        session, _ = new_session()
        session.feed(lines(*success_events()))
        report = build_report(SOURCES, session.result, elapsed=1.0)
        self.assertNotIn("holders", report["sources"][0])
        self.assertNotIn("several holders", format_text(report))


class Flags(SynchronousTestCase):
    def test_no_multi_source_is_an_option_line(self) -> None:
        options = JobOptions(multi_source=False)
        sent = options_lines(options)
        self.assertEqual([control.encode_option(o) for o in sent if
                          isinstance(o, control.JobOption)], [b"OPTION no-multi-source"])
        self.assertEqual(options_from_lines(sent), options)
        self.assertEqual(options_lines(JobOptions()), [])
        parsed = control.parse_client_line(b"OPTION no-multi-source")
        self.assertEqual(parsed, control.JobOption("no-multi-source"))

    def test_mirror_init_flag_sent(self) -> None:
        server = ScriptedServer(lines(*success_events()))
        options = cli.parse_arguments(["--no-multi-source", "-s", "127.0.0.1:1:a,[::1]:2:."])
        self.assertEqual(cli.run(options, io.StringIO(), io.StringIO(), server.opener), 0)
        self.assertIn(b"OPTION no-multi-source", server.received())

    def test_mirror_server_flags(self) -> None:
        mirror_dir = self.mktemp()
        os.makedirs(mirror_dir)
        options = tap.Options()
        options.parseOptions(["-m", mirror_dir, "--holder", "10.0.0.2:9000", "--holder",
                              "[::1]:9001", "--multi-source-threshold", "4M",
                              "--max-holders", "3"])
        settings = tap.mirror_settings(options)
        self.assertEqual(settings.holders, (("10.0.0.2", 9000), ("::1", 9001)))
        self.assertEqual((settings.multi_source_threshold, settings.max_holders),
                         (4 << 20, 3))
        for bad in (["--holder", "nohost"], ["--holder", "h:0"],
                    ["--multi-source-threshold", "0"], ["--max-holders", "0"]):
            with self.assertRaises(SystemExit):
                tap.Options().parseOptions(["-m", mirror_dir, *bad])
