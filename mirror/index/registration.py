"""`ExportRegistration`: keeps an index told what a node's exported tree holds.

At start and then every ``rescan`` seconds it walks the tree in a worker thread
(`export_scan.scan`) and tells the `IndexClient` what changed since the last walk (a new or
changed file with its size and mtime at once; a removed file), so only changes travel.
Digests follow: a background hasher takes the files without a known digest one at a time, in
pieces of `PIECE` bytes in the worker threads, pausing between pieces (on the clock, never
sleeping) to stay within ``hash_rate`` bytes per second; each digest is kept in the node's
`Digests` (a restart does not hash the export again) and sent to the index as an update.

A node that places files itself (a serving mirror) says so with `placed` and `removed`: the
change goes to the index at once, with the digest the node verified (nothing to hash), and
the walks that follow neither resend nor hash it. A walk that ran while a file was placed or
removed keeps what `placed`/`removed` said for it (the walk may have seen the tree before).
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.application.service import Service
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mirror.index.client import IndexClient
from mirror.index.codec import FileRecord
from mirror.index.digest_store import Digests, StatKey
from mirror.index.export_scan import Hashing, Snapshot, scan
from mirror.threads import Threads

#: Bytes hashed per worker-thread call.
PIECE = 4 * 1024 * 1024
#: Seconds the hasher may run ahead of its rate before it pauses (small files do not wait).
BURST = 0.1


class ExportRegistration(Service):
    log = Logger()

    def __init__(self, client: IndexClient, root_fd: int, threads: Threads, digests: Digests,
                 clock: IReactorTime, rescan: float = 10.0, hash_rate: int = 64 * 2**20,
                 max_files: int = 10_000_000) -> None:
        self.client = client
        self.root_fd = root_fd
        self.threads = threads
        self.digests = digests
        self.clock = clock
        self.rescan = rescan
        self.hash_rate = hash_rate
        self.max_files = max_files
        self._known: Snapshot = {}
        self._first = True
        #: Files waiting for their digest: path -> the stat key seen by the walk.
        self._to_hash: OrderedDict[str, StatKey] = OrderedDict()
        self._hashing = False
        #: The current run of hashing: when it started and the bytes read since.
        self._run_start = 0.0
        self._run_bytes = 0
        self._loop: task.LoopingCall | None = None
        #: Placed (stat key) or removed (None) while a walk ran: the walk's view is older.
        self._touched: dict[str, StatKey | None] = {}
        self._walking = False
        #: Digests of placed files not yet kept in ``digests`` (saved in batches).
        self._to_save: list[tuple[StatKey, str]] = []
        self._saving = False
        #: Walks done (tests and the log).
        self.scans = 0
        self.hashed = 0

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self.scan_once)
        self._loop.clock = self.clock
        self._loop.start(self.rescan, now=True).addErrback(
            lambda f: self.log.failure("rescanning the export stopped", f))

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.threads.run(self.digests.close)
        return None

    def scan_once(self) -> Deferred[None]:
        """Walk the export and send what changed (the LoopingCall's call)."""
        return Deferred.fromCoroutine(self._scan())

    def placed(self, path: str, key: StatKey, digest: str) -> None:
        """The node placed ``path`` (stat ``key``), verified against ``digest`` (hex):
        sent to the index now, and the digest kept. On the reactor thread."""
        self._known[path] = key
        self._to_hash.pop(path, None)
        if self._walking:
            self._touched[path] = key
        self.client.update(FileRecord(path, key[2], key[3], digest))
        self._to_save.append((key, digest))
        if not self._saving:
            self._saving = True
            # After this turn: the placements of one bundle are saved together.
            self.clock.callLater(0, self._save_digests)

    def removed(self, path: str) -> None:
        """The node removed ``path`` (its --delete): withdrawn from the index now."""
        self._known.pop(path, None)
        self._to_hash.pop(path, None)
        if self._walking:
            self._touched[path] = None
        self.client.remove(path)

    def _save_digests(self) -> None:
        batch, self._to_save = self._to_save, []

        def saved(_: object) -> None:
            self._saving = False
            if self._to_save:
                self._saving = True
                self._save_digests()

        d = self.threads.run(self.digests.put_many, batch)
        d.addErrback(lambda f: self.log.failure("keeping digests failed", f))
        d.addCallback(saved)

    async def _scan(self) -> None:
        self._walking = True
        self._touched = {}
        try:
            found = await self.threads.run(scan, self.root_fd, self.max_files)
            records = await self.threads.run(self._records, found)
        except Exception:
            self.log.failure("walking the export failed")
            return
        finally:
            self._walking = False
        # What was placed or removed during the walk is known better than the walk knew.
        for path, placed in self._touched.items():
            if placed is None:
                found.pop(path, None)
                records.pop(path, None)
            else:
                found[path] = placed
                # With its digest (maybe not saved yet).
                records[path] = self.client.files.get(path) or FileRecord(
                    path, placed[2], placed[3], None)
        self._touched = {}
        if self._first:
            self._first = False
            self.client.register(records.values())
        else:
            for path in self._known.keys() - found.keys():
                self.client.remove(path)
                self._to_hash.pop(path, None)
            for path, record in records.items():
                if self._known.get(path) != found[path]:
                    self.client.update(record)
        for path, key in found.items():
            if records[path].digest is None and self._known.get(path) != key:
                self._to_hash[path] = key
        self._known = found
        self.scans += 1
        if len(found) >= self.max_files:
            self.log.warn("the export holds more than {n} files: only {n} are registered",
                          n=self.max_files)
        self._start_hashing()

    def _records(self, found: Snapshot) -> dict[str, FileRecord]:
        """Records with the digests already known (in a worker thread: a database lookup)."""
        return {path: FileRecord(path, key[2], key[3], self.digests.get(key))
                for path, key in found.items()}

    def _start_hashing(self) -> None:
        if not self._hashing and self._to_hash and self.running:
            self._hashing = True
            Deferred.fromCoroutine(self._hash_all()).addErrback(
                lambda f: self.log.failure("hashing the export failed", f))

    async def _hash_all(self) -> None:
        self._run_start, self._run_bytes = self.clock.seconds(), 0
        try:
            while self._to_hash and self.running:
                path, key = self._to_hash.popitem(last=False)
                digest = await self._hash(path, key)
                if digest is not None and self._known.get(path) == key:
                    self.hashed += 1
                    self.client.update(FileRecord(path, key[2], key[3], digest))
        finally:
            self._hashing = False

    async def _hash(self, path: str, key: StatKey) -> str | None:
        try:
            hashing: Hashing = await self.threads.run(Hashing, self.root_fd, path, key)
        except Exception:
            return None  # gone or changed since the walk: the next walk sees it
        try:
            while self.running:
                n: int = await self.threads.run(hashing.step, PIECE)
                if not n:
                    break
                # Stay within the rate: the run's bytes take at least bytes / rate seconds.
                self._run_bytes += n
                ahead = (self._run_bytes / self.hash_rate
                         - (self.clock.seconds() - self._run_start))
                if ahead > BURST:
                    await task.deferLater(self.clock, ahead, lambda: None)
            else:
                return None
            digest: str | None = await self.threads.run(hashing.finish)
        except Exception:
            return None
        finally:
            if hashing.done is False:
                self.threads.run(hashing.close)
        if digest is not None:
            await self.threads.run(self.digests.put, key, digest)
        return digest

