"""`ExportRegistration` on a fake clock with inline threads: what a node tells its index
about its export (walks, incremental changes, digests at a bounded rate, kept digests)."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mirror.content_server.factory import open_root
from mirror.hashing import digest_of
from mirror.index import registration
from mirror.index.codec import FileRecord
from mirror.index.digest_store import MemoryDigests, SqliteDigests
from mirror.index.registration import ExportRegistration
from mirror.testing import InlineThreads

MiB = 1024 * 1024


class Recorder:
    """Stands for `IndexClient`: what the registration told it."""

    def __init__(self) -> None:
        self.files: dict[str, FileRecord] = {}
        self.calls: list[tuple[str, str]] = []

    def register(self, files: Any) -> None:
        self.files = {f.path: f for f in files}
        self.calls.append(("register", ""))

    def update(self, record: FileRecord) -> None:
        self.files[record.path] = record
        self.calls.append(("update", record.path))

    def remove(self, path: str) -> None:
        del self.files[path]
        self.calls.append(("remove", path))


def temp_export(case: SynchronousTestCase) -> tuple[str, int]:
    """A temporary export directory and its root descriptor, both cleaned up after."""
    root = tempfile.mkdtemp()
    case.addCleanup(shutil.rmtree, root, True)
    fd = open_root(root)
    case.addCleanup(os.close, fd)
    return root, fd


class RegistrationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root, self.fd = temp_export(self)
        self.clock = Clock()

    def write(self, name: str, data: bytes) -> None:
        path = os.path.join(self.root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    def start(self, digests: Any = None, rate: int = 1000 * MiB) -> tuple[ExportRegistration,
                                                                        Recorder]:
        client = Recorder()
        reg = ExportRegistration(client, self.fd, InlineThreads(),  # type: ignore[arg-type]
                                 digests or MemoryDigests(), self.clock, rescan=5.0,
                                 hash_rate=rate)
        reg.startService()
        self.addCleanup(lambda: reg.running and reg.stopService())
        return reg, client

    def test_walk_then_digests_then_changes(self) -> None:
        self.write("d/a", b"aa")
        self.write("b", b"b")
        self.write(".mirror-tmp-x", b"temporary")
        os.symlink("/etc/passwd", os.path.join(self.root, "link"))
        os.mkfifo(os.path.join(self.root, "fifo"))
        reg, client = self.start()
        self.assertEqual(client.calls[0], ("register", ""))
        self.assertEqual({p: (f.size, f.digest) for p, f in client.files.items()},
                         {"b": (1, digest_of(b"b").hex()), "d/a": (2, digest_of(b"aa").hex())})
        client.calls.clear()
        self.write("d/new", b"new")
        os.unlink(os.path.join(self.root, "b"))
        self.clock.advance(5)
        self.assertEqual(sorted(client.calls),
                         [("remove", "b"), ("update", "d/new"), ("update", "d/new")])
        self.assertEqual(client.files["d/new"].digest, digest_of(b"new").hex())
        # An unchanged tree sends nothing.
        client.calls.clear()
        self.clock.advance(5)
        self.assertEqual(client.calls, [])

    def test_hashing_keeps_to_its_rate(self) -> None:
        self.patch(registration, "PIECE", MiB)
        self.write("big", b"x" * (3 * MiB))
        reg, client = self.start(rate=MiB)
        self.assertIsNone(client.files["big"].digest)
        self.clock.advance(2.9)
        self.assertIsNone(client.files["big"].digest)
        self.clock.advance(0.1)
        self.assertEqual(client.files["big"].digest, digest_of(b"x" * (3 * MiB)).hex())

    def test_digests_survive_a_restart(self) -> None:
        self.write("a", b"a")
        state = os.path.join(self.root, ".mirror-state")
        first, _ = self.start(SqliteDigests(state))
        self.assertEqual(first.hashed, 1)
        first.stopService()
        second, client = self.start(SqliteDigests(state))
        self.assertEqual(second.hashed, 0)
        self.assertEqual(client.files["a"].digest, digest_of(b"a").hex())
        self.assertEqual(os.stat(state).st_mode & 0o777, 0o700)
        # A file rewritten with the same size and mtime is hashed again (its ctime moved).
        st = os.stat(os.path.join(self.root, "a"))
        second.stopService()
        self.write("a", b"b")
        os.utime(os.path.join(self.root, "a"), ns=(st.st_atime_ns, st.st_mtime_ns))
        third, client = self.start(SqliteDigests(state))
        self.assertEqual(third.hashed, 1)
        self.assertEqual(client.files["a"].digest, digest_of(b"b").hex())
