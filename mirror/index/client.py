"""`IndexClient`: a node's registration with an index, kept up while the node runs.

The API a daemon calls (content server, serving mirror):

- ``register(files)``: the whole set of files the node holds (at start, after a scan);
- ``update(record)``: a file added or changed (a placed file, a digest computed);
- ``remove(path)``: a file gone;
- ``withdraw()``: leave the index now (``stopService`` does it too);
- ``query(path=...)`` / ``query(digest=...)``: who holds it (a list of `codec.Holder`).

Calls only change what the client holds in memory and wake its session; the session sends.
It connects (and reconnects, with backoff) to the index; on each connection it says HELLO;
if the index no longer knows the node (first connection, or the lease ran out) it sends the
whole set (BEGIN, FILES..., END), otherwise only the changes not yet acknowledged
(incremental FILES and REMOVE). It renews the lease every third of it. A change is sent as
soon as the session is free (within a round trip), so a placed file reaches the index in well
under a second. Memory: the set of files the node holds, and the changes not yet sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger

from mirror.index import codec
from mirror.index.client_protocol import IndexClientFactory, IndexClientProtocol, IndexRefused
from mirror.index.querier import ask_where, backoff

#: Seconds a clean stop waits for the index to acknowledge WITHDRAW.
WITHDRAW_TIMEOUT = 3.0


class IndexClient(Service):
    """Keeps ``node``'s registration (reached at ``address``, HOST:PORT) at the index."""

    log = Logger()

    def __init__(self, reactor: Any, index: str, node: str, address: str,
                 endpoint: IStreamClientEndpoint | None = None) -> None:
        host, port = codec.parse_address(index)
        self.index = index
        self.node = codec.node_name(node)
        self.address = codec.address(address)
        self.clock: IReactorTime = reactor
        self.files: dict[str, codec.FileRecord] = {}
        #: Changes the index has not acknowledged: a record, or None for a removal.
        self._dirty: dict[str, codec.FileRecord | None] = {}
        #: A whole listing was acknowledged during this process's life.
        self._synced = False
        self._wake: Deferred[None] | None = None
        self._proto: IndexClientProtocol | None = None
        #: Set once the index acknowledged everything sent (tests and operators wait on it).
        self.acknowledged = 0
        if endpoint is None:
            endpoint = HostnameEndpoint(reactor, host, port)
        self._service = ClientService(endpoint, IndexClientFactory(self.clock, self._connected),
                                      retryPolicy=backoff, clock=self.clock)

    # -- the API -------------------------------------------------------------------------

    def register(self, files: Iterable[codec.FileRecord]) -> None:
        """The whole set the node holds; a full listing is sent (once connected)."""
        self.files = {f.path: f for f in files}
        self._dirty.clear()
        self._synced = False
        if self._proto is not None:
            self._proto.transport.loseConnection()  # type: ignore[union-attr]
        self._poke()

    def update(self, record: codec.FileRecord) -> None:
        """A file the node holds now (new, changed, or its digest computed)."""
        codec.wire_path(record.path)
        if self.files.get(record.path) == record:
            return
        self.files[record.path] = record
        self._dirty[record.path] = record
        self._poke()

    def remove(self, path: str) -> None:
        """A file the node no longer holds."""
        if self.files.pop(path, None) is not None:
            self._dirty[path] = None
            self._poke()

    @property
    def pending(self) -> int:
        """Changes not acknowledged by the index yet."""
        return len(self._dirty) + (0 if self._synced else 1)

    def query(self, path: str | None = None, digest: str | None = None
              ) -> Deferred[list[codec.Holder]]:
        """The live holders of ``path`` (a file, or the files below a directory; ``""``
        for all) or of ``digest`` (64 hex digits)."""
        return ask_where(self._service, path, digest)

    async def withdraw(self) -> None:
        """Tell the index this node leaves (its files vanish from answers at once)."""
        self.files = {}
        self._dirty.clear()
        proto = self._proto
        if proto is None or proto.lost:
            return
        d = proto.request(codec.WITHDRAW, {})
        d.addTimeout(WITHDRAW_TIMEOUT, self.clock)
        try:
            await d
        except Exception as e:
            self.log.warn("withdrawing from index {index} failed: {reason}",
                          index=self.index, reason=str(e))

    # -- the Service ---------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._service.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()

        async def stop() -> None:
            await self.withdraw()
            await self._service.stopService()

        return Deferred.fromCoroutine(stop())

    # -- the session ---------------------------------------------------------------------

    def _poke(self) -> None:
        if self._wake is not None:
            d, self._wake = self._wake, None
            # After this turn: the caller may have more changes to add to the same batch.
            self.clock.callLater(0, d.callback, None)

    def _sleep(self, seconds: float) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._wake = d
        call = self.clock.callLater(seconds, self._poke)
        d.addBoth(lambda result: call.cancel() if call.active() else None)
        return d

    def _connected(self, proto: IndexClientProtocol) -> None:
        self._proto = proto
        Deferred.fromCoroutine(self._session(proto)).addErrback(
            lambda f: self.log.failure("index session failed", f))

    async def _session(self, proto: IndexClientProtocol) -> None:
        try:
            await self._run(proto)
        except (ConnectionError, IndexRefused, TimeoutError) as e:
            if self.running:
                self.log.info("index {index}: {reason}; connecting again",
                              index=self.index, reason=str(e))
                if not proto.lost and proto.transport is not None:
                    proto.transport.loseConnection()
        finally:
            if self._proto is proto:
                self._proto = None

    async def _run(self, proto: IndexClientProtocol) -> None:
        hello = await proto.request(codec.HELLO, {"node": self.node, "address": self.address})
        lease = float(hello["lease"]) if isinstance(hello.get("lease"), (int, float)) else 60.0
        lease = min(max(lease, 1.0), 86400.0)
        if not hello.get("known") or not self._synced:
            await self._full_listing(proto)
        renew_at = self.clock.seconds() + lease / 3
        while self.running and not proto.lost:
            if self._dirty:
                await self._flush(proto)
            elif self.clock.seconds() >= renew_at:
                try:
                    await proto.request(codec.RENEW, {})
                except IndexRefused as e:
                    if e.code != codec.E_NOT_REGISTERED:
                        raise
                    # The lease ran out (the index was away too long): register again.
                    await proto.request(codec.HELLO, {"node": self.node,
                                                      "address": self.address})
                    await self._full_listing(proto)
                renew_at = self.clock.seconds() + lease / 3
            else:
                await self._sleep(renew_at - self.clock.seconds())

    async def _full_listing(self, proto: IndexClientProtocol) -> None:
        snapshot = [f.to_wire() for f in self.files.values()]
        # The listing covers every change made so far; later ones go out after END.
        self._dirty.clear()
        await proto.request(codec.BEGIN, {})
        for run in codec.batches(snapshot, "files"):
            await proto.request(codec.FILES, {"files": run})
        await proto.request(codec.END, {})
        self._synced = True
        self.acknowledged += 1
        self.log.info("index {index}: registered {files} files as {node} at {address}",
                      index=self.index, files=len(snapshot), node=self.node,
                      address=self.address)

    async def _flush(self, proto: IndexClientProtocol) -> None:
        sent = dict(self._dirty)
        changed = [r.to_wire() for r in sent.values() if r is not None]
        removed = [p for p, r in sent.items() if r is None]
        requests: list[Deferred[Any]] = []
        for run in codec.batches(changed, "files"):
            requests.append(proto.request(codec.FILES, {"files": run}))
        for run in codec.batches(removed, "paths"):
            requests.append(proto.request(codec.REMOVE, {"paths": run}))
        results = await DeferredList(requests, consumeErrors=True)
        for ok, result in results:
            if not ok:
                result.raiseException()
        for path, record in sent.items():
            # Only what was sent is done: a change made meanwhile stays to be sent.
            if path in self._dirty and self._dirty[path] is record:
                del self._dirty[path]
        self.acknowledged += 1
