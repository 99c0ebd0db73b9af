"""The mirror server's ``--min-rate``: a content connection that delivers less than RATE bytes
per second, over a window of the time it was expected to deliver, is given up.

``--stall-timeout`` catches a content server that sends nothing; one that trickles a byte
now and then dodges it and would hold, for as long as it likes, the workers that took its
files (and every job shares the workers). curl's ``--speed-limit``/``--speed-time`` and
aria2's ``--lowest-speed-limit`` answer the same way: per connection, over a window.

Only time during which the connection owes us data counts (`RateFloor.set_active`): it has
a FETCH or FETCH_MANY under way whose delay (the SPEC's, which the content server waits before
each file) is over, and we are reading it. A connection paused by us (a slow disk, the job's
``--bwlimit``, a listing held on a full queue) or waiting only for its SPEC's delay is not
slow. The counted time accumulates across such gaps: stopping and starting again cannot
reset the window.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Seconds of counted time over which the rate is measured (curl's --speed-time default).
DEFAULT_WINDOW = 30.0


class RateFloor:
    """Calls ``too_slow(bytes_per_second)`` once when fewer than ``rate * window`` bytes
    arrived during ``window`` seconds of active time."""

    def __init__(self, clock: IReactorTime, rate: int, window: float,
                 too_slow: Callable[[float], None]) -> None:
        if rate <= 0 or window <= 0:
            raise ValueError("a minimum rate needs a positive rate and window")
        self.clock = clock
        self.rate = rate
        self.window = window
        self._too_slow = too_slow
        #: Active seconds counted in the current window, up to the last change of state.
        self._counted = 0.0
        #: Bytes received in the current window.
        self._bytes = 0
        self._since: float | None = None  # when the current active stretch began
        self._check: IDelayedCall | None = None
        self._stopped = False

    @property
    def active(self) -> bool:
        return self._since is not None

    def received(self, n: int) -> None:
        self._bytes += n

    def set_active(self, active: bool) -> None:
        """Whether the connection owes us data now (see the module's docstring)."""
        if self._stopped or active == self.active:
            return
        now = self.clock.seconds()
        if active:
            self._since = now
            # Never negative: a stretch may end in the turn its window was due in.
            self._check = self.clock.callLater(max(0.0, self.window - self._counted),
                                               self._end_window)
        else:
            assert self._since is not None
            self._counted += now - self._since
            self._since = None
            self._cancel()

    def _end_window(self) -> None:
        self._check = None
        rate = self._bytes / self.window
        if self._bytes < self.rate * self.window:
            self.stop()
            self._too_slow(rate)
            return
        self._counted = 0.0
        self._bytes = 0
        self._since = self.clock.seconds()
        self._check = self.clock.callLater(self.window, self._end_window)

    def stop(self) -> None:
        """The connection is gone: nothing more is measured."""
        self._stopped = True
        self._since = None
        self._cancel()

    def _cancel(self) -> None:
        if self._check is not None and self._check.active():
            self._check.cancel()
        self._check = None
