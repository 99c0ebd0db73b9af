"""A dedicated thread pool for disk I/O and hashing, run as a Service.

The reactor's own pool (``deferToThread``) also resolves host names; a burst of file work
there would stall DNS, so each daemon owns one of these.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class DiskThreads(Service):
    """Owns a ``ThreadPool``; ``run(f, *args)`` runs ``f`` in it and returns a Deferred."""

    def __init__(self, reactor: Any = None, size: int = 4, name: str = "disk") -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.pool = ThreadPool(minthreads=1, maxthreads=size, name=name)

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        # Joining waits for running work; done in a thread so the reactor keeps turning.
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self.pool.stop)

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        return deferToThreadPool(self._reactor, self.pool, f, *args, **kwargs)


class InlineThreads:
    """Runs work synchronously: for unit tests on a fake reactor, where no thread may run."""

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        from twisted.internet.defer import maybeDeferred

        return maybeDeferred(f, *args, **kwargs)
