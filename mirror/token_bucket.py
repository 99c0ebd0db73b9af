"""A token bucket on the reactor clock: ``rate`` bytes per second, ``burst`` at most.

The one bucket behind both rate limits: a job's ``--bwlimit`` (what its content
connections read, `mirror.mirror_server.throttle`) and a serving daemon's ``--max-rate``
(what it sends, `mirror.content_server.egress`). Spending may overdraw it; once it is in
debt, one `callLater` waits until the debt is paid off and calls `_paid`, where the owner
resumes what it paused. No sleep, no thread.
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Shortest wait between rounds: a debt of a few bytes must not make a timer every
#: microsecond (nor, on a fake clock, one that is due before time has moved).
MIN_WAIT = 0.001


class TokenBucket:
    """The level, its refill and the wake-up timer; subclasses say who waits (`_paid`)."""

    def __init__(self, clock: IReactorTime, rate: int, burst: int) -> None:
        if rate <= 0:
            raise ValueError(f"a rate must be positive, not {rate}")
        self.clock = clock
        self.rate = rate
        #: Most bytes that go through at once after an idle while.
        self.burst = burst
        self._level = float(burst)
        self._updated = clock.seconds()
        self._wake: IDelayedCall | None = None
        #: Every byte spent (statistics, tests).
        self.spent = 0

    def _refill(self) -> None:
        now = self.clock.seconds()
        self._level = min(float(self.burst), self._level + (now - self._updated) * self.rate)
        self._updated = now

    def _take(self, n: int) -> bool:
        """Spend ``n`` bytes; True while the bucket is not in debt."""
        self.spent += n
        self._refill()
        self._level -= n
        return self._level >= 0

    def _in_credit(self) -> bool:
        self._refill()
        return self._level >= 0

    def _schedule(self) -> None:
        """Call `_paid` once the debt is paid off (one timer at a time)."""
        if self._wake is None:
            delay = max(-self._level / self.rate, MIN_WAIT)
            self._wake = self.clock.callLater(delay, self._release)

    def _release(self) -> None:
        self._wake = None
        self._refill()
        # Within a byte of paid: float rounding must not cost one more round.
        if self._level < -1.0:
            self._schedule()
            return
        self._paid()

    def _paid(self) -> None:
        """The debt is paid: resume whatever waits."""
        raise NotImplementedError

    def _cancel(self) -> None:
        if self._wake is not None and self._wake.active():
            self._wake.cancel()
        self._wake = None
