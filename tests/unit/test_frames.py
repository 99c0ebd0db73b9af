"""mirror.wire.frames: the codecs and the streaming FrameReceiver."""

from __future__ import annotations

import struct
import tracemalloc
from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mirror.hashing import DIGEST_SIZE, digest_of
from mirror.wire import frames
from mirror.wire.frames import FileHeader, ProtocolError


class Recorder(frames.FrameReceiver):
    """Keeps every event: ("frame", opcode, id, payload) and ("data", id, bytes)."""

    MAX_LENGTH = 1024
    MAX_DATA_LENGTH = 4096

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.errors: list[str] = []
        self.pause_on: int | None = None

    def stringReceived(self, frame: bytes) -> None:
        opcode, request_id, payload = frames.split_frame(frame)
        self.events.append(("frame", opcode, request_id, payload))
        if opcode == 0x7F:
            self.frameError("bad opcode")
        if opcode == self.pause_on:
            self.pauseProducing()

    def dataFrameReceived(self, request_id: int, piece: memoryview) -> None:
        self.assert_is_view(piece)
        self.events.append(("data", request_id, bytes(piece)))

    @staticmethod
    def assert_is_view(piece: memoryview) -> None:
        assert isinstance(piece, memoryview), type(piece)

    def frameError(self, reason: str) -> None:
        self.errors.append(reason)
        super().frameError(reason)

    def merged(self) -> list[tuple]:
        """Events with consecutive DATA pieces of one request joined (chunking-independent)."""
        out: list[tuple] = []
        for ev in self.events:
            if ev[0] == "data" and out and out[-1][0] == "data" and out[-1][1] == ev[1] \
                    and out[-1][3] == "open":
                out[-1] = ("data", ev[1], out[-1][2] + ev[2], "open")
            elif ev[0] == "data":
                out.append(("data", ev[1], ev[2], "open"))
            else:
                out.append(ev)
        return out


def connected(cls: type[frames.FrameReceiver] = Recorder) -> tuple[Any, StringTransport]:
    """An instance of ``cls`` (a `Recorder` unless said otherwise), connected."""
    proto = cls()
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def data_frame(request_id: int, body: bytes) -> bytes:
    return frames.data_header(request_id, len(body)) + body


SAMPLE_STREAM = b"".join([
    frames.frame(frames.FILE, 7, frames.encode_file(FileHeader(3000, 3000, 1, 0o644))),
    data_frame(7, bytes(range(256)) * 8),
    frames.frame(frames.ENTRIES, 9, frames.encode_entry(frames.KIND_FILE, 0o600, 5, 6, b"x")),
    data_frame(7, b""),
    data_frame(7, b"z" * 952),
    frames.frame(frames.FILE_END, 7, b"d" * 32),
    frames.frame(frames.LIST_END, 9, frames.encode_list_end(1, 0)),
    frames.frame(frames.ERROR, 0xFFFFFFFF, frames.encode_error(3, "bad")),
])


# -- codecs --------------------------------------------------------------------------------


