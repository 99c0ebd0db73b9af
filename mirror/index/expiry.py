"""`ExpiryService`: purges registrations whose lease ran out, on the index's clock."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mirror.index.registry import Registry


class ExpiryService(Service):
    """Every ``interval`` seconds, removes the nodes (and files) whose lease is over.

    Answers never show an expired node whether or not it was purged yet (queries compare
    leases with the clock); purging only keeps the registry small.
    """

    log = Logger()

    def __init__(self, registry: Registry, clock: IReactorTime, interval: float) -> None:
        self.registry = registry
        self.clock = clock
        self.interval = interval
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.sweep)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return None

    def sweep(self) -> Deferred[None]:
        def done(nodes: int) -> None:
            if nodes:
                self.log.info("leases ran out: {nodes} node(s) removed", nodes=nodes)

        def failed(failure: Failure) -> None:
            # A database hiccup must not stop the loop: the next sweep tries again.
            self.log.failure("expiring leases failed", failure)

        return self.registry.expire(self.clock.seconds()).addCallbacks(done, failed)
