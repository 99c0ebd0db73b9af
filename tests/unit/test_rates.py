"""RATE, the one syntax of --bwlimit and --min-rate (mirror/rates.py)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mirror.rates import MAX_RATE, format_rate, parse_rate


class ParseRate(SynchronousTestCase):
    def test_accepted(self) -> None:
        for text, rate in [
            ("0", 0),
            ("1", 1),
            ("1048576", 1 << 20),
            ("500K", 500 * 1024),
            ("500k", 500 * 1024),
            ("8M", 8 << 20),
            ("2g", 2 << 30),
            (" 3K ", 3 * 1024),
            ("007", 7),
        ]:
            with self.subTest(text=text):
                self.assertEqual(parse_rate(text), rate)

    def test_refused(self) -> None:
        for text in ["", "K", "-1", "1.5M", "1e6", "1KB", "1 K", "10T", "１", "0x10", "1_000",
                     "+5", "inf", "9" * 31]:
            with self.subTest(text=text), self.assertRaises(ValueError) as caught:
                parse_rate(text)
            self.assertIn("K, M or G", str(caught.exception))

    def test_too_large(self) -> None:
        self.assertEqual(parse_rate(str(MAX_RATE)), MAX_RATE)
        with self.assertRaises(ValueError) as caught:
            parse_rate("99999999999999999999G")
        self.assertIn("at most", str(caught.exception))


class FormatRate(SynchronousTestCase):
    def test_units(self) -> None:
        self.assertEqual(format_rate(0), "0 B/s")
        self.assertEqual(format_rate(1000), "1000 B/s")
        self.assertEqual(format_rate(1024), "1 KiB/s")
        self.assertEqual(format_rate(1.5 * (1 << 20)), "1.5 MiB/s")
        self.assertEqual(format_rate(3 << 30), "3 GiB/s")
