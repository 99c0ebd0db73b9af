"""The control-protocol codec: the lines of doc/protocol.md, and what is refused."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mirror.wire.control import (
    MAX_COUNT,
    MAX_ELAPSED,
    MAX_LINE,
    BwLimit,
    ControlError,
    Done,
    Go,
    JobAccepted,
    Progress,
    Refused,
    ServerEvent,
    SourceDone,
    SourceError,
    SourceRequest,
    encode_bwlimit,
    encode_event,
    encode_go,
    encode_source,
    parse_client_line,
    parse_server_line,
)


class ClientLineTests(SynchronousTestCase):
    def test_source(self) -> None:
        self.assertEqual(
            parse_client_line(b"SOURCE files.example 8000 pub/docs 0.5"),
            SourceRequest("files.example", 8000, "pub/docs", 0.5),
        )

    def test_crlf_accepted(self) -> None:
        self.assertEqual(parse_client_line(b"GO\r"), Go())
        self.assertEqual(parse_client_line(b"SOURCE h 1 a 0\r").path, "a")

    def test_whole_export_spellings(self) -> None:
        for raw in (b".", b"/", b"%2E", b"%2F"):
            self.assertEqual(parse_client_line(b"SOURCE h 1 " + raw + b" 0").path, "")

    def test_path_rejoined(self) -> None:
        self.assertEqual(parse_client_line(b"SOURCE h 1 /a/b/ 0").path, "a/b")

    def test_percent_decoded(self) -> None:
        line = b"SOURCE ::1 65535 my%20dir/%C3%A9t%C3%A9:x 2"
        self.assertEqual(
            parse_client_line(line), SourceRequest("::1", 65535, "my dir/\u00e9t\u00e9:x", 2.0)
        )

    def test_encode_source(self) -> None:
        req = SourceRequest("h", 80, "a b/\u00fc", 0.25)
        self.assertEqual(encode_source(req), b"SOURCE h 80 a%20b/%C3%BC 0.25")
        self.assertEqual(encode_source(SourceRequest("h", 80, "", 0)), b"SOURCE h 80 . 0.0")
        self.assertEqual(encode_go(), b"GO")

    def test_bwlimit(self) -> None:
        self.assertEqual(encode_bwlimit(BwLimit(1 << 20)), b"BWLIMIT 1048576")
        self.assertEqual(parse_client_line(b"BWLIMIT 1048576\r"), BwLimit(1 << 20))
        self.assertEqual(parse_client_line(b"BWLIMIT %d" % MAX_COUNT), BwLimit(MAX_COUNT))
        for bad in (b"BWLIMIT", b"BWLIMIT 0", b"BWLIMIT -1", b"BWLIMIT 1K", b"BWLIMIT 1 2",
                    b"BWLIMIT %d" % (MAX_COUNT + 1), b"BWLIMIT +5"):
            with self.subTest(line=bad), self.assertRaises(ControlError):
                parse_client_line(bad)
        for rate in (0, -1, MAX_COUNT + 1):
            with self.subTest(rate=rate), self.assertRaises(ControlError):
                encode_bwlimit(BwLimit(rate))

    def test_encode_small_delay_without_exponent(self) -> None:
        line = encode_source(SourceRequest("h", 80, "x", 1e-05))
        self.assertEqual(line, b"SOURCE h 80 x 0.00001")
        self.assertEqual(parse_client_line(line).delay, 1e-05)

    def test_encode_normalises_path(self) -> None:
        self.assertEqual(encode_source(SourceRequest("h", 80, "/a/", 0)), b"SOURCE h 80 a 0.0")

    def test_refused_lines(self) -> None:
        bad = [
            b"",
            b"GO now",
            b"go",
            b"HELLO",
            b"SOURCE h 1 a",
            b"SOURCE h 1 a 0 extra",
            b"SOURCE  1 a 0",  # empty host
            b"SOURCE h/x 1 a 0",
            b"SOURCE [::1] 1 a 0",
            b"SOURCE h\x01 1 a 0",
            b"SOURCE h 0 a 0",
            b"SOURCE h 65536 a 0",
            b"SOURCE h +1 a 0",
            b"SOURCE h 1_0 a 0",
            "SOURCE h \u0661 a 0".encode(),
            b"SOURCE h 1  0",  # empty path field
            b"SOURCE h 1 ../etc 0",
            b"SOURCE h 1 a/../b 0",
            b"SOURCE h 1 %2E%2E 0",
            b"SOURCE h 1 a%00b 0",
            b"SOURCE h 1 a%5Cb 0",  # backslash
            b"SOURCE h 1 .mirror-tmp-x 0",
            b"SOURCE h 1 a%2 0",
            b"SOURCE h 1 a%zz 0",
            b"SOURCE h 1 %FF 0",  # invalid UTF-8
            b"SOURCE h 1 \xc3\xa9 0",  # raw non-ASCII must be percent-encoded
            b"SOURCE h 1 a -1",
            b"SOURCE h 1 a nan",
            b"SOURCE h 1 a inf",
            b"SOURCE h 1 a 1e3",
            b"SOURCE h 1 a 86400.5",
            b"SOURCE h 1 a .5",
            b"x" * (MAX_LINE + 1),
        ]
        for line in bad:
            with self.assertRaises(ControlError, msg=repr(line)):
                parse_client_line(line)

    def test_encode_refuses_invalid(self) -> None:
        for req in (
            SourceRequest("", 1, "a", 0),
            SourceRequest("a b", 1, "a", 0),
            SourceRequest("h", 0, "a", 0),
            SourceRequest("h", 1, "..", 0),
            SourceRequest("h", 1, "a", -1),
            SourceRequest("h", 1, "a", float("nan")),
        ):
            with self.assertRaises(ControlError, msg=repr(req)):
                encode_source(req)

    def test_error_messages_are_one_line(self) -> None:
        with self.assertRaises(ControlError) as cm:
            parse_client_line(b"SOURCE h 1 a\n\x1b[2J 0")
        self.assertNotIn("\n", str(cm.exception))
        self.assertNotIn("\x1b", str(cm.exception))

    def test_error_messages_show_fields_by_the_one_rule(self) -> None:
        # mirror.text.printable: bad UTF-8 as \xNN, controls escaped, quoted and short.
        with self.assertRaises(ControlError) as cm:
            parse_client_line(b"SOURCE h\xff\x1b 1 a 0")
        self.assertEqual(str(cm.exception), "host is not valid UTF-8: 'h\\xff\\x1b'")
        with self.assertRaises(ControlError) as cm:
            parse_client_line(b"SOURCE h\xe2\x80\xae 1 a 0")
        self.assertEqual(str(cm.exception), "host has a space or control character: 'h\\u202e'")
        # A hostile path (a percent-encoded name thousands of characters long) stays short.
        with self.assertRaises(ControlError) as cm:
            parse_client_line(b"SOURCE h 1 " + b"../" * 3000 + b"%1B 0")
        self.assertLess(len(str(cm.exception)), 200)
        self.assertTrue(str(cm.exception).startswith("bad path '../../"), str(cm.exception))


class ServerLineTests(SynchronousTestCase):
    def test_each_event(self) -> None:
        cases: dict[bytes, ServerEvent] = {
            b"JOB 42": JobAccepted("42"),
            b"PROGRESS 1 2 3 4 0": Progress(1, 2, 3, 4, False),
            b"PROGRESS 0 0 0 0 1": Progress(0, 0, 0, 0, True),
            b"ERROR 3 - connection%20refused": SourceError(3, None, "connection refused"),
            b"ERROR 0 a/b%20c not%20found": SourceError(0, "a/b c", "not found"),
            b"SOURCE-DONE 1 ok 2 1 10 58 4 0 1.5 7": SourceDone(1, True, 2, 1, 10, 58, 4, 0, 1.5,
                                                                  7),
            b"SOURCE-DONE 0 failed 0 0 0 0 0 3 0.0 0": SourceDone(0, False, 0, 0, 0, 0, 0, 3,
                                                                  0.0),
            b"DONE ok": Done(True),
            b"DONE failed": Done(False),
            b"REFUSED GO%20without%20any%20SOURCE": Refused("GO without any SOURCE"),
        }
        for line, event in cases.items():
            self.assertEqual(parse_server_line(line), event)
            self.assertEqual(encode_event(event), line)

    def test_dash_path_distinct_from_whole_source(self) -> None:
        self.assertEqual(encode_event(SourceError(0, "-", "m")), b"ERROR 0 %2D m")
        self.assertEqual(parse_server_line(b"ERROR 0 %2D m").path, "-")
        self.assertIsNone(parse_server_line(b"ERROR 0 - m").path)
        self.assertEqual(encode_event(SourceError(0, "", "m")), b"ERROR 0 . m")
        self.assertEqual(parse_server_line(b"ERROR 0 . m").path, "")
        self.assertEqual(parse_server_line(encode_event(SourceError(0, ".", "m"))).path, ".")

    def test_empty_messages(self) -> None:
        self.assertEqual(encode_event(Refused("")), b"REFUSED ")
        self.assertEqual(parse_server_line(b"REFUSED "), Refused(""))
        self.assertEqual(parse_server_line(b"ERROR 0 - \r"), SourceError(0, None, ""))

    def test_big_sums_exact(self) -> None:
        size = 2**62
        ev = SourceDone(0, True, 3, 0, 3 * size, 3 * size * size, 0, 0, 12.25)
        self.assertEqual(parse_server_line(encode_event(ev)), ev)

    def test_refused_lines(self) -> None:
        bad = [
            b"",
            b"JOB",
            b"JOB a b",
            b"JOB \xff",
            b"PROGRESS 1 2 3 4",
            b"PROGRESS 1 2 3 4 2",
            b"PROGRESS -1 2 3 4 0",
            b"PROGRESS 1 2 3 0x4 0",
            b"PROGRESS 1 2 3 4 0 ",
            b"PROGRESS 1  2 3 4 0",
            b"PROGRESS " + b"9" * 100 + b" 0 0 0 0",
            b"ERROR 64 - m",  # index beyond MAX_SOURCES
            b"ERROR x - m",
            b"ERROR 0  m",
            b"ERROR 0 - m extra",
            b"ERROR 0 - %C3",  # truncated UTF-8
            b"ERROR 0 - a%",
            b"SOURCE-DONE 0 yes 0 0 0 0 0 0 0 0",
            b"SOURCE-DONE 0 ok 0 0 0 0 0 0",
            b"SOURCE-DONE 0 ok 0 0 0 0 0 0 1",  # without not-exported
            b"SOURCE-DONE 0 ok 0 0 0 0 0 0 1 -1",
            b"SOURCE-DONE 0 ok 0 0 0 0 0 0 1 0 0",
            b"SOURCE-DONE 0 ok 0 0 0 0 0 0 -1 0",
            b"SOURCE-DONE 0 ok 0 0 0 0 0 0 inf 0",
            b"SOURCE-DONE 0 ok 0 0 5 25 0 0 1 0",  # bytes without files
            b"SOURCE-DONE 0 ok 1 0 3 4 0 0 1 0",  # 3**2 != 4: impossible for one file
            b"SOURCE-DONE 0 ok 2 0 10 101 0 0 1 0",  # sum_sq > bytes**2
            b"DONE",
            b"DONE OK",
            b"REFUSED",
            b"REFUSED a b",
            b"done ok",
            b"\x00\xff",
        ]
        for line in bad:
            with self.assertRaises(ControlError, msg=repr(line)):
                parse_server_line(line)

    def test_numbers_out_of_range_are_refused(self) -> None:
        """A hostile server's absurd figures never reach the display (issue 7)."""
        huge = str(MAX_COUNT + 1).encode()
        bad = [
            # Elapsed times hundreds of digits long, or just past the limit.
            b"SOURCE-DONE 0 ok 0 0 0 0 0 0 " + b"9" * 300,
            b"SOURCE-DONE 0 ok 0 0 0 0 0 0 " + b"9" * 200 + b".5",
            b"SOURCE-DONE 0 ok 0 0 0 0 0 0 1000000000.001",
            # Counts and byte figures beyond 64 bits.
            b"PROGRESS " + huge + b" 0 0 0 1",
            b"PROGRESS 0 " + huge + b" 0 0 1",
            b"PROGRESS 0 0 " + huge + b" 0 1",
            b"PROGRESS 0 0 0 " + huge + b" 1",
            b"SOURCE-DONE 0 ok 0 " + huge + b" 0 0 0 0 1",
            b"SOURCE-DONE 0 ok 1 0 " + huge + b" " + str((MAX_COUNT + 1) ** 2).encode()
            + b" 0 0 1",
            b"SOURCE-DONE 0 ok 0 0 0 0 " + huge + b" 0 1",
            b"SOURCE-DONE 0 ok 0 0 0 0 0 " + huge + b" 1",
        ]
        for line in bad:
            with self.assertRaises(ControlError, msg=line[:60]) as caught:
                parse_server_line(line)
            self.assertLess(len(str(caught.exception)), 200)

    def test_numbers_at_their_limits_are_taken(self) -> None:
        m = MAX_COUNT
        self.assertEqual(parse_server_line(encode_event(Progress(m, m, m, m, True))),
                         Progress(m, m, m, m, True))
        ev = SourceDone(0, True, 1, m, m, m * m, m, m, MAX_ELAPSED)
        self.assertEqual(parse_server_line(encode_event(ev)), ev)

    def test_encode_refuses_numbers_out_of_range(self) -> None:
        for ev in (Progress(MAX_COUNT + 1, 0, 0, 0, True),
                   SourceDone(0, True, 0, 0, 0, 0, 0, 0, MAX_ELAPSED * 2),
                   SourceDone(0, True, 0, 0, 0, 0, 0, MAX_COUNT + 1, 1.0)):
            self.assertRaises(ControlError, encode_event, ev)

    def test_lines_fit_even_with_huge_fields(self) -> None:
        long_path = "\u00e9" * 40000  # a hostile name far over any limit
        line = encode_event(SourceError(5, long_path, "x" * 50000))
        self.assertLessEqual(len(line) + 2, MAX_LINE)
        ev = parse_server_line(line)
        self.assertTrue(ev.path.endswith("\u2026"))
        self.assertTrue(long_path.startswith(ev.path[:-1]))
        line = encode_event(Refused("\u2603" * 20000))
        self.assertLessEqual(len(line) + 2, MAX_LINE)
        self.assertTrue(parse_server_line(line).message.endswith("\u2026"))

    def test_long_valid_path_kept_whole(self) -> None:
        path = "/".join(["\u00e9" * 127] * 16)  # 4079 bytes of UTF-8, 12k percent-encoded
        ev = SourceError(0, path, "failed")
        self.assertEqual(parse_server_line(encode_event(ev)), ev)

    def test_undecodable_name_still_encodes(self) -> None:
        # A server-side name held as surrogate escapes must not crash the encoder.
        line = encode_event(SourceError(0, "bad\udcffname", "m"))
        self.assertIn(b"%5Cudcff", line)

    def test_encode_refuses_invalid(self) -> None:
        for ev in (
            JobAccepted(""),
            JobAccepted("a b"),
            Progress(-1, 0, 0, 0, False),
            SourceError(64, None, "m"),
            SourceDone(0, True, 1, 0, 3, 4, 0, 0, 1.0),
            SourceDone(0, True, 0, 0, 0, 0, 0, 0, float("inf")),
            object(),
        ):
            with self.assertRaises(ControlError, msg=repr(ev)):
                encode_event(ev)  # type: ignore[arg-type]
