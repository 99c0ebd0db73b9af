"""MirrorStore: its top directory is one component, and open directories stay bounded."""

from __future__ import annotations

import hashlib
import os
import resource

from twisted.trial.unittest import SynchronousTestCase

from mirror import paths
from mirror.mirror_server.store import MirrorStore, StoreError
from mirror.wire.frames import FileHeader


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
            store = MirrorStore(mirror, "a/b_1")
            store.close()
        self.assertEqual(os.listdir(outside), [])


class DirectoryCacheAndFileLimit(SynchronousTestCase):
    """MirrorStore keeps up to MAX_CACHED_DIRS (256) directory fds open per store, and a job
    opens one store per source, all at once: 4 sources of 300 directories each hold 1024 fds,
    the common default soft limit (`ulimit -n`), and every later file of the job then fails
    with "Too many open files". The cache must give fds back (or be bounded process-wide)."""

    def test_many_sources_with_many_directories(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        open_now = len(os.listdir("/proc/self/fd"))
        limit = open_now + 900  # as if the daemon ran with ulimit -n 1024
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        stores = []
        try:
            for i in range(4):
                store = MirrorStore(base, f"host{i}_1")
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
                                      hashlib.sha256(data).digest())
                except StoreError as e:
                    self.fail(f"source {i}: {e}")
        finally:
            for store in stores:
                store.close()
