"""A mirror server in a mirror network (issue 10): the store's observer seam, the index
notifier (`ExportRegistration.placed`/`removed`) and the holder finder (`IndexHolders`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mirror.hashing import digest_of
from mirror.index import codec
from mirror.index.digest_store import MemoryDigests, StatKey, stat_key
from mirror.index.registration import ExportRegistration
from mirror.mirror_server.deletion import remove_tree
from mirror.mirror_server.index_node import IndexHolders
from mirror.mirror_server.multi_source import Holder
from mirror.mirror_server.placement import ReactorPlacements
from mirror.mirror_server.store import DescriptorBudget, MirrorStore, StoreError
from mirror.testing import InlineThreads, StepThreads
from mirror.wire import frames
from tests.unit.test_index_registration import Recorder, temp_export

DIGEST = "ab" * 32


def row(node: str, address: str, path: str, digest: str | None = DIGEST) -> codec.Holder:
    return codec.Holder(node, address, path, 5, 0, digest, 1.0, 59.0)


class FakeQuerier:
    def __init__(self, rows: list[codec.Holder] | Exception) -> None:
        self.rows = rows
        self.asked: list[tuple[str | None, str | None]] = []

    def query(self, path: str | None = None, digest: str | None = None
              ) -> Deferred[list[codec.Holder]]:
        self.asked.append((path, digest))
        return fail(self.rows) if isinstance(self.rows, Exception) else succeed(self.rows)


class IndexHoldersTests(SynchronousTestCase):
    def test_holders_of_the_same_digest_but_itself(self) -> None:
        querier = FakeQuerier([
            row("a", "10.0.0.1:9500", "h_1/f"),
            row("me", "10.0.0.9:9500", "h_1/f"),              # itself, by address
            row("me", "10.0.0.8:9500", "h_1/f"),              # itself, by name
            row("b", "[::1]:9501", "elsewhere/g"),            # another path, same content
            row("c", "10.0.0.3:9500", "h_1/f", "cd" * 32),    # another content
            row("d", "10.0.0.4:9500", "h_1/f", None),         # digest not known yet
        ])
        finder = IndexHolders(querier, "10.0.0.9:9500", "me")
        found = self.successResultOf(finder.holders("h_1/f", bytes.fromhex(DIGEST)))
        self.assertEqual(querier.asked, [(None, DIGEST)])
        self.assertEqual(found, [Holder("10.0.0.1", 9500, "h_1/f"),
                                 Holder("::1", 9501, "elsewhere/g")])

    def test_an_index_that_cannot_answer_fails_the_lookup(self) -> None:
        finder = IndexHolders(FakeQuerier(ConnectionError("index down")))
        self.failureResultOf(finder.holders("p", bytes.fromhex(DIGEST)), ConnectionError)


class Recording:
    """A `PlacementObserver` called directly (as from the disk thread)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def placed(self, top: str, parts: tuple[str, ...], st: os.stat_result,
               digest: bytes) -> None:
        self.calls.append(("placed", top, parts, st.st_size, digest))

    def removed(self, top: str, parts: tuple[str, ...]) -> None:
        self.calls.append(("removed", top, parts))


class StoreObserverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.mirror = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.mirror, True)
        self.seen = Recording()
        self.store = MirrorStore(self.mirror, "host_1", DescriptorBudget(),
                                 observer=self.seen)
        self.addCleanup(self.store.close)

    def header(self, data: bytes) -> frames.FileHeader:
        return frames.FileHeader(len(data), len(data), 10**18, 0o644)

    def test_each_placed_file_is_told_with_its_digest(self) -> None:
        self.store.make_dir(("d",))
        self.store.write_whole(("d", "small"), b"abc", self.header(b"abc"), digest_of(b"abc"))
        partial = self.store.create(("big",))
        partial.write((b"x" * 1000,))
        partial.commit(self.header(b"x" * 1000), digest_of(b"x" * 1000))
        self.assertEqual(self.seen.calls, [
            ("placed", "host_1", ("d", "small"), 3, digest_of(b"abc")),
            ("placed", "host_1", ("big",), 1000, digest_of(b"x" * 1000))])

    def test_a_file_that_fails_verification_is_not_told(self) -> None:
        partial = self.store.create(("bad",))
        partial.write((b"x",))
        with self.assertRaises(StoreError):
            partial.commit(self.header(b"x"), digest_of(b"y"))
        partial.discard()
        self.assertEqual(self.seen.calls, [])

    def test_removed_files_are_told_not_directories_or_counts(self) -> None:
        self.store.make_dir(("d", "e"))
        for parts in (("d", "a"), ("d", "e", "b")):
            self.store.write_whole(parts, b"1", self.header(b"1"), digest_of(b"1"))
        self.seen.calls.clear()
        remove_tree(self.store.root_fd, ("d",), lambda p, d: False, count_only=True,
                    removed=self.store.file_removed)
        self.assertEqual(self.seen.calls, [])
        remove_tree(self.store.root_fd, ("d",), lambda p, d: False,
                    removed=self.store.file_removed)
        self.assertEqual(sorted(self.seen.calls), [("removed", "host_1", ("d", "a")),
                                                   ("removed", "host_1", ("d", "e", "b"))])


