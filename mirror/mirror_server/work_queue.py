"""The bounded queue between the managers (which list) and the workers (which fetch).

``DeferredQueue(size=N).put`` raises ``QueueOverflow`` when full instead of making the
producer wait, so a ``DeferredSemaphore`` counts free slots: `put` waits while the queue is
full, `get` frees a slot. No busy waiting, no overflow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, DeferredQueue, DeferredSemaphore

T = TypeVar("T")


class BoundedQueue(Generic[T]):
    def __init__(self, size: int) -> None:
        self.size = size
        self._items: DeferredQueue[T] = DeferredQueue()
        self._slots = DeferredSemaphore(size)
        self._below: list[tuple[int, Deferred[None]]] = []

    def __len__(self) -> int:
        return len(self._items.pending)

    async def put(self, item: T) -> None:
        """Add ``item``, waiting while the queue is full."""
        await self._slots.acquire()
        self._items.put(item)

    def get(self) -> Deferred[T]:
        """The next item, as soon as there is one."""
        d = self._items.get()
        d.addCallback(self._taken)
        return d

    def take_ready(self, limit: int, accept: Callable[[T], bool]) -> list[T]:
        """Up to ``limit`` items already waiting at the head of the queue, in order, while
        ``accept`` says yes; never waits. Lets a worker batch small files."""
        taken: list[T] = []
        pending = self._items.pending
        while pending and len(taken) < limit and accept(pending[0]):
            taken.append(self._taken(pending.pop(0)))
        return taken

    def wait_below(self, count: int) -> Deferred[None]:
        """Fires once at most ``count`` items wait (a low watermark: a producer that stopped
        on a full queue starts again only when there is room for a good run)."""
        d: Deferred[None] = Deferred()
        if len(self) <= count:
            d.callback(None)
        else:
            self._below.append((count, d))
        return d

    def _taken(self, item: T) -> T:
        self._slots.release()
        if self._below:
            ready = [w for w in self._below if len(self) <= w[0]]
            self._below = [w for w in self._below if len(self) > w[0]]
            for _, d in ready:
                if not d.called:
                    d.callback(None)
        return item
