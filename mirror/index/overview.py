"""`OverviewService`: the registry at a glance, read every few seconds for the web site.

The web site's views are synchronous (a page, /api/status, /metrics at each scrape) and
the registry answers in database threads; rather than one database query per web request
(which a busy scraper or a reloading browser would turn into load on the registry), the
overview is refreshed on the clock, and every view reads the last one with its age.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mirror.index.registry import Overview, Registry

#: Seconds between refreshes.
INTERVAL = 2.0
#: Nodes listed (by name) on the page and in /api/status.
MAX_LISTED_NODES = 200


class OverviewService(Service):
    log = Logger()

    def __init__(self, registry: Registry, clock: IReactorTime, interval: float = INTERVAL,
                 limit: int = MAX_LISTED_NODES) -> None:
        self.registry = registry
        self.clock = clock
        self.interval = interval
        self.limit = limit
        #: The last overview read, and when (None: not read yet).
        self.overview: Overview | None = None
        self.read_at: float | None = None
        self._loop: task.LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self.refresh)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def refresh(self) -> Deferred[None]:
        """Read the overview now (the loop's call; a failure is logged, the last one kept)."""
        now = self.clock.seconds()
        d = self.registry.overview(now, self.limit)

        def read(overview: Overview) -> None:
            self.overview, self.read_at = overview, now

        return d.addCallback(read).addErrback(
            lambda f: self.log.warn("reading the registry's overview failed: {reason}",
                                    reason=f.getErrorMessage()))
