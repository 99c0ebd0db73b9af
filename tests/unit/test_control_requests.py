"""The control port's ATTACH, JOBS and CANCEL (issue 12), on a mirror service in memory."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from mirror.mirror_server.control import ControlFactory
from mirror.wire import control
from tests.trees import make_sample_tree
from tests.unit.test_mirror_job import JobTestCase


class ControlRequests(JobTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.factory = ControlFactory(self.service)
        self.serve(make_sample_tree(self.base / "src", big_size=300 * 1024))

    def connect(self, *lines: bytes) -> tuple[Any, StringTransport]:
        addr = IPv4Address("TCP", "10.0.0.9", 1)
        proto = self.factory.buildProtocol(addr)
        assert proto is not None
        transport = StringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        for line in lines:
            proto.dataReceived(line + b"\r\n")
        return proto, transport

    def events(self, transport: StringTransport) -> list[Any]:
        return [control.parse_server_line(line)
                for line in transport.value().split(b"\r\n")[:-1]]

    def submit(self) -> tuple[Any, StringTransport]:
        return self.connect(b"SOURCE 10.0.0.1 7000 . 0", b"GO")

    def test_jobs_lists_running_and_finished(self) -> None:
        _, empty = self.connect(b"JOBS")
        self.assertEqual(self.events(empty), [control.Done(True)])
        self.assertTrue(empty.disconnecting)
        first, _ = self.submit()
        self.network.run_until(first.job.finished)
        second, _ = self.submit()
        _, listing = self.connect(b"JOBS")
        states = self.events(listing)
        self.assertEqual([(s.job_id, s.state, s.specs) for s in states[:-1]],
                         [("1", "ok", "10.0.0.1:7000:."), ("2", "running", "10.0.0.1:7000:.")])
        self.assertEqual(states[-1], control.Done(True))
        self.network.run_until(second.job.finished)

    def test_attach_follows_to_the_end_and_a_lost_attacher_cancels_nothing(self) -> None:
        submitter, submitted = self.submit()
        attacher, attached = self.connect(b"ATTACH 1")
        self.assertFalse(attacher.is_idle(), "an attached connection of a running job")
        leaver, _ = self.connect(b"ATTACH 1")
        leaver.connectionLost()
        self.network.run_until(submitter.job.finished)
        events = self.events(attached)
        self.assertEqual(events[:2], [control.JobAccepted("1"),
                                      control.Spec(0, control.SourceRequest("10.0.0.1", 7000,
                                                                            "", 0.0))])
        self.assertEqual(events[-1], control.Done(True))
        self.assertTrue(attached.disconnecting)
        # The submitter heard the same end.
        self.assertEqual(self.events(submitted)[-1], control.Done(True))

    def test_cancel(self) -> None:
        submitter, submitted = self.submit()
        _, canceller = self.connect(b"CANCEL 1")
        self.assertEqual(self.events(canceller), [control.Cancelled("1")])
        self.network.run_until(submitter.job.finished)
        events = self.events(submitted)
        self.assertIn(control.SourceError(0, None, "job cancelled"), events)
        self.assertEqual(events[-1], control.Done(False))
        _, again = self.connect(b"CANCEL 1")
        self.assertEqual(self.events(again),
                         [control.Refused("job 1 is already finished (cancelled)")])

    def test_refusals(self) -> None:
        for lines, reason in [
            ((b"ATTACH 9",), "no job 9"),
            ((b"CANCEL 9",), "no job 9"),
            ((b"SOURCE 10.0.0.1 7000 . 0", b"ATTACH 1"), "ATTACH after SOURCE"),
            ((b"LINKS skip", b"CANCEL 1"),
             "CANCEL after a job's OPTION, FILTER, BWLIMIT or LINKS"),
            ((b"OPTION delete", b"JOBS"),
             "JOBS after a job's OPTION, FILTER, BWLIMIT or LINKS"),
            ((b"JOBS please",), "JOBS takes 0 fields, got 1"),
        ]:
            _, transport = self.connect(*lines)
            self.assertEqual(self.events(transport), [control.Refused(reason)], lines)
            self.assertTrue(transport.disconnecting)
