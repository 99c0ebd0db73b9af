"""A job's bandwidth limit (mirror-init's ``--bwlimit``): one token bucket on the reactor
clock, shared by every content connection of the job.

A connection spends what it reads (`Throttle.spend`, before handing the bytes on). While the
bucket holds enough, nothing happens. A read that overdraws it pauses its connection, and
the bytes of that read wait, unparsed, until the debt is paid off; then every connection
paused meanwhile resumes at once, each takes one more read, and so on. No sleep, no thread:
one `callLater` per round.

Why it is fair: a paused transport does not read, so each connection that has data gets one
read (at most `Throttle.read_size` bytes: the connections' receive buffers are lowered to
it) per round, whatever the order the reactor serves them in. Requests on one connection
share it as the content server interleaves them.

What it guarantees: the bytes handed on from the job's connections by time ``t`` never
exceed ``burst + rate * t`` (a read is handed on only once it is paid for); on a busy job
the long-run rate is ``rate``. (The kernel's socket buffers may hold more received bytes
meanwhile, which TCP's window then pushes back on the sender with.)
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IReactorTime

from mirror.token_bucket import TokenBucket

#: Smallest and largest read of a throttled connection: about 1/8 s of the rate, so that
#: the job's rate is smooth over a fraction of a second rather than in one-second bursts.
MIN_READ = 4096
MAX_READ = 1 << 20


class Throttled(Protocol):
    """A connection as the throttle sees it (`ContentClientProtocol`): counted pauses."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...


class Throttle(TokenBucket):
    """``rate`` bytes per second for all the connections that spend from it."""

    def __init__(self, clock: IReactorTime, rate: int, burst: int | None = None) -> None:
        #: The receive buffer a throttled connection gets (see `MIN_READ`).
        self.read_size = max(MIN_READ, min(MAX_READ, rate // 8))
        super().__init__(clock, rate, self.read_size if burst is None else burst)
        #: Connections paused by this throttle, in the order they were paused.
        self._waiting: list[Throttled] = []

    @property
    def paused(self) -> list[Throttled]:
        """The connections waiting for their read to be paid for, oldest first."""
        return list(self._waiting)

    def spend(self, conn: Throttled, n: int) -> bool:
        """``conn`` read ``n`` bytes. True if it had to pause: the caller then holds those
        bytes, unparsed, until the throttle resumes it."""
        if self._take(n):
            return False
        if conn not in self._waiting:
            self._waiting.append(conn)
            conn.pause()
        self._schedule()
        return True

    def _paid(self) -> None:
        waiting, self._waiting = self._waiting, []
        for conn in waiting:
            conn.resume()

    def forget(self, conn: Throttled) -> None:
        """``conn`` is gone: it waits no more (its pause went with it)."""
        if conn in self._waiting:
            self._waiting.remove(conn)
        if not self._waiting:
            self._cancel()

    def close(self) -> None:
        """The job is over: no timer left behind (connections still paused stay so)."""
        self._waiting = []
        self._cancel()