class Codecs(SynchronousTestCase):
    def test_frame_layout(self) -> None:
        self.assertEqual(frames.frame(0x01, 0x01020304, b"ab"),
                         b"\x00\x00\x00\x07\x01\x01\x02\x03\x04ab")
        self.assertEqual(frames.split_frame(b"\x01\x01\x02\x03\x04ab"), (1, 0x01020304, b"ab"))

    def test_data_header(self) -> None:
        self.assertEqual(frames.data_header(5, 10) + b"0123456789",
                         frames.frame(frames.DATA, 5, b"0123456789"))

    def test_list_round_trip(self) -> None:
        self.assertEqual(frames.encode_list("docs/é").decode("utf-8"), "docs/é")

    def test_fetch_round_trip(self) -> None:
        payload = frames.encode_fetch("a/b", 10, 2**64 - 1, 2**32 - 1)
        self.assertEqual(frames.decode_fetch(payload), (10, 2**64 - 1, 2**32 - 1, b"a/b"))
        self.assertEqual(frames.decode_fetch(frames.encode_fetch("")), (0, frames.TO_END, 0, b""))

    def test_fetch_too_short(self) -> None:
        with self.assertRaises(ProtocolError) as cm:
            frames.decode_fetch(b"\x00" * 19)
        self.assertIn("too short", str(cm.exception))

    def test_entries_round_trip(self) -> None:
        payload = (frames.encode_entry(frames.KIND_DIR, 0o40755, 0, -5, b"d")
                   + frames.encode_entry(frames.KIND_FILE, 0o100644, 2**64 - 1, 2**63 - 1,
                                         "d/é".encode()))
        entries = frames.decode_entries(payload)
        self.assertEqual(entries, [
            frames.Entry(frames.KIND_DIR, 0o755, 0, -5, b"d"),
            frames.Entry(frames.KIND_FILE, 0o644, 2**64 - 1, 2**63 - 1, "d/é".encode()),
        ])
        self.assertTrue(entries[0].is_dir)
        self.assertFalse(entries[1].is_dir)

    def test_entry_mode_masked(self) -> None:
        entry, = frames.decode_entries(frames.encode_entry(frames.KIND_FILE, 0o177777, 0, 0, b"x"))
        self.assertEqual(entry.mode, 0o7777)
        # A peer's raw mode with high bits is masked on decoding too.
        raw = struct.pack(">BHQqH", frames.KIND_FILE, 0xFFFF, 0, 0, 1) + b"x"
        self.assertEqual(frames.decode_entries(raw)[0].mode, 0o7777)

    def test_entries_truncated_head(self) -> None:
        good = frames.encode_entry(frames.KIND_FILE, 0o644, 1, 1, b"name")
        with self.assertRaises(ProtocolError) as cm:
            frames.decode_entries(good + good[:10])
        self.assertIn("truncated LIST entry", str(cm.exception))

    def test_entries_truncated_name(self) -> None:
        good = frames.encode_entry(frames.KIND_FILE, 0o644, 1, 1, b"name")
        with self.assertRaises(ProtocolError) as cm:
            frames.decode_entries(good[:-1])
        self.assertIn("truncated LIST entry name", str(cm.exception))

    def test_entries_name_length_lies(self) -> None:
        raw = struct.pack(">BHQqH", frames.KIND_FILE, 0, 0, 0, 65535) + b"short"
        self.assertRaises(ProtocolError, frames.decode_entries, raw)

    def test_entries_unknown_kind(self) -> None:
        for kind in (0, 5, 255):
            raw = struct.pack(">BHQqH", kind, 0, 0, 0, 1) + b"x"
            with self.assertRaises(ProtocolError) as cm:
                frames.decode_entries(raw)
            self.assertIn(f"unknown LIST entry kind {kind}", str(cm.exception))

    def test_error_entry_round_trip(self) -> None:
        raw = (frames.encode_entry(frames.KIND_DIR, 0o755, 0, 5, b"d")
               + frames.encode_error_entry(frames.E_NOT_ALLOWED, b"d", "cannot list d: no\n")
               + frames.encode_entry(frames.KIND_FILE, 0o644, 3, 5, b"e"))
        d, err, e = frames.decode_entries(raw)
        self.assertTrue(err.is_error)
        self.assertEqual((err.mode, err.name, err.message),
                         (frames.E_NOT_ALLOWED, b"d", "cannot list d: no\\n"))
        self.assertEqual((d.name, e.name, e.size), (b"d", b"e", 3))

    def test_error_entry_truncated(self) -> None:
        raw = frames.encode_error_entry(frames.E_IO, b"d", "reason")
        for cut in range(1, len(raw)):
            self.assertRaises(ProtocolError, frames.decode_entries, raw[:cut])

    def test_list_payload(self) -> None:
        self.assertEqual(frames.decode_list(frames.encode_list("a")), (b"a", None))
        self.assertEqual(frames.decode_list(frames.encode_list("a", "a/b")), (b"a", b"a/b"))
        self.assertEqual(frames.decode_list(frames.encode_list("", "x")), (b"", b"x"))

    def test_entries_empty(self) -> None:
        with self.assertRaises(ProtocolError) as cm:
            frames.decode_entries(b"")
        self.assertIn("empty ENTRIES", str(cm.exception))

    def test_list_end_round_trip(self) -> None:
        self.assertEqual(frames.decode_list_end(frames.encode_list_end(2**64 - 1, 7)),
                         (2**64 - 1, 7))

    def test_list_end_skipped_saturates(self) -> None:
        self.assertEqual(frames.decode_list_end(frames.encode_list_end(1, 2**40)),
                         (1, 2**32 - 1))

    def test_list_end_wrong_size(self) -> None:
        good = frames.encode_list_end(1, 2)
        for bad in (b"", good[:-1], good + b"\x00"):
            self.assertRaises(ProtocolError, frames.decode_list_end, bad)

    def test_file_round_trip(self) -> None:
        header = FileHeader(10, 20, -1, 0o4755)
        self.assertEqual(frames.decode_file(frames.encode_file(header)), header)

    def test_file_mode_masked(self) -> None:
        self.assertEqual(frames.decode_file(frames.encode_file(FileHeader(0, 0, 0, 0o100644))),
                         FileHeader(0, 0, 0, 0o644))

    def test_file_wrong_size(self) -> None:
        good = frames.encode_file(FileHeader(1, 1, 1, 1))
        for bad in (b"", good[:-1], good + b"\x00"):
            self.assertRaises(ProtocolError, frames.decode_file, bad)

    def test_error_round_trip(self) -> None:
        self.assertEqual(frames.decode_error(frames.encode_error(frames.E_BUSY, "busy é")),
                         (frames.E_BUSY, "busy é"))
        self.assertEqual(frames.decode_error(b"\x00\x01"), (1, ""))

    def test_error_too_short(self) -> None:
        for bad in (b"", b"\x01"):
            self.assertRaises(ProtocolError, frames.decode_error, bad)

    def test_error_message_made_printable(self) -> None:
        code, message = frames.decode_error(b"\x00\x05" + b"bad\n\x1b[31mred\xff\xe2\x80\xae")
        self.assertEqual(code, 5)
        # mirror.text.printable's rule, so that what is shown says what was sent.
        self.assertEqual(message, "bad\\n\\x1b[31mred\\xff\\u202e")

    def test_error_message_capped(self) -> None:
        payload = frames.encode_error(1, "x" * 5000)
        self.assertEqual(len(payload), 2 + frames.MAX_ERROR_MESSAGE)
        message = frames.decode_error(b"\x00\x01" + b"y" * 5000)[1]
        self.assertEqual(message, "y" * (frames.MAX_ERROR_MESSAGE - 1) + "\u2026")
        # Escapes count: 5000 ESC bytes are shown in no more characters than that.
        message = frames.decode_error(b"\x00\x01" + b"\x1b" * 5000)[1]
        self.assertLessEqual(len(message), frames.MAX_ERROR_MESSAGE)

    def test_error_message_cut_inside_a_character(self) -> None:
        payload = frames.encode_error(1, "a" + "é" * 600)  # the cut would split a 2-byte character
        self.assertEqual(len(payload), 2 + frames.MAX_ERROR_MESSAGE - 1)
        code, message = frames.decode_error(payload)
        self.assertEqual(code, 1)
        self.assertEqual(message, "a" + "é" * 511)


# -- the receiver --------------------------------------------------------------------------


