"""A dedicated thread pool for disk I/O and hashing, run as a Service.

The reactor's own pool (``deferToThread``) also resolves host names; a burst of file work
there would stall DNS, so each daemon owns one of these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeVar, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")
P = ParamSpec("P")


class Threads(Protocol):
    """Where blocking work (disk I/O, hashing) runs: `DiskThreads`, or a test double
    (`InlineThreads`, or a pool that runs work only when a test says so)."""

    def run(self, f: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        """Run ``f(*args, **kwargs)`` off the reactor thread; its result or error."""
        ...

    def run_batched(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        """Like `run`, for many small calls that may share one thread call."""
        ...


def _call_all(calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[tuple[bool, Any]]:
    results: list[tuple[bool, Any]] = []
    for f, args in calls:
        try:
            results.append((True, f(*args)))
        except Exception as e:
            results.append((False, e))
    return results


class DiskThreads(Service):
    """Owns a ``ThreadPool``; ``run(f, *args)`` runs ``f`` in it and returns a Deferred.

    ``run_batched`` is for many small calls (one small file each): the calls made during one
    reactor turn run together in a single thread call, since dispatching to a thread and
    back costs more than opening, reading and hashing a 4 KiB file.
    """

    #: Most calls one batch takes; later ones wait for the next batch.
    MAX_BATCH = 64

    def __init__(self, reactor: IReactorTime | None = None, size: int = 4,
                 name: str = "disk") -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._clock = reactor
        # A reactor has threads too; its static type cannot say both (no intersection types).
        self._reactor = cast(IReactorThreads, reactor)
        self.pool = ThreadPool(minthreads=1, maxthreads=size, name=name)
        self._batch: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        # Joining waits for running work; done in a thread so the reactor keeps turning.
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self.pool.stop)

    def run(self, f: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        return deferToThreadPool(self._reactor, self.pool, f, *args, **kwargs)

    def run_batched(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        """Like `run`, sharing one thread call with the other calls of this reactor turn."""
        d: Deferred[T] = Deferred()
        if not self._batch:
            self._clock.callLater(0, self._flush)
        self._batch.append((f, args, d))
        if len(self._batch) >= self.MAX_BATCH:
            self._flush()
        return d

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return

        def deliver(results: list[tuple[bool, Any]]) -> None:
            for (_, _, d), (ok, value) in zip(batch, results, strict=True):
                if ok:
                    d.callback(value)
                else:
                    d.errback(value)

        def failed(failure: Failure) -> None:
            for _, _, d in batch:
                d.errback(failure)

        self.run(_call_all, [(f, args) for f, args, _ in batch]).addCallbacks(deliver, failed)

