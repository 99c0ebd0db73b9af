"""SizeStats: exact mean and variance from integer sums."""

from __future__ import annotations

import statistics
from fractions import Fraction
from typing import Any

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


class Boundaries(SynchronousTestCase):
    """Sums exactly on the limits of what sizes can give: one file, equal sizes, zeros."""

    def test_one_file_sums_accepted(self) -> None:
        # sum_sq == total**2: on the upper bound (one file has all the total).
        for size in (0, 1, 12345):
            s = SizeStats.from_sums(1, size, size * size)
            self.assertEqual(s, stats_of([size]))
            self.assertEqual((s.mean, s.variance, s.stddev), (float(size), 0.0, 0.0))

    def test_equal_sizes_sums_accepted(self) -> None:
        # count * sum_sq == total**2: on the lower bound (no spread).
        for count, size in ((2, 5), (3, 7), (1000, 10**12)):
            s = SizeStats.from_sums(count, count * size, count * size * size)
            self.assertEqual(s, stats_of([size] * count))
            self.assertEqual(s.exact_variance, 0)
            self.assertEqual((s.variance, s.stddev, s.cv), (0.0, 0.0, 0.0))

    def test_zero_sized_files_sums_accepted(self) -> None:
        for count in (1, 2, 100):
            s = SizeStats.from_sums(count, 0, 0)
            self.assertEqual(s, stats_of([0] * count))
            self.assertEqual((s.mean, s.variance, s.cv), (0.0, 0.0, 0.0))

    def test_just_outside_the_bounds_refused(self) -> None:
        for count, total, sum_sq in ((1, 5, 24), (1, 5, 26), (3, 21, 146), (2, 10, 101),
                                     (2, 0, 1), (1, 0, 1)):
            with self.assertRaises(ValueError, msg=(count, total, sum_sq)) as cm:
                SizeStats.from_sums(count, total, sum_sq)
            self.assertEqual(
                str(cm.exception),
                f"sums impossible for {count} sizes: total {total}, sum_sq {sum_sq}")

    def test_no_files_with_sums_refused(self) -> None:
        for total, sum_sq in ((1, 0), (0, 1), (1, 1)):
            with self.assertRaises(ValueError) as cm:
                SizeStats.from_sums(0, total, sum_sq)
            self.assertEqual(str(cm.exception), "total and sum_sq must be 0 when count is 0")

    def test_non_integers_refused_by_name(self) -> None:
        for bad in (-1, 1.0, True, False, "3", None):
            for i, name in enumerate(("count", "total", "sum_sq")):
                sums: list[Any] = [1, 1, 1]  # wrong types on purpose
                sums[i] = bad
                with self.assertRaises(ValueError, msg=(name, bad)) as cm:
                    SizeStats.from_sums(*sums)
                self.assertEqual(str(cm.exception),
                                 f"{name} must be a non-negative integer, not {bad!r}")

    def test_bad_size_message(self) -> None:
        with self.assertRaises(ValueError) as cm:
            SizeStats().add(-3)
        self.assertEqual(str(cm.exception), "a size must be a non-negative integer, not -3")

    def test_empty_exact_figures(self) -> None:
        s = SizeStats()
        self.assertEqual((s.exact_mean, s.exact_variance), (Fraction(0), Fraction(0)))
        self.assertIsInstance(s.exact_mean, Fraction)
