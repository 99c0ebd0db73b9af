"""The bounded, fair queue between the managers (which list) and the workers (which fetch).

Every item has a key ``(group, flow)``: on the mirror server a group is a job and a flow is
one source of that job. Items wait in one FIFO per flow. `get` serves the groups round-robin
and, within a group, its flows round-robin: one turn each, so a job of 20 files submitted
behind 19 big jobs gets every 20th turn of a worker, not the turn after all their items, and
each source of a job gets its share of that job's turns. (Turns, not bytes: a worker's turn
on small files is one bundle of them, see `take_ready`.)

The bound is on the total: `put` waits while ``size`` items are queued, so memory stays
bounded however many jobs there are. A job whose source has nothing queued must still get in
when the queue is full of other jobs' items: each slot that frees goes to the waiting producer
whose group, then flow, holds the fewest items (the oldest waiter among equals). So a new
job's producer gets the very next free slot, and while several wait the queue converges to an
equal share for each group, and for each flow within a group: none can hold the capacity.

A group may yield its turns (``yields(group)`` true: on the mirror server, a job with a
bandwidth limit that holds its share of the workers): `get` then serves the next group that
does not, and the yielding one only when no other group has items (no worker ever waits
while an item is queued).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

Key = tuple[Hashable, Hashable]


class _Waiting(Generic[T]):
    """A producer's items waiting for slots, and the Deferred its put waits on."""

    __slots__ = ("items", "done")

    def __init__(self, items: deque[T], done: Deferred[None]) -> None:
        self.items = items
        self.done = done


def _one_flow(item: object) -> Key:
    return (None, None)


def _rotate(d: dict[K, V], k: K, keep: bool) -> None:
    """Move ``k`` to the end of ``d``'s order (its turn is over), or drop it."""
    v = d.pop(k)
    if keep:
        d[k] = v


