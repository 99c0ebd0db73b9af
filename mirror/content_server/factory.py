"""The content server's factory: the exported root, the disk threads, and connection caps."""

from __future__ import annotations

import os

from twisted.internet.defer import DeferredSemaphore
from twisted.internet.interfaces import IReactorTime

from mirror.content_server.egress import EgressLimit
from mirror.content_server.fetch import DigestCache
from mirror.content_server.observed import ServingStats
from mirror.content_server.protocol import (
    ContentFactoryBase,
    ContentServerProtocol,
    ContentSettings,
)
from mirror.limits import ConnectionLimiter
from mirror.threads import Threads


def open_root(path: str) -> int:
    """Open the exported directory once; every later lookup is relative to this descriptor."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


class ContentServerFactory(ContentFactoryBase):
    """The exported root (an open descriptor), the disk threads, the settings."""

    protocol = ContentServerProtocol

    def __init__(self, root_fd: int, threads: Threads, settings: ContentSettings | None = None,
                 clock: IReactorTime | None = None) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.root_fd = root_fd
        self.digests = DigestCache()
        #: What was served, for the web status page and /metrics.
        self.serving = ServingStats()
        self.threads = threads
        self.settings = settings or ContentSettings()
        self.clock = clock
        self.limiter = ConnectionLimiter(self.settings.max_connections, self.settings.max_per_peer)
        #: Walkers at once in the whole server (see ``ContentSettings.max_lists``).
        self.list_slots = DeferredSemaphore(self.settings.max_lists)
        self.chunk_hashes = self.digests.chunks
        self.hash_slots = DeferredSemaphore(self.settings.max_hashing)
        if self.settings.max_rate:
            self.egress = EgressLimit(clock, self.settings.max_rate)

    @property
    def lists(self) -> int:
        """LISTs walking the tree now."""
        return self.list_slots.limit - self.list_slots.tokens
