"""SourceConnections: connections to one content server, made through an endpoint factory.

Real content server protocols behind `mirror.testing.MemoryNetwork`, a fake clock: the real
`connect()` runs, with its error mapping."""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from mirror.mirror_server.connections import SourceConnections, tcp_endpoints
from mirror.mirror_server.content_client import ContentClientProtocol, TransferError
from mirror.testing import MemoryNetwork
from tests.unit.helpers import RecordingSink, make_factory

HOST, PORT = "10.0.0.1", 7000
ADDRESS = (HOST, PORT)
DELAY = 10.0


class ConnectionsTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        for name in ("a", "b", "c"):
            with open(os.path.join(root, name), "wb") as f:
                f.write(name.encode() * 100)
        self.clock = MemoryReactorClock()
        self.network = MemoryNetwork(self.clock)
        factory = make_factory(root, self.clock)
        self.addCleanup(os.close, factory.root_fd)
        self.network.listen(HOST, PORT, factory)

    def connections(self, **options: Any) -> SourceConnections:
        conns = SourceConnections(self.clock, HOST, PORT, self.network.endpoint, **options)
        self.addCleanup(conns.close)
        return conns

    def get(self, conns: SourceConnections) -> Deferred[ContentClientProtocol]:
        return Deferred.fromCoroutine(conns.get())

    def got(self, d: Deferred[Any]) -> Any:
        """The result of ``d`` once the network is quiet."""
        self.network.flush()
        return self.successResultOf(d)

    def fetch(self, conn: ContentClientProtocol, name: str = "a") -> Deferred[Any]:
        """A FETCH in flight until `answer`: the server waits `DELAY` (fake) seconds."""
        d = conn.fetch(name, RecordingSink(), delay=DELAY)
        # Still in flight at the end, it fails when the connections close.
        self.addCleanup(d.addErrback, lambda f: f.trap(TransferError))
        return d

    def answer(self) -> None:
        """Let the delayed FETCHes be answered."""
        self.clock.advance(DELAY)
        self.network.flush()


class Connect(ConnectionsTestCase):
    """`connect` makes a connection of its own through the endpoint factory."""

    def test_connection_of_its_own(self) -> None:
        conns = self.connections()
        d = Deferred.fromCoroutine(conns.connect())
        self.assertNoResult(d)  # as over TCP: connecting takes a while
        conn = self.got(d)
        self.addCleanup(conn.close)
        self.assertEqual(self.network.attempts, [ADDRESS])
        self.assertEqual(conns.live_connections(), [])  # not shared through get()
        sink = RecordingSink()
        done = conn.fetch("b", sink)
        header, _ = self.got(done)
        self.assertEqual(sink.received, b"b" * 100)
        self.assertEqual(header.size, 100)

    def test_client_options_reach_the_protocol(self) -> None:
        conns = self.connections(stall_timeout=7.0, max_file_size=50)
        conn = self.got(Deferred.fromCoroutine(conns.connect()))
        self.addCleanup(conn.close)
        self.assertEqual((conn.stall_timeout, conn.max_file_size, conn.name),
                         (7.0, 50, f"{HOST}:{PORT}"))

    def assert_connect_fails(self, reason: Exception | None, message: str) -> None:
        if reason is None:
            self.network.stop_listening(HOST, PORT)
        else:
            self.network.fail(HOST, PORT, reason)
        d = Deferred.fromCoroutine(self.connections().connect())
        self.network.flush()
        self.assertEqual(str(self.failureResultOf(d, TransferError).value),
                         f"cannot connect to {HOST}:{PORT}: {message}")

    def test_refused(self) -> None:
        self.assert_connect_fails(None, "connection refused")

    def test_refused_without_errno(self) -> None:
        self.assert_connect_fails(error.ConnectionRefusedError(),
                                  "connection was refused by other side")

    def test_errno_named(self) -> None:
        unreachable = error.getConnectError((errno.ENETUNREACH, os.strerror(errno.ENETUNREACH)))
        self.assert_connect_fails(unreachable, "network is unreachable")

    def test_timed_out(self) -> None:
        # Twisted's text: "User timeout caused connection failure."
        self.assert_connect_fails(error.TimeoutError(), "timed out")

    def test_host_not_found(self) -> None:
        # HostnameEndpoint's text ends with the host name, already in the message: the old
        # mapping kept only that ("cannot connect to h:1: h").
        self.assert_connect_fails(
            error.DNSLookupError(f"no results for hostname lookup: {HOST}"),
            "host name not found")

    def test_other_connect_error(self) -> None:
        self.assert_connect_fails(error.ConnectError(string="Proxy said no"), "proxy said no")

    def test_server_at_its_connection_cap(self) -> None:
        # The server accepts, then closes at once (its factory builds no protocol): the
        # request on that connection fails, it does not hang.
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        factory = make_factory(root, self.clock, max_connections=0)
        self.addCleanup(os.close, factory.root_fd)
        self.network.listen(HOST, PORT, factory)
        conns = self.connections()
        conn = self.got(Deferred.fromCoroutine(conns.connect()))
        d = conn.fetch("a", RecordingSink())
        self.network.flush()
        self.assertIn(f"connection to {HOST}:{PORT} lost",
                      str(self.failureResultOf(d, TransferError).value))

    def test_closed(self) -> None:
        conns = self.connections()
        conns.close()
        d = Deferred.fromCoroutine(conns.connect())
        self.assertEqual(str(self.failureResultOf(d, TransferError).value),
                         f"connections to {HOST}:{PORT} closed")
        self.assertEqual(self.network.attempts, [])


