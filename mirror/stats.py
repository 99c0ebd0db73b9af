"""Exact statistics of file sizes.

The mirror server sums sizes and squared sizes as Python integers and sends the three sums in
SOURCE-DONE; mirror-init derives mean and variance from them. Integer sums make the variance
exact (no catastrophic cancellation of ``E[x^2] - E[x]^2`` in floating point) and make the
statistics of several sources mergeable by plain addition.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fractions import Fraction


class SizeStats:
    """An accumulator of file sizes: how many, their sum, and the sum of their squares.

    (A plain class, not a dataclass: mirror-init imports it, see
    `mirror.job_options.JobOptions`.)"""

    __slots__ = ("count", "total", "sum_sq")

    def __init__(self, count: int = 0, total: int = 0, sum_sq: int = 0) -> None:
        self.count = count
        self.total = total
        self.sum_sq = sum_sq

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SizeStats):
            return NotImplemented
        return (self.count, self.total, self.sum_sq) == (other.count, other.total, other.sum_sq)

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass was

    def __repr__(self) -> str:
        return f"SizeStats(count={self.count}, total={self.total}, sum_sq={self.sum_sq})"

    @classmethod
    def from_sums(cls, count: int, total: int, sum_sq: int) -> SizeStats:
        """Rebuild from sums received from a peer, refusing sums no list of sizes can have.

        Raises `ValueError`: negative values, or ``total**2 > count * sum_sq`` (which would
        make the variance negative), or ``sum_sq > total**2``.
        """
        for name, value in (("count", count), ("total", total), ("sum_sq", sum_sq)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
        if count == 0:
            if total or sum_sq:
                raise ValueError("total and sum_sq must be 0 when count is 0")
        elif total * total > count * sum_sq or sum_sq > total * total:
            raise ValueError(f"sums impossible for {count} sizes: total {total}, sum_sq {sum_sq}")
        return cls(count, total, sum_sq)

    def add(self, size: int) -> None:
        """Count one file of ``size`` bytes."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"a size must be a non-negative integer, not {size!r}")
        self.count += 1
        self.total += size
        self.sum_sq += size * size

    def merge(self, other: SizeStats) -> None:
        """Add the sizes counted by ``other`` to this accumulator."""
        self.count += other.count
        self.total += other.total
        self.sum_sq += other.sum_sq

    def __add__(self, other: object) -> SizeStats:
        if not isinstance(other, SizeStats):
            return NotImplemented
        return SizeStats(
            self.count + other.count, self.total + other.total, self.sum_sq + other.sum_sq
        )

    @property
    def exact_mean(self) -> Fraction:
        """The mean size as an exact fraction (0 when empty)."""
        from fractions import Fraction  # here: mirror-init imports this module at start-up

        return Fraction(self.total, self.count) if self.count else Fraction(0)

    @property
    def exact_variance(self) -> Fraction:
        """The population variance as an exact fraction: ``(n*S2 - S1**2) / n**2``."""
        from fractions import Fraction

        if not self.count:
            return Fraction(0)
        n = self.count
        return Fraction(n * self.sum_sq - self.total * self.total, n * n)

    @property
    def mean(self) -> float:
        """The mean size in bytes (0.0 when empty)."""
        return float(self.exact_mean)

    @property
    def variance(self) -> float:
        """The population variance of the sizes in bytes squared (0.0 when empty)."""
        # max(): only inconsistent sums (refused by from_sums) could go below 0.
        return max(float(self.exact_variance), 0.0)

    @property
    def stddev(self) -> float:
        """The population standard deviation in bytes."""
        return math.sqrt(self.variance)

    @property
    def cv(self) -> float:
        """The coefficient of variation, stddev / mean (0.0 when the mean is 0)."""
        if not self.total:
            return 0.0
        return self.stddev / self.mean

