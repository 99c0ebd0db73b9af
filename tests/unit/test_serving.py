"""--serve: a mirror server exports its mirror directory (mirror/mirror_server/serving.py)."""

from __future__ import annotations

import os

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from mirror.mirror_server import tap
from mirror.mirror_server.serving import serving_factory
from mirror.testing import InlineThreads
from mirror.wire import frames
from tests.unit.helpers import connect_server, fetch_result, list_result


class ServingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.mirror = self.mktemp()
        top = os.path.join(self.mirror, "origin_9000")
        os.makedirs(os.path.join(top, "d"))
        os.makedirs(os.path.join(self.mirror, ".mirror-state"))
        for name, data in [("origin_9000/d/f", b"placed"),
                           ("origin_9000/d/.mirror-tmp-1-ab-f", b"half"),
                           (".mirror-state/digests", b"state")]:
            with open(os.path.join(self.mirror, name), "wb") as f:
                f.write(data)
        self.factory = serving_factory(self.mirror, InlineThreads(), 0, MemoryReactorClock())
        self.addCleanup(os.close, self.factory.root_fd)
        self.rig = connect_server(self.factory)

    def test_lists_only_placed_files(self) -> None:
        self.rig.list(1, "")
        r = list_result(self.rig.log.take(), 1)
        self.assertIsNone(r.error)
        self.assertEqual(r.names, ["origin_9000", "origin_9000/d", "origin_9000/d/f"])

    def test_serves_placed_files_never_temporaries_or_state(self) -> None:
        self.rig.fetch(1, "origin_9000/d/f")
        self.assertEqual(fetch_result(self.rig.log.take(), 1).data, b"placed")
        for i, name in enumerate(["origin_9000/d/.mirror-tmp-1-ab-f", ".mirror-state/digests",
                                  ".mirror-state"], start=2):
            self.rig.fetch(i, name)
            r = fetch_result(self.rig.log.take(), i)
            assert r.error is not None
            self.assertEqual(r.error[0], frames.E_NOT_ALLOWED)
            self.assertIn("reserved", r.error[1])

    def test_max_rate_reaches_the_factory(self) -> None:
        factory = serving_factory(self.mirror, InlineThreads(), 4096, MemoryReactorClock())
        self.addCleanup(os.close, factory.root_fd)
        assert factory.egress is not None
        self.assertEqual(factory.egress.rate, 4096)


class ServeOptionTests(SynchronousTestCase):
    def test_serve_is_repeatable_and_not_a_control_port(self) -> None:
        options = tap.Options()
        options.parseOptions(["-m", self.mktemp_dir(), "--serve", "tcp:9100",
                              "--serve", "tcp:9101:interface=127.0.0.1", "--max-rate", "2M"])
        # (Open mode: a bare tcp:PORT listens on loopback only, as --listen does.)
        self.assertEqual(options["serve"], ["tcp:9100:interface=127.0.0.1",
                                            "tcp:9101:interface=127.0.0.1"])
        self.assertEqual(options["listen"], ["tcp:9001:interface=127.0.0.1"])
        self.assertEqual(options["max-rate"], 2 << 20)

    def test_bad_serve_endpoint_names_the_flag(self) -> None:
        options = tap.Options()
        with self.assertRaises(SystemExit):
            options.parseOptions(["-m", self.mktemp_dir(), "--serve", "bogus:1"])

    def test_max_rate_needs_serve(self) -> None:
        with self.assertRaises(SystemExit):
            tap.Options().parseOptions(["-m", self.mktemp_dir(), "--max-rate", "1M"])

    def mktemp_dir(self) -> str:
        path = self.mktemp()
        os.makedirs(path)
        return path
