"""Property tests of the frame codecs and the receiver: garbage never crashes, chunking never
changes what is delivered."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mirror.wire import frames
from mirror.wire.frames import FileHeader, ProtocolError
from tests.unit.test_frames import Recorder, connected, data_frame

FUZZ = settings(deadline=None, max_examples=200)

u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)

entry = st.builds(
    lambda kind, mode, size, mtime, name: (kind, mode, size, mtime, name),
    st.sampled_from([frames.KIND_DIR, frames.KIND_FILE]), u16, u64, i64,
    st.binary(max_size=300),
)

# A valid stream of frames, as the events a Recorder should see.
response_frame = st.one_of(
    st.tuples(st.sampled_from(sorted(frames.RESPONSE_OPCODES - {frames.DATA})), u32,
              st.binary(max_size=Recorder.MAX_LENGTH - 5)),
    st.tuples(st.just(frames.DATA), u32, st.binary(max_size=Recorder.MAX_DATA_LENGTH)),
)


class ReceiverProperties(SynchronousTestCase):
    @FUZZ
    @given(st.binary(max_size=2000), st.integers(1, 64))
    def test_garbage_never_raises(self, data: bytes, chunk: int) -> None:
        proto, transport = connected()
        for i in range(0, len(data), chunk):
            proto.dataReceived(data[i : i + chunk])  # must not raise
        if transport.disconnected:
            self.assertEqual(len(proto.errors), 1)
        else:
            self.assertEqual(proto.errors, [])
        # Whatever was delivered respects the limits.
        for ev in proto.events:
            if ev[0] == "frame":
                self.assertLessEqual(5 + len(ev[3]), Recorder.MAX_LENGTH)

    @FUZZ
    @given(st.lists(response_frame, max_size=12), st.data())
    def test_chunking_does_not_matter(self, stream: list[tuple[int, int, bytes]],
                                      data: st.DataObject) -> None:
        wire = b"".join(data_frame(rid, body) if op == frames.DATA else frames.frame(op, rid, body)
                        for op, rid, body in stream)
        whole, t1 = connected()
        whole.dataReceived(wire)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=20)))
        pieces, prev = [], 0
        for cut in cuts + [len(wire)]:
            pieces.append(wire[prev:cut])
            prev = cut
        chunked, t2 = connected()
        for piece in pieces:
            chunked.dataReceived(piece)
        self.assertFalse(t1.disconnecting or t2.disconnecting)
        self.assertEqual(whole.merged(), chunked.merged())
        # And what came out is what went in.
        delivered = [(ev[1], ev[2]) if ev[0] == "data" else (ev[1], ev[2], ev[3])
                     for ev in whole.events]
        expected = [(rid, body) if op == frames.DATA else (op, rid, body)
                    for op, rid, body in stream]
        self.assertEqual(delivered, expected)


class DecoderProperties(SynchronousTestCase):
    def only_protocol_error(self, decode, payload: bytes) -> None:
        try:
            decode(payload)
        except ProtocolError:
            pass

    @FUZZ
    @given(st.binary(max_size=400))
    def test_decode_entries(self, payload: bytes) -> None:
        self.only_protocol_error(frames.decode_entries, payload)

    @FUZZ
    @given(st.binary(max_size=64))
    def test_decode_small_frames(self, payload: bytes) -> None:
        for decode in (frames.decode_file, frames.decode_fetch, frames.decode_error,
                       frames.decode_list_end):
            self.only_protocol_error(decode, payload)

    @FUZZ
    @given(st.binary(max_size=2000))
    def test_decode_error_message_is_printable_and_short(self, payload: bytes) -> None:
        try:
            _code, message = frames.decode_error(payload)
        except ProtocolError:
            self.assertLess(len(payload), 2)
            return
        self.assertTrue(message == "" or message.isprintable())
        self.assertLessEqual(len(message), 1024)

    @FUZZ
    @given(st.lists(entry, min_size=1, max_size=10))
    def test_entries_round_trip(self, items: list[tuple]) -> None:
        payload = b"".join(frames.encode_entry(*item) for item in items)
        got = frames.decode_entries(payload)
        self.assertEqual(got, [frames.Entry(k, m & 0o7777, s, t, n) for k, m, s, t, n in items])

    @FUZZ
    @given(u64, u64, i64, u16)
    def test_file_round_trip(self, size: int, file_size: int, mtime: int, mode: int) -> None:
        got = frames.decode_file(frames.encode_file(FileHeader(size, file_size, mtime, mode)))
        self.assertEqual(got, FileHeader(size, file_size, mtime, mode & 0o7777))

    @FUZZ
    @given(u64, u64, u32, st.text(max_size=50))
    def test_fetch_round_trip(self, offset: int, length: int, delay: int, path: str) -> None:
        try:
            raw = path.encode("utf-8")
        except UnicodeEncodeError:
            return
        self.assertEqual(frames.decode_fetch(frames.encode_fetch(path, offset, length, delay)),
                         (offset, length, delay, raw))

    @FUZZ
    @given(u64, st.integers(0, 2**40))
    def test_list_end_round_trip(self, count: int, skipped: int) -> None:
        self.assertEqual(frames.decode_list_end(frames.encode_list_end(count, skipped)),
                         (count, min(skipped, 2**32 - 1)))

    @FUZZ
    @given(u16, st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp",
                                                                       "Cf", "Co", "Cn", "Zs")),
                        max_size=100))
    def test_error_round_trip(self, code: int, message: str) -> None:
        self.assertEqual(frames.decode_error(frames.encode_error(code, message)), (code, message))

