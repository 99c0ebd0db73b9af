"""mirror.text.printable: the one rule for showing untrusted text."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mirror.text import DEFAULT_LIMIT, ELLIPSIS, printable


class Printable(SynchronousTestCase):
    def test_plain_text_unchanged(self) -> None:
        for text in ("", "docs/readme.txt", "name with spaces",
                     "caf\u00e9 \u65e5\u672c \U0001f600"):
            self.assertEqual(printable(text), text)
            self.assertEqual(printable(text.encode("utf-8")), text)

    def test_c0_controls_del_and_c1_controls(self) -> None:
        self.assertEqual(printable("a\x00b\x07c\x1fd\x7fe\x85f\x9bg"),
                         "a\\x00b\\x07c\\x1fd\\x7fe\\x85f\\x9bg")
        self.assertEqual(printable("tab\tnl\ncr\r"), "tab\\tnl\\ncr\\r")

    def test_every_control_character_escaped(self) -> None:
        for code in [*range(0x20), *range(0x7F, 0xA0)]:
            shown = printable(chr(code))
            self.assertTrue(shown.startswith("\\") and shown.isascii(), (code, shown))

    def test_ansi_escape_sequences(self) -> None:
        shown = printable("x\x1b[2J\x1b[31mred\x1b]0;title\x07")
        self.assertEqual(shown, "x\\x1b[2J\\x1b[31mred\\x1b]0;title\\x07")
        self.assertNotIn("\x1b", shown)

    def test_bidi_and_invisible_format_characters(self) -> None:
        # RLO would show "txt.exe" as "exe.txt"; isolates, ZWSP, BOM, line separator hide text.
        self.assertEqual(printable("a\u202etxt.exe"), "a\\u202etxt.exe")
        for ch in "\u200b\u200e\u2066\u2069\ufeff\u2028\u2029\u00a0\ue000":
            self.assertEqual(printable(ch), f"\\u{ord(ch):04x}" if ord(ch) > 0xFF
                             else f"\\x{ord(ch):02x}")
        self.assertEqual(printable("\U000e0041"), "\\U000e0041")  # a TAG character

    def test_invalid_utf8_bytes_shown_as_hex(self) -> None:
        self.assertEqual(printable(b"ok\xff\xfe"), "ok\\xff\\xfe")
        self.assertEqual(printable(b"\xed\xa0\x80"), "\\xed\\xa0\\x80")  # an encoded surrogate
        self.assertEqual(printable(b"\xc3"), "\\xc3")  # a character cut short
        self.assertEqual(printable(b"caf\xc3\xa9\x1b"), "caf\u00e9\\x1b")

    def test_lone_surrogate_in_text(self) -> None:
        # e.g. a name decoded with surrogateescape: the output must still encode to UTF-8.
        shown = printable("a\udcffb\ud800")
        self.assertEqual(shown, "a\\udcffb\\ud800")
        shown.encode("utf-8")

    def test_bytes_and_text_alike(self) -> None:
        for text in ("plain", "e\u0301\u202e\x1b[2J\n", "\U0001f600\x85"):
            self.assertEqual(printable(text.encode("utf-8")), printable(text))
        self.assertEqual(printable(bytearray(b"a\x1b")), "a\\x1b")
        self.assertEqual(printable(memoryview(b"a\x1b")), "a\\x1b")

    def test_output_is_printable_and_stable(self) -> None:
        # Escaping twice (content server, then mirror-init) must not double the backslashes.
        for raw in (b"\x1b[2J\xff\r\n", "a\\x1b\u202e", "\\", "x" * 5000):
            once = printable(raw)
            self.assertTrue(once.isprintable(), once)
            self.assertEqual(printable(once), once)
        self.assertEqual(printable("a\\b"), "a\\b")

    def test_long_input_truncated(self) -> None:
        shown = printable("x" * 5000)
        self.assertEqual(shown, "x" * (DEFAULT_LIMIT - 1) + ELLIPSIS)
        self.assertEqual(printable("abcdef", 4), "abc" + ELLIPSIS)
        self.assertEqual(printable(b"abcdef", 4), "abc" + ELLIPSIS)
        self.assertEqual(printable("abcd", 4), "abcd")
        self.assertEqual(printable(b"abcd", 4), "abcd")
        self.assertEqual(printable("abcde", 1), ELLIPSIS)

    def test_truncation_counts_the_escapes(self) -> None:
        # 100 ESCs are 400 characters once escaped: the cap is on what is shown.
        shown = printable("\x1b" * 100, 40)
        self.assertEqual(shown, "\\x1b" * 9 + ELLIPSIS)
        self.assertLessEqual(len(printable(b"\xff" * 10_000, 50)), 50)
        self.assertLessEqual(len(printable("\U0010fffd\U000e0001" * 1000, 50)), 50)

    def test_escape_never_cut_in_half(self) -> None:
        for limit in range(1, 12):
            shown = printable("ab\x1bcd\x1bef", limit)
            self.assertLessEqual(len(shown), limit)
            body = shown.removesuffix(ELLIPSIS)
            # Every backslash shown starts a whole escape.
            self.assertEqual(body.count("\\"), body.count("\\x1b"), shown)
            self.assertTrue("ab\\x1bcd\\x1bef".startswith(body), shown)

    def test_huge_input(self) -> None:
        # A bad UTF-8 byte far beyond the limit does not matter.
        big = b"a" * 10_000_000 + b"\xff"
        self.assertEqual(printable(big, 10), "a" * 9 + ELLIPSIS)
        # Multi-byte characters: the cap counts characters, and none is shown as stray bytes.
        self.assertEqual(printable("\u00e9" * 100, 10), "\u00e9" * 9 + ELLIPSIS)
        self.assertEqual(printable(("\U0001f600" * 100).encode(), 10), "\U0001f600" * 9 + ELLIPSIS)

    def test_limit_must_be_positive(self) -> None:
        self.assertRaises(ValueError, printable, "x", 0)