class BoundedQueue(Generic[T]):
    """At most ``size`` items, served fairly across the keys ``key(item)`` gives
    (``(group, flow)``; by default one flow: a plain FIFO)."""

    def __init__(self, size: int, key: Callable[[T], Key] = _one_flow,
                 yields: Callable[[Hashable], bool] = lambda group: False) -> None:
        self.size = size
        self._key = key
        self._yields = yields
        #: group -> flow -> items, both dicts in round-robin order (the next to serve first).
        self._groups: dict[Hashable, dict[Hashable, deque[T]]] = {}
        #: Items queued per group (only groups holding some).
        self._held: dict[Hashable, int] = {}
        self._len = 0
        #: Producers waiting for slots: group -> flow -> (the items still to add, in order,
        #: and the Deferred of their put, fired once the last is in).
        self._producers: dict[Hashable, dict[Hashable, deque[_Waiting[T]]]] = {}
        self._getters: deque[Deferred[T]] = deque()
        self._below: list[tuple[int, Key | None, Deferred[None]]] = []
        #: The flow the last item handed out came from (`take_ready` serves it).
        self._last: Key | None = None

    def __len__(self) -> int:
        return self._len

    def held(self, group: Hashable) -> int:
        """Items of ``group`` queued now."""
        return self._held.get(group, 0)

    async def put(self, item: T) -> None:
        """Add ``item``, waiting while the queue is full (cancel the wait to give up: the item
        is then not added)."""
        await self.put_many((item,))

    async def put_many(self, items: Iterable[T], on_wait: Callable[[], None] | None = None
                       ) -> None:
        """Add ``items`` (all of one key) in order, each as soon as there is room; returns
        once the last is in. ``on_wait`` is called if any has to wait. Cancel the wait to give
        up: the items not yet added are then dropped.

        One wait for a whole batch, however many slots it takes: a listing's batch of
        thousands of files costs no coroutine step per file.
        """
        pending = deque(items)
        while pending and self._len < self.size and not self._producers:
            # (Room with producers waiting happens only while freed slots are being handed
            # out, and a producer resumed by one must not overtake the others.)
            self._add(pending.popleft())
        if not pending:
            return
        if on_wait is not None:
            on_wait()
        group, flow = self._key(pending[0])
        waiting = self._producers.setdefault(group, {}).setdefault(flow, deque())

        def cancel(d: Deferred[None]) -> None:
            waiting.remove(entry)
            self._forget_producers(group, flow)

        entry = _Waiting(pending, Deferred(cancel))
        waiting.append(entry)
        await entry.done

    def get(self) -> Deferred[T]:
        """The next item in round-robin order, as soon as there is one."""
        if self._len:
            group = next((g for g in self._groups if not self._yields(g)),
                         next(iter(self._groups)))
            flows = self._groups[group]
            flow, items = next(iter(flows.items()))
            item = items.popleft()
            _rotate(flows, flow, bool(items))
            _rotate(self._groups, group, bool(flows))
            self._last = (group, flow)
            self._removed(group, 1)
            d: Deferred[T] = Deferred()
            d.callback(item)
            return d
        d = Deferred(self._getters.remove)
        self._getters.append(d)
        return d

    def take_ready(self, limit: int, accept: Callable[[T], bool],
                   like: T | None = None) -> list[T]:
        """Up to ``limit`` items already waiting, in order, while ``accept`` says yes; never
        waits. Lets a worker bundle small files.

        They come from one flow only (a bundle goes to one source's content server): the
        flow of ``like`` if given, else that of the item `get` handed out last, so call it
        in the same reactor turn as that `get`. They are part of the same turn: the flow's
        place in the round-robin order does not change.
        """
        key = self._key(like) if like is not None else self._last
        if key is None:  # nothing handed out yet: the flow served next
            if not self._groups:
                return []
            group = next(iter(self._groups))
            flow = next(iter(self._groups[group]))
        else:
            group, flow = key
        items = self._groups.get(group, {}).get(flow)
        taken: list[T] = []
        while items and len(taken) < limit and accept(items[0]):
            taken.append(items.popleft())
        if taken:
            assert items is not None
            flows = self._groups[group]
            if not items:
                del flows[flow]
                if not flows:
                    del self._groups[group]
            self._removed(group, len(taken))
        return taken

    def wait_below(self, count: int, key: Key | None = None) -> Deferred[None]:
        """Fires once at most ``count`` items wait (a low watermark: a producer that stopped
        on a full queue starts again only when there is room for a good run).

        Given the producer's ``key``, it also fires once that group holds at most its share of
        ``count`` (``count`` over the groups holding items or waiting): a job whose items are
        few gets the next free slots (see the module's docstring), so it need not wait for
        the others' backlog to drain.
        """
        d: Deferred[None] = Deferred()
        if self._low(count, key, self._active()):
            d.callback(None)
        else:
            self._below.append((count, key, d))
        return d

    # -- internals -------------------------------------------------------------------------

    def _active(self) -> set[Hashable]:
        """The groups holding items or waiting to put some."""
        return self._held.keys() | self._producers.keys()

    def _low(self, count: int, key: Key | None, active: set[Hashable]) -> bool:
        if self._len <= count:
            return True
        if key is None:
            return False
        group = key[0]
        return self.held(group) <= count // (len(active) + (group not in active))

    def _add(self, item: T) -> None:
        group, flow = self._key(item)
        if self._getters:  # the queue is empty: straight to a waiting worker
            self._last = (group, flow)
            self._getters.popleft().callback(item)
            return
        self._groups.setdefault(group, {}).setdefault(flow, deque()).append(item)
        self._held[group] = self._held.get(group, 0) + 1
        self._len += 1

    def _removed(self, group: Hashable, n: int) -> None:
        """``n`` items of ``group`` left: admit waiting producers, wake watermark waiters."""
        self._len -= n
        left = self._held[group] - n
        if left:
            self._held[group] = left
        else:
            del self._held[group]
        # Each iteration re-reads the state: firing a put resumes its producer at once, and
        # it may put again (and wait) before we go on.
        while self._producers and self._len < self.size:
            if len(self._producers) == 1 and self._admit_run():
                continue
            self._admit_one()
        if self._below:
            waiting, self._below = self._below, []
            ready: list[tuple[int, Key | None, Deferred[None]]] = []
            active = self._active()
            for w in waiting:
                (ready if self._low(w[0], w[1], active) else self._below).append(w)
            for _, _, d in ready:
                if not d.called:
                    d.callback(None)

    def _admit_run(self) -> bool:
        """With a single producer waiting (the usual case: one listing ahead of the
        workers), fill the free slots from its batch at once; False if several flows wait
        (`_admit_one` then chooses)."""
        flows = next(iter(self._producers.values()))
        if len(flows) != 1:
            return False
        group, entries = next(iter(self._producers.items()))[0], next(iter(flows.values()))
        entry = entries[0]
        while self._getters and entry.items:  # the queue is empty: straight to workers
            self._add(entry.items.popleft())
        n = min(self.size - self._len, len(entry.items))
        if n:
            # All of one key: moved in one go, not item by item through `_add`.
            flow = next(iter(flows))
            queued = self._groups.setdefault(group, {}).setdefault(flow, deque())
            pop = entry.items.popleft
            queued.extend(pop() for _ in range(n))
            self._held[group] = self._held.get(group, 0) + n
            self._len += n
        if not entry.items:
            entries.popleft()
            if not entries:
                del self._producers[group]
            entry.done.callback(None)
        return True

    def _admit_one(self) -> None:
        """Give one slot to the waiting producer whose group, then flow, holds the fewest
        items; among equals the one waiting longest (dict order: rotated after each slot)."""
        group = min(self._producers, key=self.held)
        flows = self._producers[group]

        def queued(flow: Hashable) -> int:
            items = self._groups.get(group, {}).get(flow)
            return len(items) if items else 0

        flow = min(flows, key=queued)
        entry = flows[flow][0]
        item = entry.items.popleft()
        if not entry.items:
            flows[flow].popleft()
        _rotate(flows, flow, bool(flows[flow]))
        _rotate(self._producers, group, bool(flows))
        self._add(item)
        if not entry.items:
            entry.done.callback(None)

    def _forget_producers(self, group: Hashable, flow: Hashable) -> None:
        flows = self._producers.get(group)
        if flows is not None and not flows.get(flow, True):
            del flows[flow]
            if not flows:
                del self._producers[group]

