"""`IndexClient` against the real index protocol over iosim, on a fake clock: full listing,
incremental changes, renewals, reconnection, a forgetful index, withdrawal."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mirror.index import codec
from mirror.index.client import IndexClient
from mirror.index.database import DatabaseRegistry
from mirror.index.factory import IndexFactory
from mirror.index.registry import Query
from mirror.index.settings import IndexSettings
from tests.unit.index_helpers import inline_registry, result_of

D = "d" * 64


class CountingRegistry:
    """The inline registry, counting calls per method (what the node sent)."""

    def __init__(self, registry: DatabaseRegistry) -> None:
        self.registry = registry
        self.calls: dict[str, int] = {}
        self.put_sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.registry, name)

        def call(*args: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            if name == "put":
                self.put_sizes.append(len(args[1]))
            return method(*args)

        return call


@implementer(IStreamClientEndpoint)
class Loopback:
    """A client endpoint whose connections reach an index factory through iosim."""

    def __init__(self, server_factory: IndexFactory, clock: MemoryReactorClock) -> None:
        self.server_factory = server_factory
        self.clock = clock
        self.pumps: list[iosim.IOPump] = []
        self.refuse = False

    def connect(self, factory: Any) -> Any:
        if self.refuse:
            from twisted.internet.defer import fail
            from twisted.internet.error import ConnectionRefusedError

            return fail(ConnectionRefusedError())
        client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9002))
        server = self.server_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        self.pumps.append(iosim.connect(server, iosim.FakeTransport(server, True), client,
                                        iosim.FakeTransport(client, False), greet=False,
                                        clock=self.clock))
        return succeed(client)

    def settle(self) -> None:
        for _ in range(50):
            self.clock.advance(0)
            for pump in self.pumps:
                pump.pump()


class IndexClientTests(SynchronousTestCase):
    loopback: Loopback | None = None

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(1000)
        self.new_index()
        self.client = IndexClient(self.clock, "127.0.0.1:9002", "node-a", "10.0.0.1:9000",
                                  endpoint=self.loopback)

    def new_index(self) -> None:
        registry, _ = inline_registry()
        self.registry = CountingRegistry(registry)
        factory = IndexFactory(self.registry, self.clock, IndexSettings(lease=30.0))
        if self.loopback is not None:
            self.loopback.server_factory = factory
        else:
            self.loopback = Loopback(factory, self.clock)

    def holders(self, path: str = "") -> list[tuple[str, int, str | None]]:
        rows = result_of(self.registry.registry.holders(Query(path=path), self.clock.seconds(),
                                                        None, 1000))
        return [(h.path, h.size, h.digest) for h in rows]

    def start(self, *files: codec.FileRecord) -> None:
        self.client.register(files)
        self.client.startService()
        self.loopback.settle()

    def test_full_listing_then_only_changes(self) -> None:
        self.start(codec.FileRecord("a", 1, 1), codec.FileRecord("b", 2, 2))
        self.assertEqual(self.holders(), [("a", 1, None), ("b", 2, None)])
        self.assertEqual(self.registry.calls.get("begin"), 1)
        self.client.update(codec.FileRecord("a", 1, 1, D))
        self.client.update(codec.FileRecord("c", 3, 3))
        self.client.remove("b")
        self.loopback.settle()
        self.assertEqual(self.holders(), [("a", 1, D), ("c", 3, None)])
        # One full listing; the changes went as one incremental batch of two files.
        self.assertEqual(self.registry.calls.get("begin"), 1)
        self.assertEqual(self.registry.put_sizes, [2, 2])
        self.assertEqual(self.client.pending, 0)

    def test_renews_its_lease_while_it_runs(self) -> None:
        self.start(codec.FileRecord("a", 1, 1))
        for _ in range(10):
            self.clock.advance(10)
            self.loopback.settle()
        self.assertEqual(self.registry.calls.get("renew"), 10)
        self.assertEqual(self.holders(), [("a", 1, None)])

    def test_reconnects_and_sends_only_what_changed_meanwhile(self) -> None:
        self.start(codec.FileRecord("a", 1, 1), codec.FileRecord("b", 2, 2))
        self.loopback.refuse = True
        self.loopback.pumps[-1].client.transport.loseConnection()
        self.loopback.settle()
        self.client.update(codec.FileRecord("c", 3, 3))
        self.client.remove("a")
        self.assertEqual(self.client.pending, 2)
        self.loopback.refuse = False
        self.clock.advance(11)
        self.loopback.settle()
        self.assertEqual(self.holders(), [("b", 2, None), ("c", 3, None)])
        self.assertEqual(self.registry.calls.get("begin"), 1)
        self.assertEqual(self.registry.calls.get("hello"), 2)

    def test_an_index_that_forgot_gets_the_whole_listing(self) -> None:
        self.start(codec.FileRecord("a", 1, 1))
        self.new_index()
        self.loopback.pumps[-1].client.transport.loseConnection()
        self.loopback.settle()
        self.clock.advance(11)
        self.loopback.settle()
        self.assertEqual(self.holders(), [("a", 1, None)])
        self.assertEqual(self.registry.calls.get("begin"), 1)

    def test_query_and_withdraw(self) -> None:
        self.start(codec.FileRecord("d/a", 1, 1, D))
        d = self.client.query(digest=D)
        self.loopback.settle()
        (row,) = result_of(d)
        self.assertEqual((row.node, row.address, row.path), ("node-a", "10.0.0.1:9000", "d/a"))
        stopped = self.client.stopService()
        self.loopback.settle()
        result_of(stopped)
        self.assertEqual(self.holders(), [])

    def test_bad_values_are_refused_locally(self) -> None:
        self.assertRaises(codec.BadMessage, self.client.update, codec.FileRecord("../x", 1, 1))
        self.assertRaises(codec.BadMessage, IndexClient, self.clock, "h", "n", "a:1")