class BundleCodecs(SynchronousTestCase):
    """FETCH_MANY and BUNDLE (doc/protocol.md): round trips, and every malformation refused."""

    HEADER = FileHeader(5, 5, -7, 0o640)
    DIGEST = digest_of(b"hello")

    def test_fetch_many_round_trip(self) -> None:
        wants = [(b"a", 5), ("d/\u00e9".encode(), 0), (b"x" * 4096, 65536)]
        payload = frames.encode_fetch_many(1500, wants)
        self.assertEqual(frames.decode_fetch_many(payload),
                         (1500, [(size, path) for path, size in wants]))

    def test_fetch_many_malformed(self) -> None:
        good = frames.encode_fetch_many(0, [(b"ab", 1), (b"c", 2)])
        for bad, why in [
            (good[:5], "too short"),
            (frames.encode_fetch_many(0, []), "no file"),
            (good[:-1], "truncated FETCH_MANY path"),
            (good[:6 + 9], "truncated FETCH_MANY"),
            (good + b"z", "longer than its files"),
            (struct.pack(">IH", 0, 3) + good[6:], "truncated"),
        ]:
            with self.assertRaises(ProtocolError) as e:
                frames.decode_fetch_many(bad)
            self.assertIn(why, str(e.exception))

    def test_split_fetch_many_fills_the_request_frame(self) -> None:
        wants = [(b"p" * 1000, 1)] * 20 + [(b"q" * 4096, 2)] * 3
        ranges = frames.split_fetch_many(wants)
        self.assertEqual(ranges[0][0], 0)
        self.assertEqual(ranges[-1][1], len(wants))
        for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False):
            self.assertEqual(end, start)
        for start, end in ranges:
            request = frames.frame(frames.FETCH_MANY, 1,
                                   frames.encode_fetch_many(0, wants[start:end]))
            self.assertLessEqual(len(request) - 4, frames.MAX_REQUEST)
            if end < len(wants):  # full: the next file would not have fitted
                more = frames.encode_fetch_many(0, wants[start:end + 1])
                self.assertGreater(len(more) + 5, frames.MAX_REQUEST)
        self.assertEqual(frames.split_fetch_many([]), [])

    def test_bundle_round_trip(self) -> None:
        payload = (frames.encode_bundle_file(0, self.HEADER, self.DIGEST, b"hello")
                   + frames.encode_bundle_error(1, frames.E_CHANGED, "b: changed\x1b[31m")
                   + frames.encode_bundle_file(2, FileHeader(0, 0, 1, 0o7777), self.DIGEST, b""))
        a, b, c = frames.decode_bundle(payload)
        self.assertEqual((a.index, a.header, a.digest, bytes(a.data)),
                         (0, self.HEADER, self.DIGEST, b"hello"))
        self.assertEqual((b.index, b.header, b.code), (1, None, frames.E_CHANGED))
        self.assertEqual(b.error, "b: changed\\x1b[31m")
        self.assertEqual((c.index, c.header, bytes(c.data)), (2, FileHeader(0, 0, 1, 0o7777), b""))

    def test_bundle_error_message_capped(self) -> None:
        [item] = frames.decode_bundle(frames.encode_bundle_error(0, 5, "\u00e9" * 2000))
        self.assertLessEqual(len(item.error.encode("utf-8")), frames.MAX_ERROR_MESSAGE)

    def test_bundle_malformed(self) -> None:
        file_item = frames.encode_bundle_file(0, self.HEADER, self.DIGEST, b"hello")
        error_item = frames.encode_bundle_error(0, 1, "gone")
        for bad, why in [
            (b"", "empty"),
            (file_item[:2], "truncated BUNDLE item"),
            (file_item[:3 + 18 + 31], "truncated BUNDLE file header"),
            (file_item[:-1], "truncated BUNDLE file"),
            (error_item[:5], "truncated BUNDLE error"),
            (error_item[:-1], "truncated BUNDLE error message"),
            (struct.pack(">HB", 0, 7), "unknown BUNDLE item status 7"),
        ]:
            with self.assertRaises(ProtocolError) as e:
                frames.decode_bundle(bad)
            self.assertIn(why, str(e.exception))

    def test_bundle_size_field_cannot_overread(self) -> None:
        """A file item announcing more bytes than the frame holds is a truncation, never a
        read past the frame."""
        lying = bytearray(frames.encode_bundle_file(0, self.HEADER, self.DIGEST, b"hello"))
        struct.pack_into(">Q", lying, 3, 2**63)
        with self.assertRaises(ProtocolError):
            frames.decode_bundle(bytes(lying))

    def test_frame_head(self) -> None:
        self.assertEqual(frames.frame_head(frames.BUNDLE, 7, 3) + b"abc",
                         frames.frame(frames.BUNDLE, 7, b"abc"))


