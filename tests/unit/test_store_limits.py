"""MirrorStore: its top directory is one component, and open directories stay bounded by the
DescriptorBudget its service hands to all its stores."""

from __future__ import annotations

import os
import resource

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from mirror import paths
from mirror.hashing import digest_of
from mirror.mirror_server.service import MirrorService
from mirror.mirror_server.store import DescriptorBudget, MirrorStore, StoreError
from mirror.testing import InlineThreads
from mirror.wire.frames import FileHeader


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class TopIsOneComponent(SynchronousTestCase):
    """``top`` is meant to be one safe component ("one component, no tricks") but a ``/``
    inside it is accepted, and the kernel then follows a symlink at its first component.
    (Not reachable today: control.check_host refuses "/" in a host.)"""

    def test_slash_in_top_refused(self) -> None:
        base = os.path.abspath(self.mktemp())
        mirror, outside = os.path.join(base, "mirror"), os.path.join(base, "outside")
        os.makedirs(mirror)
        os.makedirs(outside)
        os.symlink(outside, os.path.join(mirror, "a"))
        with self.assertRaises(paths.UnsafePath):
            store = MirrorStore(mirror, "a/b_1", DescriptorBudget())
            store.close()
        self.assertEqual(os.listdir(outside), [])


class DirectoryCacheAndFileLimit(SynchronousTestCase):
    """MirrorStore kept up to 256 directory fds open per store, and a job opens one store per
    source, all at once: 4 sources of 300 directories each held 1024 fds, the common default
    soft limit (`ulimit -n`), and every later file of the job then failed with "Too many open
    files". The stores of a service share one budget of cached descriptors."""

    def test_many_sources_with_many_directories(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = open_fds() + 900  # as if the daemon ran with ulimit -n 1024
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        budget = DescriptorBudget()
        stores = []
        try:
            for i in range(4):
                store = MirrorStore(base, f"host{i}_1", budget)
                stores.append(store)
                for j in range(300):
                    try:
                        store.make_dir(("d", f"{j:03d}"))
                    except StoreError as e:
                        self.fail(f"source {i}, directory {j}: {e}")
                data = b"x"
                header = FileHeader(1, 1, 0, 0o644)
                try:
                    store.write_whole(("d", "299", "f"), data, header,
                                      digest_of(data))
                except StoreError as e:
                    self.fail(f"source {i}: {e}")
        finally:
            for store in stores:
                store.close()


class SharedBudget(SynchronousTestCase):
    """The budget bounds the descriptors cached by all the stores that share it."""

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)

    def store(self, top: str, budget: DescriptorBudget, close: bool = True) -> MirrorStore:
        store = MirrorStore(self.base, top, budget)
        if close:
            self.addCleanup(store.close)
        return store

    def test_bounds_cached_descriptors_across_stores(self) -> None:
        budget = DescriptorBudget(limit=5)
        baseline = open_fds()
        one = self.store("one_1", budget, close=False)
        two = self.store("two_1", budget, close=False)
        for store in (one, two):
            for j in range(4):
                store.make_dir((f"d{j}",))
        self.assertEqual(budget.used, 5)
        # The two roots and the five cached directories: no more stay open.
        self.assertEqual(open_fds(), baseline + 2 + 5)
        # Directories past the budget still work, opened per use.
        data = b"x"
        two.write_whole(("d3", "f"), data, FileHeader(1, 1, 0, 0o644),
                        digest_of(data))
        self.assertEqual(os.listdir(os.path.join(self.base, "two_1", "d3")), ["f"])
        self.assertEqual(open_fds(), baseline + 2 + 5)
        one.close()  # gives back its four
        self.assertEqual(budget.used, 1)
        two.make_dir(("e",))
        self.assertEqual(budget.used, 2)
        two.close()
        self.assertEqual((budget.used, open_fds()), (0, baseline))

    def test_a_directory_counts_once(self) -> None:
        budget = DescriptorBudget(limit=5)
        store = self.store("one_1", budget)
        for _ in range(3):
            store.make_dir(("d",))
        self.assertEqual(budget.used, 1)

    def test_two_services_do_not_share_their_budget(self) -> None:
        a, b = (MirrorService(self.base, reactor=MemoryReactorClock(), threads=InlineThreads())
                for _ in range(2))
        self.assertIsNot(a.dir_budget, b.dir_budget)
        full = self.store("a_1", a.dir_budget)
        for j in range(a.dir_budget.limit + 1):
            full.make_dir((f"d{j}",))
        self.assertEqual(a.dir_budget.used, a.dir_budget.limit)
        self.store("b_1", b.dir_budget).make_dir(("d",))
        self.assertEqual(b.dir_budget.used, 1)