class Sharing(ConnectionsTestCase):
    """`get`: lazily opened connections, up to ``size``, the least loaded one first."""

    def test_nothing_opened_before_the_first_request(self) -> None:
        self.connections()
        self.network.flush()
        self.assertEqual(self.network.attempts, [])

    def test_an_idle_connection_is_reused(self) -> None:
        conns = self.connections(size=2)
        first = self.got(self.get(conns))
        self.assertIs(self.got(self.get(conns)), first)
        self.assertEqual(self.network.attempts, [ADDRESS])

    def test_callers_share_one_attempt(self) -> None:
        conns = self.connections(size=2)
        ds = [self.get(conns) for _ in range(3)]
        for d in ds:
            self.assertNoResult(d)
        self.network.flush()
        one, two, three = (self.successResultOf(d) for d in ds)
        self.assertIs(one, two)
        self.assertIs(one, three)
        self.assertEqual(self.network.attempts, [ADDRESS])

    def test_opens_up_to_size_then_least_loaded(self) -> None:
        conns = self.connections(size=2)
        one = self.got(self.get(conns))
        self.fetch(one)
        two = self.got(self.get(conns))  # `one` is busy: a second connection
        self.assertIsNot(two, one)
        self.fetch(two)
        self.fetch(two)
        self.assertIs(self.got(self.get(conns)), one)  # 1 request against 2
        self.fetch(one)
        self.fetch(one)
        self.assertIs(self.got(self.get(conns)), two)  # 3 against 2
        self.assertEqual(self.network.attempts, [ADDRESS] * 2)
        self.assertEqual(sorted(map(id, conns.live_connections())), sorted(map(id, [one, two])))

    def test_a_lost_connection_is_replaced(self) -> None:
        conns = self.connections(size=1)
        one = self.got(self.get(conns))
        one.transport.loseConnection()
        self.network.flush()
        self.assertEqual(conns.live_connections(), [])
        two = self.got(self.get(conns))
        self.assertIsNot(two, one)
        self.assertEqual(conns.live_connections(), [two])

    def test_close_closes_the_shared_connections(self) -> None:
        conns = self.connections(size=2)
        conn = self.got(self.get(conns))
        conns.close()
        self.network.flush()
        self.assertIsNotNone(conn.lost_reason)
        self.assertEqual(conns.live_connections(), [])