class Receiving(SynchronousTestCase):
    def feed(self, chunks: list[bytes]) -> Recorder:
        proto, transport = connected()
        for chunk in chunks:
            proto.dataReceived(chunk)
        self.assertFalse(transport.disconnecting, proto.errors)
        return proto

    def expected(self) -> list[tuple]:
        return [
            ("frame", frames.FILE, 7, frames.encode_file(FileHeader(3000, 3000, 1, 0o644))),
            ("data", 7, bytes(range(256)) * 8, "open"),
            ("frame", frames.ENTRIES, 9,
             frames.encode_entry(frames.KIND_FILE, 0o600, 5, 6, b"x")),
            ("data", 7, b"z" * 952, "open"),
            ("frame", frames.FILE_END, 7, b"d" * 32),
            ("frame", frames.LIST_END, 9, frames.encode_list_end(1, 0)),
            ("frame", frames.ERROR, 0xFFFFFFFF, frames.encode_error(3, "bad")),
        ]

    def test_whole(self) -> None:
        self.assertEqual(self.feed([SAMPLE_STREAM]).merged(), self.expected())

    def test_byte_by_byte(self) -> None:
        chunks = [SAMPLE_STREAM[i : i + 1] for i in range(len(SAMPLE_STREAM))]
        self.assertEqual(self.feed(chunks).merged(), self.expected())

    def test_odd_chunks(self) -> None:
        for size in (2, 3, 7, 8, 9, 10, 13, 1000, 1023):
            chunks = [SAMPLE_STREAM[i : i + size] for i in range(0, len(SAMPLE_STREAM), size)]
            self.assertEqual(self.feed(chunks).merged(), self.expected(), size)

    def test_empty_data_frame_is_reported(self) -> None:
        proto = self.feed([data_frame(3, b"")])
        self.assertEqual(proto.events, [("data", 3, b"")])

    def test_empty_payload_frame(self) -> None:
        proto = self.feed([frames.frame(frames.LIST_END, 1)])
        self.assertEqual(proto.events, [("frame", frames.LIST_END, 1, b"")])

    def test_data_streamed_not_buffered(self) -> None:
        proto, transport = connected()
        body = bytes(range(256)) * 16  # 4096 bytes, the limit
        wire = data_frame(2, body)
        proto.dataReceived(wire[:9 + 100])
        self.assertEqual(proto.events, [("data", 2, body[:100])])
        self.assertEqual(proto._buffer, b"")  # nothing of the body held back
        for i in range(109, len(wire), 500):
            proto.dataReceived(wire[i : i + 500])
            got = b"".join(e[2] for e in proto.events)
            self.assertEqual(got, body[: min(len(body), i + 500 - 9)])
            self.assertEqual(proto._buffer, b"")
        self.assertEqual(b"".join(e[2] for e in proto.events), body)
        self.assertFalse(transport.disconnecting)

    def test_data_pieces_are_views_of_the_data(self) -> None:
        proto = self.feed([data_frame(1, b"abc") + data_frame(1, b"def")])
        self.assertEqual([e[2] for e in proto.events], [b"abc", b"def"])

    def test_data_at_the_limit(self) -> None:
        proto = self.feed([data_frame(1, b"x" * Recorder.MAX_DATA_LENGTH)])
        self.assertEqual(proto.merged(), [("data", 1, b"x" * 4096, "open")])

    def test_frame_at_the_limit(self) -> None:
        payload = b"p" * (Recorder.MAX_LENGTH - 5)
        proto = self.feed([frames.frame(frames.ENTRIES, 1, payload)])
        self.assertEqual(proto.events, [("frame", frames.ENTRIES, 1, payload)])

    def test_pause_holds_frames_until_resumed(self) -> None:
        proto, transport = connected()
        proto.pause_on = frames.LIST_END
        proto.dataReceived(frames.frame(frames.LIST_END, 1) + frames.frame(frames.FILE_END, 2)
                           + data_frame(3, b"abc"))
        self.assertEqual(proto.events, [("frame", frames.LIST_END, 1, b"")])
        self.assertEqual(transport.producerState, "paused")
        proto.dataReceived(frames.frame(frames.ERROR, 4, b"\x00\x01"))
        self.assertEqual(len(proto.events), 1)  # still paused
        proto.pause_on = None
        proto.resumeProducing()
        self.assertEqual(proto.events[1:], [("frame", frames.FILE_END, 2, b""),
                                            ("data", 3, b"abc"),
                                            ("frame", frames.ERROR, 4, b"\x00\x01")])

    def test_pause_inside_a_data_body(self) -> None:
        class PauseOnData(Recorder):
            def dataFrameReceived(self, request_id: int, piece: memoryview) -> None:
                super().dataFrameReceived(request_id, piece)
                if len(self.events) == 1:
                    self.pauseProducing()

        proto, transport = connected(PauseOnData)
        wire = data_frame(1, b"abcdef") + frames.frame(frames.LIST_END, 2)
        proto.dataReceived(wire[:12])
        proto.dataReceived(wire[12:])
        self.assertEqual(proto.events, [("data", 1, b"abc")])
        proto.resumeProducing()
        self.assertEqual(proto.events, [("data", 1, b"abc"), ("data", 1, b"def"),
                                        ("frame", frames.LIST_END, 2, b"")])


