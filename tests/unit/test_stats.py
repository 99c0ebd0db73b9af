"""SizeStats: exact mean and variance from integer sums."""

from __future__ import annotations

import statistics
from fractions import Fraction

from twisted.trial.unittest import SynchronousTestCase

from mirror.stats import SizeStats


def stats_of(sizes: list[int]) -> SizeStats:
    s = SizeStats()
    for size in sizes:
        s.add(size)
    return s


class SizeStatsTests(SynchronousTestCase):
    def test_empty(self) -> None:
        s = SizeStats()
        self.assertEqual((s.count, s.total, s.sum_sq), (0, 0, 0))
        self.assertEqual((s.mean, s.variance, s.stddev, s.cv), (0.0, 0.0, 0.0, 0.0))

    def test_sums(self) -> None:
        s = stats_of([1, 2, 3, 10])
        self.assertEqual((s.count, s.total, s.sum_sq), (4, 16, 114))

    def test_figures(self) -> None:
        sizes = [2, 4, 4, 4, 5, 5, 7, 9]
        s = stats_of(sizes)
        self.assertEqual(s.mean, 5.0)
        self.assertEqual(s.variance, 4.0)
        self.assertEqual(s.stddev, 2.0)
        self.assertEqual(s.cv, 0.4)
        self.assertEqual(s.variance, statistics.pvariance(sizes))

    def test_exact_with_large_offset(self) -> None:
        # Float E[x^2] - E[x]^2 would lose everything here; the integer sums do not.
        sizes = [10**15 + 1, 10**15 + 2, 10**15 + 3]
        s = stats_of(sizes)
        self.assertEqual(s.exact_variance, Fraction(2, 3))
        self.assertEqual(s.variance, 2 / 3)

    def test_zero_sized_files(self) -> None:
        s = stats_of([0, 0, 0])
        self.assertEqual((s.mean, s.variance, s.cv), (0.0, 0.0, 0.0))

    def test_single_file_has_no_spread(self) -> None:
        s = stats_of([12345])
        self.assertEqual((s.mean, s.variance, s.stddev, s.cv), (12345.0, 0.0, 0.0, 0.0))

    def test_merge_and_add(self) -> None:
        a, b = stats_of([1, 2, 3]), stats_of([100, 200])
        both = a + b
        self.assertEqual(both, stats_of([1, 2, 3, 100, 200]))
        self.assertEqual(a, stats_of([1, 2, 3]), "+ must not change its operands")
        a.merge(b)
        self.assertEqual(a, both)

    def test_refuses_bad_sizes(self) -> None:
        s = SizeStats()
        for bad in (-1, 1.5, True, "3"):
            with self.assertRaises(ValueError):
                s.add(bad)  # type: ignore[arg-type]
        self.assertEqual(s.count, 0)

    def test_from_sums(self) -> None:
        self.assertEqual(SizeStats.from_sums(4, 16, 114), stats_of([1, 2, 3, 10]))
        self.assertEqual(SizeStats.from_sums(0, 0, 0), SizeStats())
        for count, total, sum_sq in ((0, 1, 1), (1, 3, 4), (2, 10, 49), (2, 10, 101), (-1, 0, 0)):
            with self.assertRaises(ValueError, msg=(count, total, sum_sq)):
                SizeStats.from_sums(count, total, sum_sq)
