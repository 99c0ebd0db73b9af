"""The index's factory: the registry, the settings, the clock, and the connection caps."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from mirror.index import codec
from mirror.index.activity import IndexActivity
from mirror.index.protocol import IndexServerProtocol
from mirror.index.registry import Registry
from mirror.index.settings import IndexSettings
from mirror.limits import ConnectionLimiter, LimitedFactory


class IndexFactory(LimitedFactory):
    protocol = IndexServerProtocol
    server_name = "index"

    def __init__(self, registry: Registry, clock: IReactorTime,
                 settings: IndexSettings | None = None) -> None:
        self.registry = registry
        self.clock = clock
        self.settings = settings or IndexSettings()
        self.limiter = ConnectionLimiter(self.settings.max_connections,
                                         self.settings.max_per_peer)
        #: What it did since it started (the web site's figures).
        self.activity = IndexActivity()

    def refusal(self, reason: str) -> bytes:
        """A connection-level ERROR (request id 0)."""
        return codec.frame(codec.ERROR, 0, codec.error_message(codec.E_BUSY, reason))
