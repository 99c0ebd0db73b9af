"""Asking an index who holds what, without registering anything (`IndexQuerier`), and the
WHERE request both it and `mirror.index.client.IndexClient` send (`ask_where`).

A mirror server with ``--index`` but no ``--serve`` holds nothing others can fetch: it only
asks (multi-source download), over a connection kept up by a ``ClientService``.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint

from mirror.index import codec
from mirror.index.client_protocol import IndexClientFactory


def backoff(attempt: int) -> float:
    """Seconds before connecting again to an index after ``attempt`` failures."""
    return float(min(10.0, 0.5 * 2 ** min(attempt, 5)))


def ask_where(service: ClientService, path: str | None = None, digest: str | None = None
              ) -> Deferred[list[codec.Holder]]:
    """The live holders of ``path`` (a file, or the files below a directory; ``""`` for
    all) or of ``digest`` (64 hex digits), asked over ``service``'s connection; fails at
    once if the index cannot be reached."""
    message = {"path": codec.wire_path(path, empty_ok=True)} if path is not None else {
        "digest": codec.digest(digest)}
    d: Deferred[Any] = service.whenConnected(failAfterFailures=1)
    return d.addCallback(lambda proto: proto.request(codec.WHERE, message))


class IndexQuerier(Service):
    """A query-only connection to the index at ``index`` (HOST:PORT)."""

    def __init__(self, reactor: Any, index: str,
                 endpoint: IStreamClientEndpoint | None = None) -> None:
        host, port = codec.parse_address(index)
        self.index = index
        if endpoint is None:
            endpoint = HostnameEndpoint(reactor, host, port)
        self._service = ClientService(endpoint, IndexClientFactory(reactor),
                                      retryPolicy=backoff, clock=reactor)

    def query(self, path: str | None = None, digest: str | None = None
              ) -> Deferred[list[codec.Holder]]:
        """As `IndexClient.query`."""
        return ask_where(self._service, path, digest)

    def startService(self) -> None:
        super().startService()
        self._service.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self._service.stopService()
