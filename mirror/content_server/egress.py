"""``--max-rate``: a cap on a serving daemon's total egress, whatever the number of
connections (content server, and a mirror server's ``--serve`` port).

One token bucket on the reactor clock for the whole factory. Every frame a connection sends
is spent from it (`EgressLimit.spend`); a stream about to send more first waits for the
bucket to be out of debt (`EgressLimit.ready`), so once the cap is reached the streams of
every connection pause, and are resumed together, in the order they started waiting, when
the debt is paid off: one `callLater` per round, no thread, no sleep.

What it guarantees: the bytes sent by time ``t`` never exceed ``burst + rate * t`` plus one
chunk per stream (a stream checks before it sends, and a chunk once read is sent whole); on
a busy server the long-run rate is ``rate``.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Shortest wait between rounds (a debt of a few bytes must not make a timer every
#: microsecond, nor, on a fake clock, one due before time has moved).
MIN_WAIT = 0.001


class EgressLimit:
    """``rate`` bytes per second for everything a daemon sends."""

    def __init__(self, clock: IReactorTime, rate: int, burst: int | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"a rate must be positive, not {rate}")
        self.clock = clock
        self.rate = rate
        #: Most bytes sent at once after an idle while: about 1/8 s of the rate, at least
        #: 64 KiB (one small chunk), at most 1 MiB.
        self.burst = max(64 * 1024, min(1 << 20, rate // 8)) if burst is None else burst
        self._level = float(self.burst)
        self._updated = clock.seconds()
        self._waiters: list[Deferred[None]] = []
        self._wake: IDelayedCall | None = None
        #: Every byte spent (statistics, tests).
        self.spent = 0

    def _refill(self) -> None:
        now = self.clock.seconds()
        self._level = min(float(self.burst), self._level + (now - self._updated) * self.rate)
        self._updated = now

    def spend(self, n: int) -> None:
        """``n`` bytes were sent (or are about to be)."""
        self.spent += n
        self._refill()
        self._level -= n

    @property
    def waiting(self) -> int:
        """Streams waiting for the bucket."""
        return len(self._waiters)

    def ready(self) -> Deferred[None] | None:
        """None if a stream may send now; else a Deferred that fires when it may.

        Cancelling the Deferred (the connection went away) forgets the waiter.
        """
        self._refill()
        if self._level >= 0 and not self._waiters:
            return None
        d: Deferred[None] = Deferred(self._forget)
        self._waiters.append(d)
        self._schedule()
        return d

    def _forget(self, d: Deferred[None]) -> None:
        if d in self._waiters:
            self._waiters.remove(d)
        if not self._waiters:
            self._cancel()

    def _schedule(self) -> None:
        if self._wake is None:
            delay = max(-self._level / self.rate, MIN_WAIT)
            self._wake = self.clock.callLater(delay, self._release)

    def _release(self) -> None:
        self._wake = None
        self._refill()
        if self._level < -1.0:  # within a byte of paid: float rounding costs no round
            self._schedule()
            return
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def close(self) -> None:
        """The daemon stops: no timer left behind."""
        self._cancel()

    def _cancel(self) -> None:
        if self._wake is not None and self._wake.active():
            self._wake.cancel()
        self._wake = None
