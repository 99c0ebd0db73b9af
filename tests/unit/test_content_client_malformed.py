"""Content client: frames too short for their opcode and responses for id 0 fail the connection."""

from __future__ import annotations

from mirror.mirror_server.content_client import TransferError
from mirror.wire import frames
from tests.unit.test_content_client import ClientTestCase, data_frame, file_frame


class MalformedFrames(ClientTestCase):
    def assert_connection_failed(self, ds) -> None:
        for d in ds:
            self.assertIn("protocol error", str(self.failureResultOf(d, TransferError).value))
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.client.load, 0)

    def test_error_frame_too_short(self) -> None:
        # stringReceived calls frames.decode_error outside its try/except ProtocolError:
        # the ProtocolError escapes dataReceived (in a reactor: logged as a bug and the
        # connection dropped as an unhandled error) instead of a clean protocol abort.
        for payload in (b"", b"\x00"):
            self.setUp()
            d1, _, rid = self.fetch("a")
            d2, _, _ = self.list("b")
            self.feed(frames.frame(frames.ERROR, rid, payload))  # must not raise
            self.assert_connection_failed([d1, d2])

    def test_response_for_id_zero(self) -> None:
        # Ids start at 1, so 0 was never sent; responses for ids below _next_id are ignored
        # as "late answers to failed requests", id 0 included.
        d1, _, _ = self.fetch("a")
        self.feed(file_frame(0, 1), data_frame(0, b"x"))
        self.assert_connection_failed([d1])

    def test_file_end_too_short(self) -> None:
        # A FILE_END shorter than a digest is a frame too short for its opcode: the
        # framing is suspect, so every request fails and the connection is aborted (today
        # only that request fails with "malformed digest").
        d1, _, rid = self.fetch("a")
        d2, _, _ = self.list("b")
        self.feed(file_frame(rid, 1), data_frame(rid, b"x"),
                  frames.frame(frames.FILE_END, rid, b"\x00" * 10))
        self.assert_connection_failed([d1, d2])

