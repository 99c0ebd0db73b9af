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
from twisted.internet.interfaces import IReactorTime

from mirror.token_bucket import TokenBucket


class EgressLimit(TokenBucket):
    """``rate`` bytes per second for everything a daemon sends."""

    def __init__(self, clock: IReactorTime, rate: int, burst: int | None = None) -> None:
        #: Most bytes sent at once after an idle while: about 1/8 s of the rate, at least
        #: 64 KiB (one small chunk), at most 1 MiB.
        super().__init__(clock, rate, max(64 * 1024, min(1 << 20, rate // 8))
                         if burst is None else burst)
        self._waiters: list[Deferred[None]] = []

    def spend(self, n: int) -> None:
        """``n`` bytes were sent (or are about to be)."""
        self._take(n)

    @property
    def waiting(self) -> int:
        """Streams waiting for the bucket."""
        return len(self._waiters)

    def ready(self) -> Deferred[None] | None:
        """None if a stream may send now; else a Deferred that fires when it may.

        Cancelling the Deferred (the connection went away) forgets the waiter.
        """
        if self._in_credit() and not self._waiters:
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

    def _paid(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def close(self) -> None:
        """The daemon stops: no timer left behind."""
        self._cancel()