class InFlightCap(ConnectionsTestCase):
    """At most ``max_in_flight`` requests per connection: the content server refuses more."""

    def test_get_waits_for_a_free_slot(self) -> None:
        conns = self.connections(size=1, max_in_flight=2)
        conn = self.got(self.get(conns))
        first, second = self.fetch(conn, "a"), self.fetch(conn, "b")
        waiting = self.get(conns)
        self.network.flush()
        self.assertNoResult(waiting)
        self.answer()  # slots free
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertIs(self.successResultOf(waiting), conn)
        self.assertEqual(self.network.attempts, [ADDRESS])

    def test_waiters_fail_when_the_only_connection_dies(self) -> None:
        # More callers waiting for a slot than requests in flight, then the server dies:
        # every caller must get an error, none may wait forever (review finding).
        conns = self.connections(size=1, max_in_flight=1)

        async def worker(name: str) -> str:
            try:
                conn = await conns.get()
                await conn.fetch(name, RecordingSink(), delay=DELAY)
                return "ok"
            except TransferError as e:
                return str(e)

        self.got(self.get(conns))  # connected and idle
        ds = [Deferred.fromCoroutine(worker(n)) for n in "abc"]
        self.network.flush()
        for d in ds:
            self.assertNoResult(d)  # one FETCH in flight, two callers waiting for a slot
        self.network.crash(HOST, PORT)
        self.network.flush()
        results = [self.successResultOf(d) for d in ds]
        self.assertIn("connection to 10.0.0.1:7000 lost", results[0])
        for result in results[1:]:
            self.assertIn("connection refused", result)


class DownServer(ConnectionsTestCase):
    """Once a server refuses with no connection open, requests fail at once for a while."""

    def test_later_requests_fail_at_once_for_down_interval(self) -> None:
        self.network.stop_listening(HOST, PORT)
        conns = self.connections(down_interval=5.0)
        d = self.get(conns)
        self.network.flush()
        message = str(self.failureResultOf(d, TransferError).value)
        self.assertIn("connection refused", message)
        self.clock.advance(4.9)
        again = self.get(conns)
        self.assertEqual(str(self.failureResultOf(again, TransferError).value), message)
        self.assertEqual(self.network.attempts, [ADDRESS])  # no second attempt
        self.clock.advance(0.1)
        self.network.listen(HOST, PORT, make_factory_like(self))
        self.got(self.get(conns))
        self.assertEqual(self.network.attempts, [ADDRESS] * 2)

    def test_not_down_while_a_connection_is_open(self) -> None:
        conns = self.connections(size=2)
        one = self.got(self.get(conns))
        self.fetch(one)
        self.network.stop_listening(HOST, PORT)
        # A second connection is refused, but the first still serves; the server is not
        # taken for down, so the next request that finds it busy tries again.
        self.assertIs(self.got(self.get(conns)), one)
        self.assertIs(self.got(self.get(conns)), one)
        self.assertEqual(self.network.attempts, [ADDRESS] * 3)
        # The server is back; the open connection drops: a new one is made, the refusals
        # seen while `one` served do not count as the server being down.
        self.network.listen(HOST, PORT, make_factory_like(self))
        one.transport.loseConnection()
        self.network.flush()
        self.assertIsNot(self.got(self.get(conns)), one)


def make_factory_like(test: ConnectionsTestCase) -> Any:
    """A content server on an empty root (a server that came back)."""
    root = os.path.abspath(test.mktemp())
    os.makedirs(root)
    factory = make_factory(root, test.clock)
    test.addCleanup(os.close, factory.root_fd)
    return factory


class PlainEndpoints(SynchronousTestCase):
    """An address needs no resolver: a plain TCP endpoint; a name gets HostnameEndpoint."""

    def test_kinds(self) -> None:
        reactor = MemoryReactorClock()
        make = tcp_endpoints(reactor, timeout=7)
        for host, kind in (("127.0.0.1", TCP4ClientEndpoint), ("::1", TCP6ClientEndpoint),
                           ("mirror.example", HostnameEndpoint)):
            self.assertIsInstance(make(host, 9000), kind)
        make("10.1.2.3", 9001).connect(Factory.forProtocol(Protocol))
        host, port, _factory, timeout, _bind = reactor.tcpClients[-1]
        self.assertEqual((host, port, timeout), ("10.1.2.3", 9001, 7))
