"""The connection caps of mirror/limits.py: who is admitted, who is evicted, who is refused."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mirror.limits import (
    CapReached,
    ConnectionLimiter,
    Deadline,
    LimitedConnection,
    LimitedFactory,
)


class Conn(LimitedConnection):
    """A connection that is idle or working as the test says, and records its eviction."""

    def __init__(self, idle: bool = True) -> None:
        self.idle = idle
        self.evicted: str | None = None

    def is_idle(self) -> bool:
        return self.idle

    def evict(self, reason: str) -> None:
        self.evicted = reason
        self.transport.loseConnection()

    def connectionLost(self, reason: object = None) -> None:
        self.factory.unregisterProtocol(self)


class Limited(LimitedFactory):
    protocol = Conn
    server_name = "test server"

    def __init__(self, max_total: int, max_per_peer: int) -> None:
        self.limiter = ConnectionLimiter(max_total, max_per_peer)

    def refusal(self, reason: str) -> bytes:
        return b"NO " + reason.encode() + b"\n"


class LimiterPolicy(SynchronousTestCase):
    """`ConnectionLimiter` alone, with connections whose idleness the test sets."""

    def add(self, limiter: ConnectionLimiter, host: str, idle: bool = True) -> Conn:
        """Admit a connection from ``host`` that must fit without evicting anyone."""
        self.assertIsNone(limiter.make_room(host))
        conn = Conn(idle)
        conn.peer_key = host
        limiter.add(conn)
        return conn

    def test_room_below_the_caps(self) -> None:
        limiter = ConnectionLimiter(3, 2)
        self.add(limiter, "a")
        self.add(limiter, "a")
        self.add(limiter, "b")
        self.assertEqual((limiter.total, limiter.count("a"), limiter.count("b")), (3, 2, 1))

    def test_per_peer_cap_evicts_the_peers_oldest_idle_connection(self) -> None:
        limiter = ConnectionLimiter(10, 3)
        self.add(limiter, "a", idle=False)
        older = self.add(limiter, "a")
        self.add(limiter, "a")
        self.assertIs(limiter.make_room("a"), older)

    def test_per_peer_cap_refuses_when_all_of_the_peers_connections_work(self) -> None:
        limiter = ConnectionLimiter(10, 2)
        self.add(limiter, "a", idle=False)
        self.add(limiter, "a", idle=False)
        self.add(limiter, "b")  # another peer's idle connection is not a's to take
        with self.assertRaises(CapReached) as caught:
            limiter.make_room("a")
        self.assertEqual(str(caught.exception), "too many connections from a")

    def test_total_cap_takes_from_the_peer_holding_most(self) -> None:
        limiter = ConnectionLimiter(5, 10)
        self.add(limiter, "a")
        b1 = self.add(limiter, "b")
        self.add(limiter, "b")
        self.add(limiter, "b")
        self.add(limiter, "c")
        self.assertIs(limiter.make_room("d"), b1)

    def test_total_cap_skips_a_peer_whose_connections_all_work(self) -> None:
        limiter = ConnectionLimiter(5, 10)
        a = self.add(limiter, "a")
        self.add(limiter, "a")
        for _ in range(3):
            self.add(limiter, "b", idle=False)
        self.assertIs(limiter.make_room("c"), a)

    def test_total_cap_never_takes_from_a_peer_holding_no_more_than_the_newcomer(self) -> None:
        limiter = ConnectionLimiter(4, 10)
        self.add(limiter, "a", idle=False)
        self.add(limiter, "a", idle=False)
        self.add(limiter, "b")
        self.add(limiter, "b", idle=False)
        # b holds 2, as many as a: a's new connection may not take b's idle one.
        with self.assertRaises(CapReached) as caught:
            limiter.make_room("a")
        self.assertEqual(str(caught.exception), "too many connections (4 in total)")

    def test_total_cap_takes_the_newcomers_own_idle_connection(self) -> None:
        limiter = ConnectionLimiter(3, 10)
        self.add(limiter, "a", idle=False)
        self.add(limiter, "b", idle=False)
        own = self.add(limiter, "c")
        self.assertIs(limiter.make_room("c"), own)

    def test_total_cap_refuses_when_every_connection_works(self) -> None:
        limiter = ConnectionLimiter(2, 10)
        self.add(limiter, "a", idle=False)
        self.add(limiter, "b", idle=False)
        self.assertRaises(CapReached, limiter.make_room, "c")
        self.assertRaises(CapReached, limiter.make_room, "a")

    def test_remove_is_idempotent(self) -> None:
        limiter = ConnectionLimiter(2, 2)
        conn = self.add(limiter, "a")
        limiter.remove(conn)
        limiter.remove(conn)
        self.assertEqual((limiter.total, limiter.count("a")), (0, 0))
        self.add(limiter, "a")
        self.add(limiter, "a")

    def test_idleness_is_asked_at_the_time(self) -> None:
        limiter = ConnectionLimiter(10, 1)
        conn = self.add(limiter, "a", idle=False)
        self.assertRaises(CapReached, limiter.make_room, "a")
        conn.idle = True
        self.assertIs(limiter.make_room("a"), conn)


class Factory(SynchronousTestCase):
    """`LimitedFactory`: builds with ``protocol``, evicts, refuses with the reason, releases."""

    def connect(self, factory: Limited, host: str, port: int = 1) -> Any:
        """The protocol built: a `Conn`, or the one that tells a refused client why."""
        addr = IPv4Address("TCP", host, port)
        proto = factory.buildProtocol(addr)
        assert proto is not None
        proto.makeConnection(StringTransport(peerAddress=addr))
        return proto

    def test_builds_the_protocol_the_twisted_way(self) -> None:
        factory = Limited(2, 2)
        proto = self.connect(factory, "10.0.0.1")
        self.assertIsInstance(proto, Conn)
        self.assertIs(proto.factory, factory)
        self.assertEqual(proto.peer_key, "10.0.0.1")
        self.assertEqual(factory.limiter.count("10.0.0.1"), 1)

    def test_unix_peers_share_one_key(self) -> None:
        factory = Limited(2, 2)
        proto = factory.buildProtocol(UNIXAddress(None))
        assert isinstance(proto, Conn)
        self.assertEqual(proto.peer_key, "unix")

    def test_refused_connection_is_told_why_and_closed(self) -> None:
        factory = Limited(10, 1)
        working = self.connect(factory, "10.0.0.1")
        working.idle = False
        proto = self.connect(factory, "10.0.0.1", 2)
        self.assertNotIsInstance(proto, Conn)
        self.assertEqual(proto.transport.value(),
                         b"NO test server busy: too many connections from 10.0.0.1\n")
        self.assertTrue(proto.transport.disconnecting)
        self.assertIsNone(working.evicted)
        self.assertEqual(factory.limiter.total, 1)

    def test_evicted_connection_frees_its_slot_at_once_and_once(self) -> None:
        factory = Limited(10, 1)
        idle = self.connect(factory, "10.0.0.1")
        new = self.connect(factory, "10.0.0.1", 2)
        self.assertIsInstance(new, Conn)
        self.assertIn("idle connection closed", idle.evicted)
        self.assertTrue(idle.transport.disconnecting)
        self.assertEqual(factory.limiter.total, 1)
        idle.connectionLost()  # the close completes later: nothing is released twice
        self.assertEqual(factory.limiter.total, 1)
        new.connectionLost()
        self.assertEqual(factory.limiter.total, 0)

    def test_another_address_cannot_take_working_connections(self) -> None:
        factory = Limited(2, 2)
        protos = [self.connect(factory, "10.0.0.1", port) for port in (1, 2)]
        for proto in protos:
            proto.idle = False
        refused = self.connect(factory, "10.0.0.2")
        self.assertNotIsInstance(refused, Conn)
        self.assertIn(b"(2 in total)", refused.transport.value())
        self.assertEqual([p.evicted for p in protos], [None, None])

    def test_protocol_must_be_a_limited_connection(self) -> None:
        class Wrong(Limited):
            protocol = Protocol  # type: ignore[assignment]

        self.assertRaises(TypeError, Wrong(2, 2).buildProtocol, IPv4Address("TCP", "h", 1))


class FakeJob:
    def __init__(self) -> None:
        self.id = "1"
        self.ok = True


class FakeService:
    """What ControlFactory uses of a MirrorService: settings, reactor, submit."""

    def __init__(self, **settings: Any) -> None:
        from mirror.mirror_server.service import MirrorSettings

        self.settings = MirrorSettings(**settings)
        self.reactor = MemoryReactorClock()
        self.jobs: list[FakeJob] = []
        self.options: list[dict[str, Any]] = []

    def submit(self, sources: object, observer: object, options: object = None,
               **settings: Any) -> FakeJob:
        job = FakeJob()
        self.jobs.append(job)
        #: The settings of each job submitted (bwlimit, ...).
        self.options.append(settings)
        return job


class ControlPortCaps(SynchronousTestCase):
    """The caps on the mirror server's control port: a running job is never idle."""

    def setUp(self) -> None:
        from mirror.mirror_server.control import ControlFactory

        # FakeService has only what the factory and its protocols read.
        self.factory = ControlFactory(
            cast(Any, FakeService(max_connections=10, max_per_peer=1)))

    def connect(self) -> tuple[Any, StringTransport]:
        addr = IPv4Address("TCP", "10.0.0.1", 1)
        proto = self.factory.buildProtocol(addr)
        assert proto is not None
        transport = StringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        return proto, transport

    def refused(self, transport: StringTransport) -> str:
        from mirror.wire import control

        (line,) = transport.value().split(b"\r\n")[:-1]
        event = control.parse_server_line(line)
        assert isinstance(event, control.Refused), line
        self.assertTrue(transport.disconnecting)
        return event.message

    def test_idle_connection_is_told_and_makes_room(self) -> None:
        _, idle = self.connect()
        proto, _ = self.connect()
        self.assertIn("mirror server busy: idle connection closed", self.refused(idle))
        self.assertEqual(self.factory.limiter.total, 1)

    def test_running_job_is_never_taken(self) -> None:
        running, transport = self.connect()
        running.dataReceived(b"SOURCE 127.0.0.1 1 . 0\r\nGO\r\n")
        self.assertIsNotNone(running.job)
        _, newcomer = self.connect()
        self.assertEqual(self.refused(newcomer),
                         "mirror server busy: too many connections from 10.0.0.1")
        self.assertFalse(transport.disconnecting)
        # Once its job is done the connection is idle again, and may make room.
        running.job_done(running.job)
        self.connect()
        self.assertEqual(self.factory.limiter.count("10.0.0.1"), 1)


