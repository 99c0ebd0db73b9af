"""``--serve``: a mirror server exports its mirror directory over the content protocol.

The content server's own factory and protocol serve it (`mirror.content_server`), read-only,
with the mirror server's disk threads. What it lists and sends is only ever complete,
verified files: a final name in the mirror holds nothing else (store.py places files by
rename once verified), and the reserved names (`paths.TEMP_PREFIX` temporaries, the
`paths.STATE_DIR_NAME` state directory) are never valid wire paths, so the content server
neither lists nor serves them. Another mirror mirrors from it like from any content server:
``HOST:PORT:ORIGIN-HOST_PORT/PATH``.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import IServiceCollection
from twisted.internet.interfaces import IProtocolFactory, IReactorTime

from mirror.content_server.factory import ContentServerFactory, open_root
from mirror.content_server.protocol import ContentSettings
from mirror.daemon_options import add_listeners
from mirror.threads import Threads


def serving_factory(mirror_dir: str, threads: Threads, max_rate: int = 0,
                    clock: IReactorTime | None = None) -> ContentServerFactory:
    """The content factory exporting ``mirror_dir`` (capped at ``max_rate`` bytes/s)."""
    settings = ContentSettings(max_rate=max_rate)
    return ContentServerFactory(open_root(mirror_dir), threads, settings, clock)


def add_serving(parent: IServiceCollection, mirror_dir: str, threads: Threads,
                endpoints: list[str], max_rate: int, command: str,
                secure: Callable[[IProtocolFactory], IProtocolFactory] = lambda f: f,
                ) -> ContentServerFactory:
    """Listen on every ``--serve`` endpoint with one `serving_factory`, under ``parent``;
    ``secure`` wraps it as the daemon's other listeners are (TLS and the peer check when
    secured: `mirror.security.options.secure_factory`)."""
    factory = serving_factory(mirror_dir, threads, max_rate)
    add_listeners(parent, endpoints, secure(factory), command)
    return factory