class HostileFraming(SynchronousTestCase):
    """Every framing violation aborts the connection and stops reading."""

    def assert_aborted(self, *chunks: bytes, cls: type = Recorder) -> Recorder:
        proto, transport = connected(cls)
        for chunk in chunks:
            proto.dataReceived(chunk)
        self.assertTrue(transport.disconnected, "connection not aborted")
        self.assertEqual(len(proto.errors), 1, proto.errors)
        return proto

    def test_length_above_max_length(self) -> None:
        proto = self.assert_aborted(struct.pack(">IBI", Recorder.MAX_LENGTH + 1, frames.ENTRIES, 1))
        self.assertIn(f"frame of {Recorder.MAX_LENGTH + 1} bytes exceeds the limit",
                      proto.errors[0])
        self.assertEqual(proto.events, [])

    def test_huge_length_prefix_alone(self) -> None:
        # Four bytes are enough to know the frame is too big: no waiting for more.
        self.assert_aborted(b"\xff\xff\xff\xff")

    def test_huge_length_prefix_with_a_head(self) -> None:
        self.assert_aborted(b"\xff\xff\xff\xff" + bytes([frames.ENTRIES]) + b"\x00\x00\x00\x01")

    def test_data_length_above_max_data_length(self) -> None:
        proto = self.assert_aborted(frames.data_header(1, Recorder.MAX_DATA_LENGTH + 1) + b"x")
        self.assertEqual(proto.events, [])

    def test_data_not_accepted(self) -> None:
        class NoData(Recorder):
            MAX_DATA_LENGTH = 0

            def dataFrameReceived(self, request_id: int, piece: memoryview) -> None:
                frames.FrameReceiver.dataFrameReceived(self, request_id, piece)

        # Without DATA support a DATA frame is an ordinary frame bounded by MAX_LENGTH.
        self.assert_aborted(frames.data_header(1, 2000) + b"x" * 2000, cls=NoData)

    def test_length_too_short(self) -> None:
        for length in range(5):
            proto = self.assert_aborted(struct.pack(">I", length) + b"\x01" * 8)
            self.assertIn(f"frame length {length} too short", proto.errors[0])

    def test_length_too_short_alone(self) -> None:
        for length in range(5):
            self.assert_aborted(struct.pack(">I", length))

    def test_nothing_read_after_an_oversized_frame(self) -> None:
        proto = self.assert_aborted(struct.pack(">IBI", 5000, frames.ENTRIES, 1) + b"x" * 5000
                                    + frames.frame(frames.LIST_END, 1))
        self.assertEqual(proto.events, [])
        proto.dataReceived(frames.frame(frames.LIST_END, 2))
        self.assertEqual(proto.events, [])

    def test_nothing_read_after_a_frame_error_in_the_same_chunk(self) -> None:
        # The handler of the first frame finds it bad; the second, in the same read, must not
        # be acted on (a real transport's abort only takes effect later).
        proto = self.assert_aborted(frames.frame(0x7F, 1) + frames.frame(frames.LIST_END, 2)
                                    + data_frame(3, b"abc"))
        self.assertEqual(proto.events, [("frame", 0x7F, 1, b"")])

    def test_nothing_read_after_a_frame_error_in_later_chunks(self) -> None:
        proto = self.assert_aborted(frames.frame(0x7F, 1))
        proto.dataReceived(frames.frame(frames.LIST_END, 2))
        proto.dataReceived(data_frame(3, b"abc"))
        self.assertEqual(proto.events, [("frame", 0x7F, 1, b"")])

    def test_nothing_read_after_an_error_inside_data(self) -> None:
        class FailOnData(Recorder):
            def dataFrameReceived(self, request_id: int, piece: memoryview) -> None:
                super().dataFrameReceived(request_id, piece)
                self.frameError("no")

        proto = self.assert_aborted(data_frame(1, b"abc") + frames.frame(frames.LIST_END, 2),
                                    cls=FailOnData)
        self.assertEqual(proto.events, [("data", 1, b"abc")])

    def test_digest_size_is_the_digests(self) -> None:
        # FILE_END carries exactly one digest of mirror.hashing: BLAKE3-256, 32 bytes.
        self.assertEqual(frames.DIGEST_SIZE, DIGEST_SIZE)
        self.assertEqual(frames.DIGEST_SIZE, len(digest_of(b"")))
        self.assertEqual(frames.DIGEST_SIZE, 32)


