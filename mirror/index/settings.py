"""The index daemon's local settings (flags of ``twistd mirror-index``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IndexSettings:
    #: Seconds a registration lasts unless renewed (nodes renew every third of it).
    lease: float = 60.0
    #: Live nodes, and files one node may register.
    max_nodes: int = 10_000
    max_files_per_node: int = 10_000_000
    #: Rows a WHERE answer holds at most (it then says it was cut short).
    max_answer: int = 100_000
    #: Connections in total and per client address.
    max_connections: int = 1024
    max_per_peer: int = 256
    #: A connection that sends no request for this long is closed.
    idle_timeout: float = 600.0
    #: A frame, once started, must complete within this many seconds.
    frame_timeout: float = 10.0
