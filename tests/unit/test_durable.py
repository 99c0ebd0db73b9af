"""Durable commits (mirror_server/durable.py): the store fsyncs a file before its rename and
its directory after, once per directory for a bundle; --no-fsync skips both. A recording
fsync checks what each call saw on disk."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mirror.hashing import digest_of
from mirror.mirror_server.durable import Durability
from mirror.mirror_server.store import DescriptorBudget, MirrorStore, StoreError
from mirror.mirror_server.tap import Options, mirror_settings
from mirror.wire.frames import BundleItem, FileHeader
from tests.unit.test_mirror_job import JobTestCase, source

MTIME = 1_500_000_000_000_000_000


def header_for(data: bytes) -> FileHeader:
    return FileHeader(len(data), len(data), MTIME, 0o644)


class RecordingFsync:
    """An fsync that records, per call, whether it was a directory and what the store's
    tree looked like at that moment (the final names present, and the temporaries)."""

    def __init__(self, top: Path, fail: OSError | None = None, fail_dirs: bool = False) -> None:
        self.top = top
        self.fail = fail
        self.fail_dirs = fail_dirs
        self.calls: list[tuple[str, str, list[str]]] = []

    def __call__(self, fd: int) -> None:
        st = os.fstat(fd)
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        name = os.path.relpath(os.readlink(f"/proc/self/fd/{fd}"), self.top)
        present = sorted(str(p.relative_to(self.top)) for p in self.top.rglob("*") if p.is_file()
                         and not p.name.startswith(".mirror-tmp-"))
        self.calls.append((kind, "temp" if ".mirror-tmp-" in name else name, present))
        if self.fail is not None and (kind == "dir") == self.fail_dirs:
            raise self.fail


class StoreDurability(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(os.path.abspath(self.mktemp()))
        self.base.mkdir(parents=True)
        self.top = self.base / "h_1"

    def store(self, durability: Durability) -> MirrorStore:
        store = MirrorStore(str(self.base), "h_1", DescriptorBudget(), durability)
        self.addCleanup(store.close)
        return store

    def bundle(self, *names: str) -> list[tuple[tuple[str, ...], BundleItem]]:
        files = []
        for i, name in enumerate(names):
            data = name.encode() * 3
            files.append((tuple(name.split("/")), BundleItem(
                i, len(data), MTIME, 0o644, digest_of(data), data)))
        return files

    def test_file_before_rename_directory_after(self) -> None:
        fsync = RecordingFsync(self.top)
        store = self.store(Durability(fsync=fsync))
        store.make_dir(("d",))
        store.write_whole(("d", "f"), b"abc", header_for(b"abc"), digest_of(b"abc"))
        self.assertEqual(fsync.calls, [
            ("file", "temp", []),  # the temporary file, not yet at its final name
            ("dir", "d", ["d/f"]),  # its directory, once the rename is done
        ])

    def test_big_file_commit(self) -> None:
        fsync = RecordingFsync(self.top)
        store = self.store(Durability(fsync=fsync))
        partial = store.create(("big",))
        data = b"x" * 300_000
        partial.write([data])
        partial.commit(header_for(data), digest_of(data))
        self.assertEqual(fsync.calls, [("file", "temp", []), ("dir", ".", ["big"])])

    def test_bundle_syncs_each_directory_once(self) -> None:
        fsync = RecordingFsync(self.top)
        store = self.store(Durability(fsync=fsync))
        for d in ("a", "b"):
            store.make_dir((d,))
        names = [f"a/{i}" for i in range(5)] + [f"b/{i}" for i in range(3)] + ["top"]
        self.assertEqual(store.write_many(self.bundle(*names)), [None] * 9)
        kinds = [(kind, name) for kind, name, _ in fsync.calls]
        self.assertEqual(kinds, [("file", "temp")] * 9 + [("dir", "a"), ("dir", "b"),
                                                          ("dir", ".")])
        # Each directory was synced after all its files were renamed into it.
        self.assertEqual(fsync.calls[9][2], sorted(names))

    def test_no_fsync(self) -> None:
        fsync = RecordingFsync(self.top)
        store = self.store(Durability(enabled=False, fsync=fsync))
        store.write_whole(("f",), b"abc", header_for(b"abc"), digest_of(b"abc"))
        self.assertEqual(store.write_many(self.bundle("g", "h")), [None, None])
        self.assertEqual(fsync.calls, [])
        self.assertEqual(sorted(os.listdir(self.top)), ["f", "g", "h"])

    def test_a_failed_fsync_places_nothing(self) -> None:
        fsync = RecordingFsync(self.top, fail=OSError(errno.EIO, os.strerror(errno.EIO)))
        store = self.store(Durability(fsync=fsync))
        partial = store.create(("f",))
        partial.write([b"abc"])
        with self.assertRaises(StoreError) as caught:
            partial.commit(header_for(b"abc"), digest_of(b"abc"))
        self.assertEqual(str(caught.exception), "fsync failed: Input/output error")
        partial.discard()
        self.assertEqual(os.listdir(self.top), [])

    def test_a_failed_directory_sync_fails_its_files(self) -> None:
        fsync = RecordingFsync(self.top, fail=OSError(errno.EIO, "Input/output error"),
                               fail_dirs=True)
        store = self.store(Durability(fsync=fsync))
        store.make_dir(("a",))
        problems = store.write_many(self.bundle("a/1", "a/2"))
        self.assertEqual(problems, ["cannot sync the directory: Input/output error"] * 2)
        with self.assertRaises(StoreError):
            store.write_whole(("f",), b"abc", header_for(b"abc"), digest_of(b"abc"))


class ServiceDurability(JobTestCase):
    """The mirror service's setting reaches the stores of its jobs; the real os.fsync path."""

    settings: dict[str, Any] = {"workers": 2, "queue_size": 10, "fsync": True}

    def run_tree(self) -> list[bool]:
        src = self.base / "src"
        (src / "d").mkdir(parents=True)
        for i in range(3):
            (src / "d" / f"f{i}").write_bytes(b"%d" % i * 100)
        (src / "big").write_bytes(os.urandom(300_000))  # a FETCH of its own
        self.serve(src)
        synced: list[bool] = []  # a directory?
        real = os.fsync

        def recording(fd: int) -> None:
            synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
            real(fd)

        self.patch(os, "fsync", recording)
        observer = self.run_job(source())
        self.assertEqual(observer.finished, [True])
        return synced

    def test_fsync_by_default(self) -> None:
        synced = self.run_tree()
        self.assertEqual(synced.count(False), 4)  # every file
        # The top for "big", and "d" once per bundle its files were fetched in.
        self.assertIn(synced.count(True), (2, 3))

    def test_no_fsync_setting(self) -> None:
        self.service.settings.fsync = False
        self.assertEqual(self.run_tree(), [])


class CommandLine(SynchronousTestCase):
    def test_no_fsync_flag(self) -> None:
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        for argv, fsync in (([], True), (["--no-fsync"], False)):
            options = Options()
            options.parseOptions(["--mirror-dir", base, *argv])
            self.assertIs(mirror_settings(options).fsync, fsync)
