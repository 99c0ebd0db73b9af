"""The content server's factory: the exported root, the disk threads, and connection caps."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from mirror.content_server.protocol import ContentServerProtocol, ContentSettings
from mirror.limits import ConnectionLimiter, peer_host


def open_root(path: str) -> int:
    """Open the exported directory once; every later lookup is relative to this descriptor."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


class ContentServerFactory(Factory):
    log = Logger()

    def __init__(self, root_fd: int, threads: Any, settings: ContentSettings | None = None,
                 clock: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.root_fd = root_fd
        self.threads = threads
        self.settings = settings or ContentSettings()
        self.clock = clock
        self.limiter = ConnectionLimiter(self.settings.max_connections, self.settings.max_per_peer)

    def buildProtocol(self, addr: IAddress) -> ContentServerProtocol | None:
        host = peer_host(addr)
        if not self.limiter.admit(host):
            self.log.warn("refusing connection from {host}: connection limit reached", host=host)
            return None  # Twisted closes the connection at once
        proto = ContentServerProtocol(self)
        proto.peer_key = host
        return proto

    def connection_closed(self, proto: ContentServerProtocol) -> None:
        self.limiter.release(proto.peer_key)