class ControlPortOptions(ControlPortCaps):
    """Job options on the control port: BWLIMIT reaches the service, once."""

    def setUp(self) -> None:
        super().setUp()
        self.service = cast(FakeService, self.factory.service)

    def test_bwlimit_reaches_the_job(self) -> None:
        proto, _ = self.connect()
        proto.dataReceived(b"SOURCE 127.0.0.1 1 . 0\r\nBWLIMIT 65536\r\nGO\r\n")
        self.assertEqual(self.service.options, [{"bwlimit": 65536, "links_mode": "safe"}])

    def test_no_bwlimit_is_none(self) -> None:
        proto, _ = self.connect()
        proto.dataReceived(b"SOURCE 127.0.0.1 1 . 0\r\nGO\r\n")
        self.assertEqual(self.service.options, [{"bwlimit": 0, "links_mode": "safe"}])

    def test_bwlimit_twice_is_refused(self) -> None:
        proto, transport = self.connect()
        proto.dataReceived(b"BWLIMIT 1\r\nBWLIMIT 2\r\nSOURCE 127.0.0.1 1 . 0\r\nGO\r\n")
        self.assertEqual(self.refused(transport), "BWLIMIT given twice")
        self.assertEqual(self.service.options, [])


class DeadlineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.expired: list[float] = []
        self.deadline = Deadline(self.clock, 10, lambda: self.expired.append(self.clock.seconds()))

    def test_restart_moves_the_deadline(self) -> None:
        self.deadline.start()
        for _ in range(5):
            self.clock.advance(9)
            self.deadline.restart()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(9.9)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, [55.0])
        self.assertFalse(self.deadline.running)

    def test_restart_takes_new_seconds(self) -> None:
        self.deadline.start()
        self.deadline.seconds = 3
        self.deadline.restart()
        self.clock.advance(3)
        self.assertEqual(self.expired, [3.0])

    def test_restart_with_zero_seconds_stops(self) -> None:
        self.deadline.start()
        self.deadline.seconds = 0
        self.deadline.restart()
        self.assertFalse(self.deadline.running)
        self.clock.advance(100)
        self.assertEqual(self.expired, [])

    def test_restart_when_stopped_starts(self) -> None:
        self.deadline.restart()
        self.clock.advance(10)
        self.assertEqual(self.expired, [10.0])