class Listener:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def placed(self, path: str, key: StatKey, digest: str) -> None:
        self.calls.append(("placed", path, key[2], digest))

    def removed(self, path: str) -> None:
        self.calls.append(("removed", path))


class ReactorPlacementsTests(SynchronousTestCase):
    def test_changes_hop_to_the_reactor_as_wire_paths(self) -> None:
        hops: list[Any] = []
        listener = Listener()
        seam = ReactorPlacements(listener, lambda f, *a: hops.append((f, a)))
        st = os.stat(__file__)
        seam.placed("h_1", ("d", "f"), st, b"\x01" * 32)
        seam.removed("h_1", ("g",))
        self.assertEqual(listener.calls, [])  # nothing on the calling (disk) thread
        for f, a in hops:
            f(*a)
        self.assertEqual(listener.calls, [("placed", "h_1/d/f", st.st_size, "01" * 32),
                                          ("removed", "h_1/g")])


class NotifierTests(SynchronousTestCase):
    """`ExportRegistration.placed` / `removed`: a serving mirror's own changes."""

    def setUp(self) -> None:
        self.root, self.fd = temp_export(self)
        self.clock = Clock()
        self.client = Recorder()
        self.digests = MemoryDigests()

    def start(self, threads: Any) -> ExportRegistration:
        reg = ExportRegistration(self.client, self.fd, threads,  # type: ignore[arg-type]
                                 self.digests, self.clock, rescan=5.0)
        reg.startService()
        self.addCleanup(lambda: reg.running and reg.stopService())
        return reg

    def place(self, name: str, data: bytes) -> StatKey:
        path = os.path.join(self.root, name)
        with open(path, "wb") as f:
            f.write(data)
        return stat_key(os.stat(path))

    def test_placed_file_goes_at_once_with_its_digest_and_is_not_hashed(self) -> None:
        reg = self.start(InlineThreads())
        self.client.calls.clear()
        key = self.place("f", b"data")
        reg.placed("f", key, digest_of(b"data").hex())
        self.assertEqual(self.client.calls, [("update", "f")])
        self.assertEqual(self.client.files["f"].digest, digest_of(b"data").hex())
        self.clock.advance(0)  # the digest is kept (a restart does not hash it)
        self.assertEqual(self.digests.get(key), digest_of(b"data").hex())
        self.clock.advance(5)  # the next walk: nothing new to send or hash
        self.assertEqual(self.client.calls, [("update", "f")])
        self.assertEqual(reg.hashed, 0)
        os.unlink(os.path.join(self.root, "f"))
        reg.removed("f")
        self.assertEqual(self.client.calls[-1], ("remove", "f"))
        self.clock.advance(5)
        self.assertEqual(self.client.calls[-1], ("remove", "f"))
        self.assertEqual(len(self.client.calls), 2)

    def test_a_walk_older_than_a_placement_or_removal_does_not_undo_it(self) -> None:
        threads = StepThreads()
        self.place("gone", b"old")
        reg = self.start(threads)
        threads.run_all()
        self.assertEqual(set(self.client.files), {"gone"})
        hashed = reg.hashed
        self.clock.advance(5)
        threads.step()  # the walk ran: it saw "gone" and no "new"
        key = self.place("new", b"new")
        reg.placed("new", key, digest_of(b"new").hex())
        os.unlink(os.path.join(self.root, "gone"))
        reg.removed("gone")
        threads.run_all()
        self.clock.advance(0)
        threads.run_all()
        self.assertEqual({p: r.digest for p, r in self.client.files.items()},
                         {"new": digest_of(b"new").hex()})
        self.assertEqual(reg.hashed, hashed)
