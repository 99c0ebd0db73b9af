"""Which holder fetches which chunk of a file: the pure logic of a multi-source download.

No I/O and no reactor: the downloader (`mirror.mirror_server.multi_source`) asks
`ChunkScheduler.next_for` what a holder should fetch next whenever that holder has room, and
reports each outcome (`done`, `failed`, `bad`, `drop`). Time comes from a clock passed in
(``seconds()``), so the policy is tested on a fake one.

The policy, as BitTorrent clients and aria2 do it:

- **Pull, in order.** A holder with room takes the lowest chunk that nobody has and nobody
  is fetching. Each holder keeps at most ``depth`` chunks in flight, so a holder that
  answers twice as fast comes back for work twice as often: a slow holder gets fewer chunks
  without any estimate being needed.
- **End game.** Once every missing chunk is in flight, a holder with room duplicates the
  in-flight chunk expected to finish last (that of the slowest holder, by measured rate;
  at most ``max_copies`` fetches of one chunk at once), so the file ends with the fastest
  holders rather than waiting on the slowest. The first verified copy wins; `done` returns
  the holders whose duplicate fetches the caller should cancel.
- **Distrust.** A holder that sent a chunk that does not match its hash (`bad`) is dropped
  for the rest of the job; its other chunks go back to the pool. A holder whose fetch
  failed (`failed`: connection lost, error, stall) is dropped too: a holder killed
  mid-transfer is not asked again, and the chunk is fetched elsewhere.

Shaped for a swarm (issue 14): what has been verified is a `ChunkMap` (`ChunkScheduler.have`),
which a partial holder would serve from; a holder registered with its own `ChunkMap` (one
that holds part of the file) is only asked for the chunks it has.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

#: Chunks a holder has in flight at once (one being sent, the next asked for meanwhile).
DEPTH = 2
#: Fetches of one chunk at once in the end game.
MAX_COPIES = 2


class Seconds(Protocol):
    def seconds(self) -> float: ...


class ChunkMap:
    """The set of chunks of one file that are held and verified (a bitmap)."""

    def __init__(self, count: int, full: bool = False) -> None:
        self.count = count
        self._bits = bytearray(b"\xff" * ((count + 7) // 8) if full else (count + 7) // 8)
        self.held = count if full else 0

    def __contains__(self, index: int) -> bool:
        return 0 <= index < self.count and bool(self._bits[index >> 3] & (1 << (index & 7)))

    def add(self, index: int) -> bool:
        """Mark ``index`` held; False if it already was."""
        if index in self:
            return False
        self._bits[index >> 3] |= 1 << (index & 7)
        self.held += 1
        return True

    @property
    def complete(self) -> bool:
        return self.held == self.count

    def missing(self) -> Iterable[int]:
        return (i for i in range(self.count) if i not in self)


@dataclass
class HolderState:
    """What the scheduler knows of one holder."""

    key: Hashable
    #: The chunks it can serve: None for the whole file (a complete holder).
    has: ChunkMap | None = None
    in_flight: dict[int, float] = field(default_factory=dict)  # chunk -> when asked
    dropped: str | None = None
    #: Verified bytes it delivered, chunks, and the seconds those took (for its rate).
    bytes: int = 0
    chunks: int = 0
    busy_seconds: float = 0.0

    def rate(self) -> float | None:
        """Bytes per second over its verified chunks; None before the first."""
        if not self.chunks or self.busy_seconds <= 0:
            return None
        return self.bytes / self.busy_seconds


class ChunkScheduler:
    """The chunk bookkeeping of one file fetched from several holders."""

    def __init__(self, sizes: list[int], clock: Seconds, depth: int = DEPTH,
                 max_copies: int = MAX_COPIES) -> None:
        #: Bytes of each chunk (the last one may be short).
        self.sizes = sizes
        self.clock = clock
        self.depth = depth
        self.max_copies = max_copies
        self.have = ChunkMap(len(sizes))
        self.holders: dict[Hashable, HolderState] = {}
        #: chunk -> holders fetching it now.
        self._fetching: dict[int, set[Hashable]] = {}
        self._next = 0  # no chunk below this is unassigned and missing (a scan hint)

    # -- holders ---------------------------------------------------------------------------

    def add_holder(self, key: Hashable, has: ChunkMap | None = None) -> None:
        self.holders[key] = HolderState(key, has)

    def live_holders(self) -> list[Hashable]:
        return [k for k, h in self.holders.items() if h.dropped is None]

    @property
    def complete(self) -> bool:
        return self.have.complete

    @property
    def stuck(self) -> bool:
        """Chunks are missing and no live holder can serve one of them: the job fails."""
        if self.complete:
            return False
        live = [h for h in self.holders.values() if h.dropped is None]
        return not any(h.has is None or any(i in h.has for i in self.have.missing())
                       for h in live)

    # -- choosing ------------------------------------------------------------------------

    def next_for(self, key: Hashable) -> int | None:
        """The chunk ``key`` should fetch now, or None (no room, nothing left for it, or
        dropped). The caller must report its outcome (`done`, `failed`, `bad`)."""
        h = self.holders[key]
        if h.dropped is not None or len(h.in_flight) >= self.depth or self.complete:
            return None
        index = self._unassigned_for(h)
        if index is None:
            index = self._end_game_for(h)
        if index is not None:
            h.in_flight[index] = self.clock.seconds()
            self._fetching.setdefault(index, set()).add(key)
        return index

    def _can(self, h: HolderState, index: int) -> bool:
        return h.has is None or index in h.has

    def _unassigned_for(self, h: HolderState) -> int | None:
        count = len(self.sizes)
        while self._next < count and (self._next in self.have or self._next in self._fetching):
            self._next += 1
        for index in range(self._next, count):
            if index not in self.have and index not in self._fetching and self._can(h, index):
                return index
        return None

    def _end_game_for(self, h: HolderState) -> int | None:
        """The in-flight chunk expected to finish last, that ``h`` is not fetching yet."""
        best: tuple[float, int] | None = None
        now = self.clock.seconds()
        for index, fetchers in self._fetching.items():
            if h.key in fetchers or len(fetchers) >= self.max_copies or not self._can(h, index):
                continue
            finish = min(self._expected_finish(self.holders[k], index, now) for k in fetchers)
            if best is None or finish > best[0]:
                best = (finish, index)
        return None if best is None else best[1]

    def _expected_finish(self, h: HolderState, index: int, now: float) -> float:
        rate = h.rate()
        started = h.in_flight.get(index, now)
        if rate is None:
            # Not measured yet: assume it is the slowest of all, so its chunks get copies.
            return float("inf")
        return started + self.sizes[index] / rate

    # -- outcomes --------------------------------------------------------------------------

    def _release(self, h: HolderState, index: int) -> float:
        started = h.in_flight.pop(index, None)
        fetchers = self._fetching.get(index)
        if fetchers is not None:
            fetchers.discard(h.key)
            if not fetchers:
                del self._fetching[index]
        if index < self._next and index not in self.have and index not in self._fetching:
            self._next = index
        return 0.0 if started is None else self.clock.seconds() - started

    def done(self, key: Hashable, index: int) -> list[Hashable]:
        """``key`` delivered chunk ``index``, verified. Returns the other holders still
        fetching it (end game): the caller cancels those fetches and reports them with
        `cancelled`. A copy that lost the race counts nothing."""
        h = self.holders[key]
        took = self._release(h, index)
        if not self.have.add(index):
            return []
        h.bytes += self.sizes[index]
        h.chunks += 1
        h.busy_seconds += took
        return sorted(self._fetching.get(index, ()), key=repr)

    def cancelled(self, key: Hashable, index: int) -> None:
        """``key``'s fetch of ``index`` was cancelled (another copy won): no blame."""
        self._release(self.holders[key], index)

    def failed(self, key: Hashable, index: int, reason: str) -> None:
        """``key``'s fetch of ``index`` failed (lost, error, stall): the holder is dropped,
        the chunk (and its others) go back to the pool."""
        self._release(self.holders[key], index)
        self.drop(key, reason)

    def bad(self, key: Hashable, index: int) -> None:
        """``key`` sent chunk ``index`` not matching its hash: dropped for the job."""
        self.failed(key, index, f"sent chunk {index}, which does not match its hash")

    def drop(self, key: Hashable, reason: str) -> None:
        """Use ``key`` no more; its chunks in flight go back to the pool."""
        h = self.holders[key]
        if h.dropped is None:
            h.dropped = reason
        for index in list(h.in_flight):
            self._release(h, index)
