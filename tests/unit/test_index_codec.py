"""The index protocol's codec against hostile input."""

from __future__ import annotations

import json
import struct

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mirror.index import codec

D = "a" * 64


def raw(opcode: int, payload: bytes, request_id: int = 1) -> bytes:
    """A frame without its length prefix, as ``stringReceived`` gets it."""
    return struct.pack(">BI", opcode, request_id) + payload


def msg(opcode: int, message: object, request_id: int = 1) -> bytes:
    return raw(opcode, json.dumps(message).encode(), request_id)


class RequestTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        wire = codec.frame(codec.FILES, 7, {"files": [["a/b", 1, -5, D], ["c", 0, 0, None]]})
        request = codec.decode_request(wire[4:])
        self.assertEqual(request.request_id, 7)
        self.assertEqual(request.files, (codec.FileRecord("a/b", 1, -5, D),
                                         codec.FileRecord("c", 0, 0, None)))
        hello = codec.decode_request(msg(codec.HELLO, {"node": "n1", "address": "[::1]:80"}))
        self.assertEqual((hello.node, hello.address), ("n1", "[::1]:80"))
        where = codec.decode_request(msg(codec.WHERE, {"path": ""}))
        self.assertEqual((where.path, where.digest), ("", None))

    def refused(self, frame: bytes, reason: str) -> None:
        with self.assertRaises(codec.BadMessage) as caught:
            codec.decode_request(frame)
        self.assertIn(reason, str(caught.exception))

    def test_hostile_values(self) -> None:
        files = codec.FILES
        self.refused(msg(files, {"files": [["../etc/passwd", 1, 1, None]]}), "bad path")
        self.refused(msg(files, {"files": [["/abs", 1, 1, None]]}), "bad path")
        self.refused(msg(files, {"files": [[".mirror-tmp-x", 1, 1, None]]}), "bad path")
        self.refused(msg(files, {"files": [["a\nb", 1, 1, None]]}), "bad path")
        self.refused(msg(files, {"files": [["a", -1, 1, None]]}), "size")
        self.refused(msg(files, {"files": [["a", 2**63, 1, None]]}), "size")
        self.refused(msg(files, {"files": [["a", True, 1, None]]}), "size")
        self.refused(msg(files, {"files": [["a", 1, 2**63, None]]}), "mtime_ns")
        self.refused(msg(files, {"files": [["a", 1, 1, "AB" * 32]]}), "digest")
        self.refused(msg(files, {"files": [["a", 1, 1, "ab"]]}), "digest")
        self.refused(msg(files, {"files": [["a", 1, 1]]}), "a file is")
        self.refused(msg(files, {"files": [["a", 1, 1, None], ["a", 2, 2, None]]}), "twice")
        self.refused(msg(files, {"files": []}), "non-empty")
        self.refused(msg(files, {"files": [], "node": "other"}), "unknown field")
        self.refused(raw(files, b'{"files":[["a",1.5,1,null]]}'), "non-integer")
        self.refused(raw(files, b'{"files":[["a",NaN,1,null]]}'), "NaN")
        self.refused(raw(files, b'{"files":1,"files":2}'), "duplicate")
        self.refused(raw(files, b"\xff"), "UTF-8")
        self.refused(raw(files, b"[1]"), "object")
        self.refused(raw(files, b"[" * 100000), "JSON")
        self.refused(msg(codec.HELLO, {"node": "a b", "address": "h:1"}), "node")
        self.refused(msg(codec.HELLO, {"node": "x" * 257, "address": "h:1"}), "node")
        self.refused(msg(codec.HELLO, {"node": "n", "address": "h:0"}), "port")
        self.refused(msg(codec.HELLO, {"node": "n", "address": "::1:80"}), "host")
        self.refused(msg(codec.HELLO, {"node": "n", "address": "h\x1b:80"}), "host")
        self.refused(msg(codec.HELLO, {"node": "n"}), "missing")
        self.refused(msg(codec.WHERE, {"path": "a", "digest": D}), "path or a digest")
        self.refused(msg(codec.WHERE, {}), "path or a digest")
        self.refused(msg(0x99, {}), "unknown opcode")
        self.refused(msg(codec.RENEW, {}, request_id=0), "reserved")
        self.refused(b"\x21", "too short")

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_any_bytes_decode_or_are_refused(self, payload: bytes) -> None:
        for opcode in sorted(codec.REQUESTS):
            try:
                codec.decode_request(raw(opcode, payload))
            except codec.BadMessage:
                pass

    def test_frame_limit(self) -> None:
        with self.assertRaises(codec.BadMessage):
            codec.frame(codec.FILES, 1, {"files": ["x" * codec.MAX_FRAME]})

    def test_batches_fit_in_a_frame(self) -> None:
        rows = [[f"dir/{'n' * 200}{i}", i, i, D] for i in range(3000)]
        runs = list(codec.batches(rows, "files"))
        self.assertGreater(len(runs), 1)
        self.assertEqual(sum(runs, []), rows)
        for run in runs:
            self.assertLessEqual(len(codec.frame(codec.FILES, 2**32 - 1, {"files": run})),
                                 codec.MAX_FRAME)


class AnswerTests(SynchronousTestCase):
    def test_holder_rows_are_checked(self) -> None:
        good = {"node": "n", "address": "h:1", "path": "p", "size": 1, "mtime_ns": 0,
                "digest": None, "age": 0.5, "expires_in": 3}
        self.assertEqual(codec.holders_of({"holders": [good]})[0].expires_in, 3.0)
        for bad in ({"path": "../x"}, {"address": "h\x1b[2J:1"}, {"age": -1},
                    {"expires_in": "soon"}, {"size": -1}, {"extra": 1}):
            with self.assertRaises(codec.BadMessage):
                codec.holders_of({"holders": [{**good, **bad}]})

    def test_read_frames(self) -> None:
        buffer = bytearray(codec.frame(codec.OK, 1, {}) + codec.frame(codec.DONE, 1, {})[:6])
        self.assertEqual(len(list(codec.read_frames(buffer))), 1)
        self.assertEqual(len(buffer), 6)
        with self.assertRaises(codec.BadMessage):
            list(codec.read_frames(bytearray(struct.pack(">I", codec.MAX_FRAME))))
