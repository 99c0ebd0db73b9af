"""The index daemon's protocol on a StringTransport, a fake clock and an inline registry."""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mirror.index import codec
from mirror.index.expiry import ExpiryService
from mirror.index.factory import IndexFactory
from mirror.index.protocol import IndexServerProtocol
from mirror.index.registry import Limits
from mirror.index.settings import IndexSettings
from tests.unit.index_helpers import inline_registry

D = "d" * 64


class Peer:
    """One connection to the index."""

    def __init__(self, factory: IndexFactory, host: str = "10.0.0.1") -> None:
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, 1234))
        proto = factory.buildProtocol(self.transport.getPeer())
        assert isinstance(proto, IndexServerProtocol)
        self.proto = proto
        self.proto.makeConnection(self.transport)
        self.next_id = 1
        self.buffer = bytearray()

    def send(self, opcode: int, message: dict[str, Any]) -> int:
        request_id = self.next_id
        self.next_id += 1
        self.proto.dataReceived(codec.frame(opcode, request_id, message))
        return request_id

    def answers(self) -> list[tuple[int, int, dict[str, Any]]]:
        self.buffer += self.transport.value()
        self.transport.clear()
        return [codec.decode_answer(f) for f in codec.read_frames(self.buffer)]

    def ask(self, opcode: int, message: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request_id = self.send(opcode, message)
        (answer,) = self.answers()
        self.assert_id(answer, request_id)
        return answer[0], answer[2]

    @staticmethod
    def assert_id(answer: tuple[int, int, dict[str, Any]], request_id: int) -> None:
        assert answer[1] == request_id, answer

    def where(self, **query: str) -> list[codec.Holder]:
        self.send(codec.WHERE, query)
        rows: list[codec.Holder] = []
        answers = self.answers()
        for opcode, _, message in answers[:-1]:
            assert opcode == codec.HOLDERS
            rows += codec.holders_of(message)
        assert answers[-1][0] == codec.DONE, answers[-1]
        return rows


class IndexProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.registry, _ = inline_registry(Limits(max_nodes=10, max_files_per_node=5))
        self.factory = IndexFactory(self.registry, self.clock,
                                    IndexSettings(lease=30.0, max_answer=4))

    def register(self, node: str, *files: list[Any]) -> Peer:
        peer = Peer(self.factory)
        opcode, answer = peer.ask(codec.HELLO, {"node": node, "address": f"{node}:9000"})
        self.assertEqual((opcode, answer), (codec.OK, {"lease": 30.0, "known": False}))
        self.assertEqual(peer.ask(codec.BEGIN, {})[0], codec.OK)
        if files:
            self.assertEqual(peer.ask(codec.FILES, {"files": list(files)}),
                             (codec.OK, {"files": len(files)}))
        self.assertEqual(peer.ask(codec.END, {})[0], codec.OK)
        return peer

    def test_register_query_and_expire_on_the_clock(self) -> None:
        self.register("a", ["f", 1, 2, D], ["dir/g", 3, 4, None])
        asker = Peer(self.factory, "10.0.0.9")
        rows = asker.where(path="f")
        self.assertEqual([(h.node, h.address, h.size, h.digest, h.expires_in) for h in rows],
                         [("a", "a:9000", 1, D, 30.0)])
        self.assertEqual([h.path for h in asker.where(digest=D)], ["f"])
        self.clock.advance(29)
        self.assertEqual(asker.where(path="dir")[0].age, 29.0)
        self.clock.advance(1)
        self.assertEqual(asker.where(path=""), [])

    def test_renewal_and_lost_registration(self) -> None:
        peer = self.register("a", ["f", 1, 2, D])
        self.clock.advance(20)
        self.assertEqual(peer.ask(codec.RENEW, {})[0], codec.OK)
        self.clock.advance(20)
        self.assertEqual(len(Peer(self.factory).where(path="f")), 1)
        self.clock.advance(31)
        opcode, answer = peer.ask(codec.RENEW, {})
        self.assertEqual((opcode, answer["code"]), (codec.ERROR, codec.E_NOT_REGISTERED))

    def test_expiry_service_purges_on_the_clock(self) -> None:
        self.register("a", ["f", 1, 2, D])
        service = ExpiryService(self.registry, self.clock, 10.0)
        service.startService()
        self.addCleanup(service.stopService)
        self.clock.advance(30)
        asker = Peer(self.factory)
        # Expired and purged: a new HELLO starts empty.
        self.assertEqual(asker.ask(codec.HELLO, {"node": "a", "address": "a:1"})[1]["known"],
                         False)

    def test_changes_need_hello_and_touch_only_own_files(self) -> None:
        self.register("a", ["f", 1, 2, D])
        stranger = Peer(self.factory)
        opcode, answer = stranger.ask(codec.REMOVE, {"paths": ["f"]})
        self.assertEqual((opcode, answer["code"]), (codec.ERROR, codec.E_NOT_REGISTERED))
        other = self.register("b")
        other.ask(codec.REMOVE, {"paths": ["f"]})
        other.ask(codec.WITHDRAW, {})
        self.assertEqual([h.node for h in stranger.where(path="f")], ["a"])

    def test_withdraw_removes_at_once(self) -> None:
        peer = self.register("a", ["f", 1, 2, D])
        self.assertEqual(peer.ask(codec.WITHDRAW, {}), (codec.OK, {}))
        self.assertEqual(Peer(self.factory).where(path="f"), [])

    def test_bounds(self) -> None:
        peer = self.register("a", *[[f"f{i}", 1, 1, None] for i in range(5)])
        opcode, answer = peer.ask(codec.FILES, {"files": [["g", 1, 1, None]]})
        self.assertEqual((opcode, answer["code"]), (codec.ERROR, codec.E_LIMIT))
        # The answer is cut at --max-answer and says so.
        asker = Peer(self.factory)
        self.assertEqual(len(asker.where(path="")), 4)
        asker.send(codec.WHERE, {"path": ""})
        self.assertEqual(asker.answers()[-1][2], {"count": 4, "truncated": True})

    def test_bad_request_is_answered_and_closes(self) -> None:
        peer = Peer(self.factory)
        peer.proto.dataReceived(struct.pack(">IBI", 5 + 7, codec.FILES, 3) + b"{bad!!}")
        ((opcode, request_id, answer),) = peer.answers()
        self.assertEqual((opcode, request_id, answer["code"]), (codec.ERROR, 3, 3))
        self.assertTrue(peer.transport.disconnecting)

    def test_oversized_frame_drops_the_connection(self) -> None:
        peer = Peer(self.factory)
        peer.proto.dataReceived(struct.pack(">I", codec.MAX_FRAME) + b"\x24")
        self.assertTrue(peer.transport.disconnecting)
        self.assertEqual(peer.answers(), [])

    def test_partial_frame_has_a_deadline(self) -> None:
        peer = Peer(self.factory)
        peer.proto.dataReceived(struct.pack(">I", 100) + b"\x24")
        self.clock.advance(self.factory.settings.frame_timeout)
        self.assertTrue(peer.transport.disconnecting)

    def test_long_answer_waits_for_the_reader(self) -> None:
        settings = IndexSettings(max_answer=10_000)
        factory = IndexFactory(self.registry, self.clock, settings)
        peer = Peer(factory)
        peer.ask(codec.HELLO, {"node": "a", "address": "a:1"})
        self.registry.tables.limits = Limits(max_files_per_node=2000)
        peer.ask(codec.FILES, {"files": [[f"f{i:04}", 1, 1, None] for i in range(1200)]})
        peer.proto.pauseProducing()
        peer.send(codec.WHERE, {"path": ""})
        first = peer.answers()
        self.assertEqual(sum(len(m["holders"]) for _, _, m in first), 500)
        peer.proto.resumeProducing()
        rest = peer.answers()
        self.assertEqual(sum(len(m.get("holders", [])) for _, _, m in rest), 700)
        self.assertEqual(rest[-1][2], {"count": 1200, "truncated": False})
