"""--listen with an IPv6 address written plainly: both daemons say to escape its colons, and
show the escaped form, which works."""

from __future__ import annotations

import io
import sys

from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from mirror.content_server.tap import Options as ContentOptions
from mirror.endpoint_strings import escaped_ipv6
from mirror.mirror_server.tap import Options as MirrorOptions


class Escaping(SynchronousTestCase):
    def test_table(self) -> None:
        for description, escaped in [
            ("tcp:9400:interface=::1", "tcp:9400:interface=\\:\\:1"),
            ("tcp:interface=::1:port=9400", "tcp:interface=\\:\\:1:port=9400"),
            ("tcp:9400:interface=::", "tcp:9400:interface=\\:\\:"),
            ("tcp:9400:interface=fe80::1%eth0", "tcp:9400:interface=fe80\\:\\:1%eth0"),
            ("tcp:9400:interface=2001:db8::7:backlog=5",
             "tcp:9400:interface=2001\\:db8\\:\\:7:backlog=5"),
            ("tcp:9400:interface=\\:\\:1", None),
            ("tcp:9400:interface=127.0.0.1", None),
            ("tcp:9400", None),
            ("unix:/run/a:b", None),
            ("tcp:9400:interface=nothing:at:all", None),
        ]:
            with self.subTest(description=description):
                self.assertEqual(escaped_ipv6(description), escaped)

    def test_escaped_form_listens_on_ipv6(self) -> None:
        escaped = escaped_ipv6("tcp:9400:interface=::1")
        assert escaped is not None
        reactor = MemoryReactor()
        serverFromString(reactor, escaped).listen(Factory())
        ((port, _factory, _backlog, interface),) = reactor.tcpServers
        self.assertEqual((port, interface), (9400, "::1"))


class BothDaemons(SynchronousTestCase):
    def error(self, options: ContentOptions | MirrorOptions, argv: list[str]) -> str:
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        with self.assertRaises(SystemExit) as caught:
            options.parseOptions(argv)
        self.assertEqual(caught.exception.code, 2)
        return err.getvalue()

    def test_hint(self) -> None:
        for options in (ContentOptions(), MirrorOptions()):
            message = self.error(options, ["--listen", "tcp:9400:interface=::1"])
            self.assertEqual(message.count("\n"), 1)
            self.assertIn("the colons of an IPv6 address must be escaped", message)
            self.assertIn("--listen 'tcp:9400:interface=\\:\\:1'", message)
            self.assertNotIn("_parseTCP", message)

    def test_other_mistakes_keep_twisteds_reason(self) -> None:
        message = self.error(MirrorOptions(), ["--listen", "bogus:1"])
        self.assertNotIn("IPv6", message)
        self.assertIn("--listen bogus:1: ", message)
