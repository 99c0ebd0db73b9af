"""`RegistryService`: creates the registry's tables at start and closes its pool at stop."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.python.failure import Failure

from mirror.index.database import DatabaseRegistry


class RegistryService(Service):
    log = Logger()

    def __init__(self, registry: DatabaseRegistry, pool: adbapi.ConnectionPool,
                 reactor: IReactorCore) -> None:
        self.registry = registry
        self.pool = pool
        self.reactor = reactor

    def startService(self) -> None:
        super().startService()

        def failed(failure: Failure) -> None:
            self.log.critical("mirror-index: cannot create the registry's tables: {reason}",
                              reason=failure.getErrorMessage())
            self.reactor.stop()

        self.registry.create().addErrback(failed)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.pool.close()
        return None