class LinearWork(SynchronousTestCase):
    """Frames fed one byte per read cost work linear in their size (issue 7, item 4).

    The parser used to join its buffer with every read: a 128 KiB control frame fed a byte at
    a time copied ~8 GiB (0.5 s), quadratic like the stock parser it replaces. Work is
    measured as memory allocated, which tracemalloc counts exactly (deterministic, unlike a
    timing), and checked against a generous linear bound; every frame type is fed.
    """

    #: Reads between two measurements (each measurement costs more than a read).
    BATCH = 256

    class Counter(frames.FrameReceiver):
        MAX_LENGTH = 128 * 1024 + 5
        MAX_DATA_LENGTH = 16 * 1024

        def __init__(self) -> None:
            self.frames: list[tuple[int, int, bytes]] = []
            self.data: list[int] = []

        def stringReceived(self, frame: bytes) -> None:
            self.frames.append(frames.split_frame(frame))

        def dataFrameReceived(self, request_id: int, piece: memoryview) -> None:
            if not self.data or len(piece) == 0:
                self.data.append(0)
            self.data[-1] += len(piece)

    def allocated(self, proto: frames.FrameReceiver, wire: bytes, limit: int) -> int:
        """A lower bound on the bytes allocated while ``wire`` is fed a byte per read: per
        batch of reads, the most memory in use above what was in use before it. A parser that
        copies its whole buffer on every read reaches about n² / (2 x BATCH); one that copies
        each byte a bounded number of times, a few times n. Stops once above ``limit``."""
        reads = [wire[i : i + 1] for i in range(len(wire))]
        batches = [reads[i : i + self.BATCH] for i in range(0, len(reads), self.BATCH)]
        total = 0
        already = tracemalloc.is_tracing()  # e.g. PYTHONTRACEMALLOC: left as it was
        if not already:
            tracemalloc.start()
        try:
            for batch in batches:
                before = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
                for read in batch:
                    proto.dataReceived(read)
                total += tracemalloc.get_traced_memory()[1] - before
                if total > limit:
                    break
        finally:
            if not already:
                tracemalloc.stop()
        return total

    def test_large_frames_byte_by_byte(self) -> None:
        entries = b"e" * (self.Counter.MAX_LENGTH - 5)  # the largest control frame accepted
        body = bytes(range(256)) * 64  # the largest DATA frame accepted
        small = [(frames.FILE, frames.encode_file(FileHeader(len(body), len(body), 1, 0o644))),
                 (frames.FILE_END, b"d" * 32), (frames.LIST_END, frames.encode_list_end(1, 0)),
                 (frames.ERROR, frames.encode_error(3, "bad"))]
        wire = b"".join([frames.frame(frames.ENTRIES, 1, entries), data_frame(2, body)]
                        + [frames.frame(op, 3, payload) for op, payload in small])
        proto, transport = connected(self.Counter)
        # Generous: the parser needs about 3 n (a buffer, its copy, the frame handed on);
        # plus, per batch, the small objects of each read (views, ints).
        limit = 8 * len(wire) + 1024 * (len(wire) // self.BATCH + 1)
        work = self.allocated(proto, wire, limit)
        self.assertLessEqual(work, limit, "work not linear in the bytes fed")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(proto.frames, [(frames.ENTRIES, 1, entries)]
                         + [(op, 3, payload) for op, payload in small])
        self.assertEqual(proto.data, [len(body)])


class CodecEdges(SynchronousTestCase):
    """Each side of a codec alone, exact messages, and sizes exactly on a boundary."""

    def test_entry_mode_masked_by_the_encoder(self) -> None:
        # The wire carries permission bits only (doc/protocol.md), whatever the decoder does.
        raw = frames.encode_entry(frames.KIND_FILE, 0o100644, 1, 2, b"x")
        self.assertEqual(raw, struct.pack(">BHQqH", frames.KIND_FILE, 0o644, 1, 2, 1) + b"x")

    def test_entry_mode_masked_by_the_decoder(self) -> None:
        raw = struct.pack(">BHQqH", frames.KIND_DIR, 0o40755, 0, 0, 1) + b"d"
        self.assertEqual(frames.decode_entries(raw)[0].mode, 0o755)

    def test_file_mode_masked_by_the_encoder(self) -> None:
        raw = frames.encode_file(FileHeader(1, 2, -3, 0o104755))
        self.assertEqual(raw, struct.pack(">QQqH", 1, 2, -3, 0o4755))

    def test_file_mode_masked_by_the_decoder(self) -> None:
        raw = struct.pack(">QQqH", 1, 2, -3, 0xFFFF)
        self.assertEqual(frames.decode_file(raw), FileHeader(1, 2, -3, 0o7777))

    def test_fetch_layout(self) -> None:
        self.assertEqual(frames.encode_fetch("é", 1, 2, 3),
                         struct.pack(">QQI", 1, 2, 3) + "é".encode())
        self.assertEqual(frames.decode_fetch(struct.pack(">QQI", 1, 2, 3)), (1, 2, 3, b""))

    def test_entry_with_an_empty_name_last(self) -> None:
        # Exactly one entry head left and a zero-length name: not truncated. (Names are
        # validated by mirror.paths, not here.)
        payload = (frames.encode_entry(frames.KIND_FILE, 0, 1, 1, b"a")
                   + frames.encode_entry(frames.KIND_FILE, 0, 1, 1, b""))
        self.assertEqual([e.name for e in frames.decode_entries(payload)], [b"a", b""])

    def test_error_layout(self) -> None:
        self.assertEqual(frames.encode_error(0x0102, "é"), b"\x01\x02" + "é".encode())

    def test_messages(self) -> None:
        good_entry = frames.encode_entry(frames.KIND_FILE, 0, 1, 1, b"name")
        cases = [
            (frames.decode_fetch, b"\x00" * 19, "FETCH frame too short"),
            (frames.decode_entries, b"", "empty ENTRIES frame"),
            (frames.decode_entries, good_entry[:20], "truncated LIST entry"),
            (frames.decode_entries, good_entry[:-1], "truncated LIST entry name"),
            (frames.decode_list_end, b"\x00" * 11, "bad LIST_END frame"),
            (frames.decode_file, b"\x00" * 25, "bad FILE frame"),
            (frames.decode_error, b"\x00", "bad ERROR frame"),
        ]
        for decode, payload, why in cases:
            with self.assertRaises(ProtocolError, msg=why) as cm:
                decode(payload)
            self.assertEqual(str(cm.exception), why)


class ReceiverBoundaries(SynchronousTestCase):
    """FrameReceiver seen from outside, on the boundaries a mutation run found untested.

    Black-box only (events, errors, the transport): they hold for any buffering strategy.
    """

    def test_data_request_id_with_the_high_bit(self) -> None:
        proto, transport = connected()
        proto.dataReceived(data_frame(0xFFFFFFFF, b"ab") + data_frame(0x80000000, b""))
        self.assertEqual(proto.events, [("data", 0xFFFFFFFF, b"ab"), ("data", 0x80000000, b"")])
        self.assertFalse(transport.disconnecting)

    def test_prefix_one_over_the_data_limit_refused_at_once(self) -> None:
        # 4 bytes say the frame is too big for any opcode: no waiting for the head.
        proto, transport = connected()
        proto.dataReceived(struct.pack(">I", Recorder.MAX_DATA_LENGTH + 5 + 1))
        self.assertTrue(transport.disconnected)
        self.assertEqual(proto.errors,
                         [f"frame of {Recorder.MAX_DATA_LENGTH + 6} bytes exceeds the limit"])

    def test_data_one_over_its_limit_when_other_frames_may_be_larger(self) -> None:
        class SmallData(Recorder):
            MAX_LENGTH = 1024
            MAX_DATA_LENGTH = 100

        proto, transport = connected(SmallData)
        proto.dataReceived(data_frame(1, b"x" * 100) + frames.data_header(2, 101) + b"y")
        self.assertEqual(proto.merged(), [("data", 1, b"x" * 100, "open")])
        self.assertTrue(transport.disconnected)
        self.assertEqual(proto.errors, ["frame of 106 bytes exceeds the limit"])

    def test_data_refused_when_the_subclass_takes_none(self) -> None:
        class NoDataHandler(frames.FrameReceiver):
            MAX_DATA_LENGTH = 100

            def __init__(self) -> None:
                self.errors: list[str] = []

            def stringReceived(self, frame: bytes) -> None:
                raise AssertionError("no frame expected")

            def frameError(self, reason: str) -> None:
                self.errors.append(reason)
                super().frameError(reason)

        proto = NoDataHandler()
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(data_frame(1, b"abc"))
        self.assertTrue(transport.disconnected)
        self.assertEqual(proto.errors, ["unexpected DATA frame"])


class Buffering(SynchronousTestCase):
    """What the linear buffer promises, seen from outside: each frame is handed on as soon as
    its last byte is read, a bad prefix as soon as its fourth, pieces are read-only, and no
    read is kept once parsed (found by the mutation run after the rewrite)."""

    class Keeper(Recorder):
        """Also keeps every DATA piece as it was handed on (the view itself)."""

        def __init__(self) -> None:
            super().__init__()
            self.pieces: list[memoryview] = []

        def dataFrameReceived(self, request_id: int, piece: memoryview) -> None:
            super().dataFrameReceived(request_id, piece)
            self.pieces.append(piece)

    def test_each_frame_handed_on_at_its_last_byte(self) -> None:
        # Frames of 9 bytes (a head and nothing else) and longer, fed a byte per read.
        wire = [frames.frame(frames.LIST_END, 1), data_frame(3, b""),
                frames.frame(frames.FILE_END, 2, b"d" * 32), data_frame(4, b""),
                frames.frame(frames.LIST_END, 5)]
        proto, transport = connected()
        for count, frame_bytes in enumerate(wire):
            for i in range(len(frame_bytes)):
                self.assertEqual(len(proto.events), count, (count, i))
                proto.dataReceived(frame_bytes[i : i + 1])
            self.assertEqual(len(proto.events), count + 1, count)
        self.assertFalse(transport.disconnecting)

    def test_bad_prefix_refused_at_its_fourth_byte(self) -> None:
        for prefix in (struct.pack(">I", Recorder.MAX_DATA_LENGTH + 6), struct.pack(">I", 4)):
            proto, transport = connected()
            for i in range(3):
                proto.dataReceived(prefix[i : i + 1])
            self.assertFalse(transport.disconnecting)
            proto.dataReceived(prefix[3:])
            self.assertTrue(transport.disconnected, prefix)
            self.assertEqual(len(proto.errors), 1)

    def test_pieces_are_read_only(self) -> None:
        # Sinks keep pieces (queued for a disk write): none may be a view of a buffer that
        # is writable, whether the frame came in one read, was completed from the buffer,
        # or was held while paused.
        wire = data_frame(1, b"abcdef") + frames.frame(frames.LIST_END, 2) + data_frame(3, b"gh")
        for cut in (len(wire), 5, 12, 20):
            proto, transport = connected(self.Keeper)
            proto.pause_on = frames.LIST_END
            proto.dataReceived(wire[:cut])
            proto.dataReceived(wire[cut:])
            proto.pause_on = None
            proto.resumeProducing()
            self.assertEqual(b"".join(bytes(p) for p in proto.pieces), b"abcdefgh", cut)
            self.assertTrue(all(p.readonly for p in proto.pieces), cut)

    def test_rest_of_a_paused_read_is_not_copied(self) -> None:
        # Held as it came while paused: the pieces handed on after resuming are views of the
        # read itself, not of a copy made at the pause or at the resume.
        wire = frames.frame(frames.LIST_END, 1) + data_frame(2, b"abc") + data_frame(3, b"d")
        proto, transport = connected(self.Keeper)
        proto.pause_on = frames.LIST_END
        proto.dataReceived(wire)
        self.assertEqual(proto.pieces, [])
        proto.pause_on = None
        proto.resumeProducing()
        self.assertEqual([bytes(p) for p in proto.pieces], [b"abc", b"d"])
        self.assertTrue(all(p.obj is wire for p in proto.pieces))

    def test_no_read_kept_once_parsed(self) -> None:
        # A bytearray read cannot be resized while a view of it exists: clear() fails if the
        # parser still holds one (which would pin every read until the next one came).
        proto, transport = connected()
        for chunk in (SAMPLE_STREAM, data_frame(1, b"xy"), frames.frame(frames.LIST_END, 1)):
            read = bytearray(chunk)
            proto.dataReceived(read)
            read.clear()
        self.assertFalse(transport.disconnecting)
        read = bytearray(frames.frame(frames.LIST_END, 1) + frames.frame(0x7F, 2)
                         + frames.frame(frames.LIST_END, 3))
        proto.dataReceived(read)  # the second frame breaks the connection
        self.assertEqual(proto.errors, ["bad opcode"])
        read.clear()


class ListAndBundleEdges(SynchronousTestCase):
    """The LIST error entry, FETCH_MANY and BUNDLE codecs: exact messages, exact layouts, and
    sizes exactly on a boundary (each found by a mutant that the round trips let live)."""

    HEADER = FileHeader(5, 5, -7, 0o640)
    DIGEST = digest_of(b"hello")

    def assert_refused(self, decode: Any, cases: list[tuple[bytes, str]]) -> None:
        for payload, why in cases:
            with self.assertRaises(ProtocolError, msg=why) as cm:
                decode(payload)
            self.assertEqual(str(cm.exception), why)

    # -- LIST error entries ---------------------------------------------------------------

    def test_error_entry_layout(self) -> None:
        # doc/protocol.md: `3 code 0:uint64 0:int64 name_len name msg_len msg`.
        self.assertEqual(frames.encode_error_entry(frames.E_IO, b"d/e", "no é"),
                         struct.pack(">BHQqH", frames.KIND_ERROR, frames.E_IO, 0, 0, 3)
                         + b"d/e" + struct.pack(">H", 5) + "no é".encode())

    def test_error_entry_last_in_the_frame(self) -> None:
        """An error entry ending exactly at the frame's end, with or without a message, is
        whole; decoded, its size and mtime are 0 as for any error entry."""
        for message in ("", "gone"):
            raw = (frames.encode_entry(frames.KIND_FILE, 0o644, 3, 5, b"a")
                   + frames.encode_error_entry(frames.E_NOT_FOUND, b"d", message))
            self.assertEqual(frames.decode_entries(raw), [
                frames.Entry(frames.KIND_FILE, 0o644, 3, 5, b"a"),
                frames.Entry(frames.KIND_ERROR, frames.E_NOT_FOUND, 0, 0, b"d", message),
            ])

    def test_error_entry_fields_ignored_on_decoding(self) -> None:
        # A peer's size and mtime in an error entry mean nothing: read as 0.
        raw = (struct.pack(">BHQqH", frames.KIND_ERROR, frames.E_IO, 7, -9, 1) + b"d"
               + struct.pack(">H", 2) + b"io")
        self.assertEqual(frames.decode_entries(raw),
                         [frames.Entry(frames.KIND_ERROR, frames.E_IO, 0, 0, b"d", "io")])

    def test_error_entry_message_not_utf8(self) -> None:
        """A message that is not UTF-8 is shown, made printable, never refused."""
        raw = (struct.pack(">BHQqH", frames.KIND_ERROR, frames.E_IO, 0, 0, 1) + b"d"
               + struct.pack(">H", 6) + b"bad\xff\xfe\x1b")
        [entry] = frames.decode_entries(raw)
        self.assertTrue(entry.message.startswith("bad"), entry.message)
        self.assertTrue(entry.message.isprintable(), entry.message)

    def test_error_entry_messages(self) -> None:
        raw = frames.encode_error_entry(frames.E_IO, b"d", "reason")
        head = struct.calcsize(">BHQqH") + 1
        self.assert_refused(frames.decode_entries, [
            (raw[:head], "truncated LIST error entry"),
            (raw[:head + 1], "truncated LIST error entry"),
            (raw[:head + 2], "truncated LIST error entry message"),
            (raw[:-1], "truncated LIST error entry message"),
        ])

    # -- FETCH_MANY -----------------------------------------------------------------------

    def wants_of(self, *needs: int) -> list[tuple[bytes, int]]:
        """Wants taking exactly ``needs`` bytes each in a FETCH_MANY."""
        overhead = frames.want_size(b"")
        return [(b"p" * (need - overhead), 1) for need in needs]

    def test_request_filled_exactly(self) -> None:
        """Files that take exactly the room go in one FETCH_MANY, which is then exactly
        `MAX_REQUEST` long; one byte more and the last file goes in a second one."""
        room = frames.fetch_many_room()
        wants = self.wants_of(4000, room - 4000)
        self.assertEqual(frames.split_fetch_many(wants), [(0, 2)])
        request = frames.frame(frames.FETCH_MANY, 1, frames.encode_fetch_many(0, wants))
        self.assertEqual(len(request) - 4, frames.MAX_REQUEST)
        self.assertEqual(frames.split_fetch_many(self.wants_of(4000, room - 3999)),
                         [(0, 1), (1, 2)])

    def test_second_request_filled_exactly(self) -> None:
        # The count of bytes used starts again from nothing in each request.
        room = frames.fetch_many_room()
        wants = self.wants_of(5000, 4000, room - 4000, 10)
        self.assertEqual(frames.split_fetch_many(wants), [(0, 1), (1, 3), (3, 4)])

    def test_oversized_file_gets_a_request_of_its_own(self) -> None:
        """A file larger than the room (none is: paths are at most 4 KiB) still gets a
        range of its own, never an empty one (a FETCH_MANY of no file is refused)."""
        room = frames.fetch_many_room()
        self.assertEqual(frames.split_fetch_many(self.wants_of(room + 1)), [(0, 1)])
        self.assertEqual(frames.split_fetch_many(self.wants_of(20, room + 1, 20)),
                         [(0, 1), (1, 2), (2, 3)])

    def test_fetch_many_messages(self) -> None:
        good = frames.encode_fetch_many(0, [(b"ab", 1), (b"c", 2)])
        self.assert_refused(frames.decode_fetch_many, [
            (good[:5], "FETCH_MANY frame too short"),
            (frames.encode_fetch_many(0, []), "FETCH_MANY of no file"),
            (good[:6 + 9], "truncated FETCH_MANY"),
            (good[:-1], "truncated FETCH_MANY path"),
            (good + b"z", "FETCH_MANY longer than its files"),
        ])

    # -- BUNDLE ---------------------------------------------------------------------------

    def test_bundle_messages(self) -> None:
        file_item = frames.encode_bundle_file(0, self.HEADER, self.DIGEST, b"hello")
        error_item = frames.encode_bundle_error(0, 1, "gone")
        self.assert_refused(frames.decode_bundle, [
            (b"", "empty BUNDLE frame"),
            (file_item[:2], "truncated BUNDLE item"),
            # A few bytes after a whole item: too few for the next item's head.
            (file_item + file_item[:2], "truncated BUNDLE item"),
            (file_item[:3 + 18 + 31], "truncated BUNDLE file header"),
            (file_item[:-1], "truncated BUNDLE file"),
            (error_item[:5], "truncated BUNDLE error"),
            (error_item[:-1], "truncated BUNDLE error message"),
        ])

    def test_bundle_error_without_message_last(self) -> None:
        """An error item with an empty message ending exactly at the frame's end is whole."""
        payload = (frames.encode_bundle_file(0, self.HEADER, self.DIGEST, b"hello")
                   + frames.encode_bundle_error(1, frames.E_IO, ""))
        a, b = frames.decode_bundle(payload)
        self.assertEqual((b.index, b.code, b.error), (1, frames.E_IO, ""))
        self.assertEqual(bytes(a.data), b"hello")
