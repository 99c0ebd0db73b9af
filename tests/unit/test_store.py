"""MirrorStore: verified, atomic placement under the mirror root, never through a link."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from mirror import paths
from mirror.hashing import BESIDE_MIN, digest_of
from mirror.mirror_server import service as mirror_service, store
from mirror.mirror_server.service import MirrorService, MirrorSettings
from mirror.mirror_server.store import DescriptorBudget, MirrorStore, StoreError, sweep_temporaries
from mirror.testing import InlineThreads
from mirror.wire.frames import BundleItem, FileHeader

MTIME = 1_500_000_000_987_654_321


def header_for(data: bytes, mode: int = 0o640, mtime: int = MTIME) -> FileHeader:
    return FileHeader(len(data), len(data), mtime, mode)


class StoreTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        base = os.path.abspath(self.mktemp())
        self.mirror = os.path.join(base, "mirror")
        self.outside = os.path.join(base, "outside")
        os.makedirs(self.mirror)
        os.makedirs(self.outside)
        self.store = MirrorStore(self.mirror, "host_1", DescriptorBudget())
        self.addCleanup(self.store.close)
        self.top = os.path.join(self.mirror, "host_1")

    def path(self, *parts: str) -> str:
        return os.path.join(self.top, *parts)

    def temporaries(self) -> list[str]:
        found = []
        for dirpath, dirnames, filenames in os.walk(os.path.dirname(self.mirror)):
            found += [os.path.join(dirpath, n) for n in filenames + dirnames
                      if n.startswith(paths.TEMP_PREFIX)]
        return found

    def put_old(self, *parts: str, data: bytes = b"old version") -> None:
        os.makedirs(self.path(*parts[:-1]), exist_ok=True)
        with open(self.path(*parts), "wb") as f:
            f.write(data)

    def read(self, *parts: str) -> bytes:
        with open(self.path(*parts), "rb") as f:
            return f.read()


class Placing(StoreTestCase):
    def test_top_directory_created(self) -> None:
        self.assertTrue(os.path.isdir(self.top))

    def test_write_whole(self) -> None:
        data = b"some content"
        self.store.write_whole(("d", "e", "f.txt"), data, header_for(data), digest_of(data))
        self.assertEqual(self.read("d", "e", "f.txt"), data)
        st = os.stat(self.path("d", "e", "f.txt"))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o640)
        self.assertEqual(st.st_mtime_ns, MTIME)
        self.assertEqual(self.temporaries(), [])

    def test_empty_file(self) -> None:
        self.store.write_whole(("empty",), b"", header_for(b""), digest_of(b""))
        self.assertEqual(self.read("empty"), b"")

    def test_mode_exactly_as_sent(self) -> None:
        old = os.umask(0o077)
        self.addCleanup(os.umask, old)
        for i, mode in enumerate((0o644, 0o755, 0o600, 0o444, 0o1777)):
            self.store.write_whole((f"f{i}",), b"x", header_for(b"x", mode=mode), digest_of(b"x"))
            self.assertEqual(stat.S_IMODE(os.stat(self.path(f"f{i}")).st_mode), mode)

    def test_final_name_only_after_commit(self) -> None:
        partial = self.store.create(("dir", "big.bin"))
        self.assertTrue(partial.temp_name.startswith(paths.TEMP_PREFIX))
        partial.write([b"abc", memoryview(b"def")])
        self.assertFalse(os.path.exists(self.path("dir", "big.bin")))
        self.assertEqual(os.listdir(self.path("dir")), [partial.temp_name])  # beside the target
        partial.write([b"ghi"])
        self.assertFalse(os.path.exists(self.path("dir", "big.bin")))
        data = b"abcdefghi"
        partial.commit(header_for(data), digest_of(data))
        self.assertEqual(self.read("dir", "big.bin"), data)
        self.assertEqual(os.listdir(self.path("dir")), ["big.bin"])

    def test_replaces_the_old_version_only_at_commit(self) -> None:
        self.put_old("f")
        partial = self.store.create(("f",))
        partial.write([b"new version, longer"])
        self.assertEqual(self.read("f"), b"old version")
        data = b"new version, longer"
        partial.commit(header_for(data), digest_of(data))
        self.assertEqual(self.read("f"), data)
        self.assertEqual(self.temporaries(), [])

    def test_many_pieces(self) -> None:
        pieces = [os.urandom(1000) for _ in range(300)]
        data = b"".join(pieces)
        partial = self.store.create(("big",))
        for i in range(0, 300, 7):
            partial.write(pieces[i : i + 7])
        partial.commit(header_for(data), digest_of(data))
        self.assertEqual(self.read("big"), data)

    def test_discard(self) -> None:
        self.put_old("f")
        partial = self.store.create(("f",))
        partial.write([b"partial"])
        partial.discard()
        partial.discard()  # twice is harmless
        self.assertEqual(self.read("f"), b"old version")
        self.assertEqual(self.temporaries(), [])

    def test_make_dir(self) -> None:
        self.store.make_dir(("x", "y", "z"))
        self.assertTrue(os.path.isdir(self.path("x", "y", "z")))

    def test_set_dir_meta(self) -> None:
        self.store.make_dir(("x",))
        self.store.set_dir_meta(("x",), 0o751, MTIME)
        st = os.stat(self.path("x"))
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_mtime_ns), (0o751, MTIME))

    def test_directory_stays_writable_by_its_owner(self) -> None:
        # A read-only or closed source directory must not lock the daemon out of later
        # updates inside it (review finding; root would not notice).
        for mode, expected in ((0o555, 0o755), (0o000, 0o700), (0o2750, 0o2750)):
            self.store.make_dir(("ro",))
            self.store.set_dir_meta(("ro",), mode, MTIME)
            self.assertEqual(stat.S_IMODE(os.stat(self.path("ro")).st_mode), expected)

    def test_modes_of_created_directories(self) -> None:
        # The top directory is 0o755 (under umask); directories inside are created private
        # (0o700) until set_dir_meta gives them the source's mode after their contents.
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        store = MirrorStore(self.mirror, "host_2", DescriptorBudget())
        self.addCleanup(store.close)
        top = os.path.join(self.mirror, "host_2")
        store.make_dir(("a", "b"))
        data = b"x"
        store.write_whole(("c", "f"), data, header_for(data), digest_of(data))
        modes = {name: stat.S_IMODE(os.stat(os.path.join(top, *name.split("/"))).st_mode)
                 for name in (".", "a", "a/b", "c")}
        self.assertEqual(modes, {".": 0o755, "a": 0o700, "a/b": 0o700, "c": 0o700})

    def test_top_directory_mode_under_umask(self) -> None:
        old = os.umask(0o077)
        self.addCleanup(os.umask, old)
        MirrorStore(self.mirror, "host_3", DescriptorBudget()).close()
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.mirror, "host_3")).st_mode),
                         0o700)

    def test_top_must_be_one_safe_component(self) -> None:
        for top in ("..", "/etc", ".mirror-tmp-x"):
            self.assertRaises(paths.UnsafePath, MirrorStore, self.mirror, top, DescriptorBudget())

    def test_top_as_a_symlink_refused(self) -> None:
        os.symlink(self.outside, os.path.join(self.mirror, "evil_1"))
        self.assertRaises(paths.UnsafePath, MirrorStore, self.mirror, "evil_1",
                          DescriptorBudget())


class Verification(StoreTestCase):
    def assert_untouched(self) -> None:
        self.assertEqual(self.read("d", "f"), b"old version")
        self.assertEqual(self.temporaries(), [])

    def test_size_mismatch(self) -> None:
        self.put_old("d", "f")
        data = b"twelve bytes"
        header = FileHeader(13, 13, MTIME, 0o644)
        with self.assertRaises(StoreError) as cm:
            self.store.write_whole(("d", "f"), data, header, digest_of(data))
        self.assertIn("size mismatch: got 12 bytes, expected 13", str(cm.exception))
        self.assert_untouched()

    def test_size_mismatch_streamed(self) -> None:
        self.put_old("d", "f")
        partial = self.store.create(("d", "f"))
        partial.write([b"abc"])
        with self.assertRaises(StoreError):
            partial.commit(FileHeader(4, 4, 0, 0o644), digest_of(b"abc"))
        partial.discard()
        self.assert_untouched()

    def test_digest_mismatch(self) -> None:
        self.put_old("d", "f")
        data = b"content"
        with self.assertRaises(StoreError) as cm:
            self.store.write_whole(("d", "f"), data, header_for(data), digest_of(b"contenT"))
        self.assertIn("BLAKE3 mismatch", str(cm.exception))
        self.assert_untouched()

    def test_sha256_of_the_data_is_refused(self) -> None:
        # The wire's digest is BLAKE3 only: a (correct) SHA-256 of the data is a mismatch,
        # small file or streamed.
        self.put_old("d", "f")
        data = b"content"
        with self.assertRaises(StoreError):
            self.store.write_whole(("d", "f"), data, header_for(data),
                                   hashlib.sha256(data).digest())
        partial = self.store.create(("d", "f"))
        partial.write((data[:3], memoryview(data)[3:]))
        with self.assertRaises(StoreError):
            partial.commit(header_for(data), hashlib.sha256(data).digest())
        partial.discard()
        self.assert_untouched()

    def test_digest_of_wrong_length(self) -> None:
        self.put_old("d", "f")
        with self.assertRaises(StoreError):
            self.store.write_whole(("d", "f"), b"x", header_for(b"x"), b"\x00" * 5)
        self.assert_untouched()

    def test_directory_in_the_way(self) -> None:
        os.makedirs(self.path("d", "f", "inner"))
        with self.assertRaises(StoreError) as cm:
            self.store.write_whole(("d", "f"), b"x", header_for(b"x"), digest_of(b"x"))
        self.assertIn("directory is in the way", str(cm.exception))
        self.assertTrue(os.path.isdir(self.path("d", "f", "inner")))
        self.assertEqual(self.temporaries(), [])

    def test_empty_directory_in_the_way(self) -> None:
        os.makedirs(self.path("d", "f"))
        with self.assertRaises(StoreError):
            self.store.write_whole(("d", "f"), b"x", header_for(b"x"), digest_of(b"x"))
        self.assertTrue(os.path.isdir(self.path("d", "f")))
        self.assertEqual(self.temporaries(), [])


class WriteMany(StoreTestCase):
    """A bundle of small files placed in one call: each verified and placed (or not) on its
    own, with one result per file."""

    def test_each_file_on_its_own(self) -> None:
        self.put_old("d", "bad")
        os.makedirs(self.path("dir"))
        os.symlink(self.outside, self.path("link"))
        good, other = b"good", b"other"
        def item(data: bytes, digest: bytes, mode: int = 0o640, size: int | None = None,
                 view: bool = False) -> BundleItem:
            body = memoryview(b"xx" + data)[2:] if view else data
            return BundleItem(0, len(data) if size is None else size, MTIME, mode, digest, body)

        problems = self.store.write_many([
            (("d", "good"), item(good, digest_of(good), view=True)),
            (("d", "bad"), item(b"evil", digest_of(b"evi1"))),
            (("d", "short"), item(b"four", digest_of(b"four"), size=5)),
            (("dir",), item(b"x", digest_of(b"x"))),
            (("link", "f"), item(b"x", digest_of(b"x"))),
            (("e", "other"), item(other, digest_of(other), mode=0o4755)),
            (("d", "error"), BundleItem(0, error="d/error: gone")),
        ])
        self.assertIsNone(problems[0])
        self.assertIn("BLAKE3 mismatch", problems[1])
        self.assertIn("size mismatch", problems[2])
        self.assertIn("directory is in the way", problems[3])
        self.assertIn("cannot create temporary file", problems[4])
        self.assertIsNone(problems[5])
        self.assertEqual(problems[6], "d/error: gone")
        self.assertEqual(len(problems), 7)
        self.assertEqual(self.read("d", "good"), good)
        self.assertEqual(self.read("d", "bad"), b"old version")
        self.assertFalse(os.path.exists(self.path("d", "short")))
        self.assertEqual(os.listdir(self.outside), [])
        st = os.stat(self.path("e", "other"))
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_mtime_ns), (0o755, MTIME))
        self.assertEqual(self.temporaries(), [])

    def test_nothing(self) -> None:
        self.assertEqual(self.store.write_many([]), [])

    def test_modes_exact_whatever_the_umask(self) -> None:
        # write_many creates a file with its final mode when the umask leaves it intact
        # (no fchmod), and sets it otherwise (the umask as the store was made: a job's).
        modes = (0o644, 0o755, 0o600, 0o444, 0o640, 0o1777, 0o4755)
        fchmods: list[int] = []
        real_fchmod = os.fchmod

        def recording_fchmod(fd: int, mode: int) -> None:
            fchmods.append(mode)
            real_fchmod(fd, mode)

        self.patch(os, "fchmod", recording_fchmod)
        for umask in (0o022, 0o077, 0o000):
            old = os.umask(umask)
            try:
                fchmods.clear()
                job_store = MirrorStore(self.mirror, f"top{umask:o}", DescriptorBudget())
                self.addCleanup(job_store.close)
                problems = job_store.write_many([
                    ((f"u{umask:o}", f"f{mode:o}"),
                     BundleItem(0, 1, MTIME, mode, digest_of(b"x"), b"x"))
                    for mode in modes])
            finally:
                os.umask(old)
            self.assertEqual(problems, [None] * len(modes))
            for mode in modes:
                st = os.stat(os.path.join(self.mirror, f"top{umask:o}", f"u{umask:o}",
                                          f"f{mode:o}"))
                self.assertEqual(stat.S_IMODE(st.st_mode), mode & 0o1777)
            # Only the modes the umask or the special bits would spoil, and read-only ones
            # (created 0o600, then set), needed an fchmod.
            spoiled = [m & 0o1777 for m in modes
                       if m & 0o1777 & (umask | 0o7000) or not m & 0o200]
            self.assertEqual(fchmods, spoiled)


class Links(StoreTestCase):
    """A symlink in the mirror (planted locally, or left by anything) is never followed."""

    def assert_outside_untouched(self) -> None:
        self.assertEqual(os.listdir(self.outside), ["keep"])
        with open(os.path.join(self.outside, "keep"), "rb") as f:
            self.assertEqual(f.read(), b"keep me")

    def setUp(self) -> None:
        super().setUp()
        with open(os.path.join(self.outside, "keep"), "wb") as f:
            f.write(b"keep me")

    def test_symlink_as_parent(self) -> None:
        os.symlink(self.outside, self.path("d"))
        with self.assertRaises((StoreError, paths.UnsafePath)):
            self.store.write_whole(("d", "keep"), b"evil", header_for(b"evil"), digest_of(b"evil"))
        self.assert_outside_untouched()
        self.assertEqual(self.temporaries(), [])

    def test_symlink_as_parent_is_a_store_error(self) -> None:
        os.symlink(self.outside, self.path("d"))
        with self.assertRaises(StoreError) as cm:
            self.store.create(("d", "new"))
        self.assertIn("not a directory", str(cm.exception))
        self.assert_outside_untouched()

    def test_symlink_as_a_deeper_parent(self) -> None:
        os.makedirs(self.path("a", "b"))
        os.symlink(self.outside, self.path("a", "b", "c"))
        with self.assertRaises((StoreError, paths.UnsafePath)):
            self.store.write_whole(("a", "b", "c", "d", "f"), b"evil", header_for(b"evil"),
                                   digest_of(b"evil"))
        self.assert_outside_untouched()
        self.assertFalse(os.path.exists(os.path.join(self.outside, "d")))

    def test_relative_symlink_as_parent(self) -> None:
        os.symlink("../../outside", self.path("up"))
        with self.assertRaises((StoreError, paths.UnsafePath)):
            self.store.write_whole(("up", "new"), b"evil", header_for(b"evil"), digest_of(b"evil"))
        self.assert_outside_untouched()

    def test_make_dir_through_a_symlink(self) -> None:
        os.symlink(self.outside, self.path("d"))
        with self.assertRaises((StoreError, paths.UnsafePath)):
            self.store.make_dir(("d", "sub"))
        self.assert_outside_untouched()

    def test_symlink_at_the_final_name_is_replaced_not_followed(self) -> None:
        os.symlink(os.path.join(self.outside, "keep"), self.path("f"))
        self.store.write_whole(("f",), b"new", header_for(b"new"), digest_of(b"new"))
        self.assertFalse(os.path.islink(self.path("f")))
        self.assertEqual(self.read("f"), b"new")
        self.assert_outside_untouched()

    def test_file_as_parent(self) -> None:
        self.put_old("a")
        with self.assertRaises(StoreError):
            self.store.write_whole(("a", "b"), b"x", header_for(b"x"), digest_of(b"x"))
        self.assertEqual(self.read("a"), b"old version")

    def test_set_dir_meta_through_a_symlink(self) -> None:
        os.symlink(self.outside, self.path("d"))
        mode = stat.S_IMODE(os.stat(self.outside).st_mode)
        with self.assertRaises((StoreError, paths.UnsafePath)):
            self.store.set_dir_meta(("d",), 0o777, MTIME)
        self.assertEqual(stat.S_IMODE(os.stat(self.outside).st_mode), mode)


class QuickCheck(StoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.store.write_whole(("d", "f"), b"12345", header_for(b"12345"), digest_of(b"12345"))

    def test_current(self) -> None:
        self.assertTrue(self.store.is_current(("d", "f"), 5, MTIME))

    def test_other_size(self) -> None:
        self.assertFalse(self.store.is_current(("d", "f"), 6, MTIME))

    def test_other_mtime(self) -> None:
        self.assertFalse(self.store.is_current(("d", "f"), 5, MTIME + 1))

    def test_missing(self) -> None:
        self.assertFalse(self.store.is_current(("d", "g"), 5, MTIME))
        self.assertFalse(self.store.is_current(("x", "y", "z"), 5, MTIME))
        self.assertFalse(os.path.exists(self.path("x")))  # the check creates nothing

    def test_directory(self) -> None:
        st = os.stat(self.path("d"))
        self.assertFalse(self.store.is_current(("d",), st.st_size, st.st_mtime_ns))

    def test_symlink_to_a_matching_file(self) -> None:
        os.symlink(self.path("d", "f"), self.path("link"))
        self.assertFalse(self.store.is_current(("link",), 5, MTIME))

    def test_through_a_symlinked_parent(self) -> None:
        os.symlink(self.path("d"), self.path("ld"))
        self.assertFalse(self.store.is_current(("ld", "f"), 5, MTIME))


class DiskFull(StoreTestCase):
    def fail_writes(self, code: int) -> None:
        def write(fd: int, data) -> int:
            raise OSError(code, os.strerror(code))
        self.patch(os, "write", write)

    def test_enospc_on_write(self) -> None:
        self.put_old("d", "f")
        self.fail_writes(errno.ENOSPC)
        with self.assertRaises(StoreError) as cm:
            self.store.write_whole(("d", "f"), b"new", header_for(b"new"), digest_of(b"new"))
        self.assertIn("no space left on device", str(cm.exception))
        self.assertEqual(self.read("d", "f"), b"old version")
        self.assertEqual(self.temporaries(), [])

    def test_enospc_streamed(self) -> None:
        self.put_old("d", "f")
        partial = self.store.create(("d", "f"))
        partial.write([b"first part"])
        self.fail_writes(errno.ENOSPC)
        with self.assertRaises(StoreError) as cm:
            partial.write([b"second part"])
        self.assertIn("no space left on device", str(cm.exception))
        partial.discard()
        self.assertEqual(self.read("d", "f"), b"old version")
        self.assertEqual(self.temporaries(), [])

    def test_enospc_during_a_big_write_hashed_beside_it(self) -> None:
        # A batch big enough to be hashed in a helper thread: the failure is reported once
        # that hash has ended, and the file can still be discarded.
        self.put_old("d", "f")
        partial = self.store.create(("d", "f"))
        big = [os.urandom(BESIDE_MIN), os.urandom(BESIDE_MIN)]
        partial.write(big)
        self.fail_writes(errno.ENOSPC)
        with self.assertRaises(StoreError) as cm:
            partial.write(big)
        self.assertIn("no space left on device", str(cm.exception))
        partial.discard()
        self.assertEqual(self.read("d", "f"), b"old version")
        self.assertEqual(self.temporaries(), [])

    def test_big_streamed_file_hashed_beside_its_writes(self) -> None:
        data = os.urandom(5 * BESIDE_MIN + 3)
        view = memoryview(data)
        partial = self.store.create(("big",))
        partial.write([view[:5], view[5 : 2 * BESIDE_MIN]])
        partial.write([view[2 * BESIDE_MIN : 2 * BESIDE_MIN + 1]])
        partial.write([view[2 * BESIDE_MIN + 1 :]])
        partial.commit(header_for(data), digest_of(data))
        self.assertEqual(self.read("big"), data)

    def test_quota(self) -> None:
        self.fail_writes(errno.EDQUOT)
        with self.assertRaises(StoreError) as cm:
            self.store.write_whole(("f",), b"new", header_for(b"new"), digest_of(b"new"))
        self.assertIn("disk quota exceeded", str(cm.exception))
        self.assertEqual(self.temporaries(), [])

    def test_short_writes_are_completed(self) -> None:
        real_write = os.write

        def short_write(fd: int, data) -> int:
            return real_write(fd, bytes(data[:3]))

        self.patch(os, "write", short_write)
        data = b"0123456789abcdef"
        self.store.write_whole(("f",), data, header_for(data), digest_of(data))
        self.assertEqual(self.read("f"), data)

    def test_enospc_on_close(self) -> None:
        # Delayed write errors show up on close (NFS, some full file systems).
        self.put_old("d", "f")
        real_close = os.close
        partial = self.store.create(("d", "f"))
        partial.write([b"new"])
        victim = partial._fd

        def close(fd: int) -> None:
            real_close(fd)
            if fd == victim:
                raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "close", close)
        with self.assertRaises(StoreError) as cm:
            partial.commit(header_for(b"new"), digest_of(b"new"))
        self.assertIn("no space left on device", str(cm.exception))
        partial.discard()
        self.assertEqual(self.read("d", "f"), b"old version")
        self.assertEqual(self.temporaries(), [])

    def test_error_on_create(self) -> None:
        real_open = os.open

        def failing_open(path, flags, *args, **kwargs):
            if isinstance(path, str) and path.startswith(paths.TEMP_PREFIX):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_open(path, flags, *args, **kwargs)

        self.patch(os, "open", failing_open)
        with self.assertRaises(StoreError) as cm:
            self.store.create(("f",))
        self.assertIn("no space left on device", str(cm.exception))


class Sweep(SynchronousTestCase):
    def test_removes_only_reserved_regular_files_and_links(self) -> None:
        base = os.path.abspath(self.mktemp())
        outside = base + "-outside"
        os.makedirs(os.path.join(base, "h_1", "a", "b"))
        os.makedirs(outside)
        temp = paths.TEMP_PREFIX
        removable = [os.path.join(base, "h_1", temp + "1"),
                     os.path.join(base, "h_1", "a", "b", temp + "2"),
                     os.path.join(base, temp + "3")]
        kept = [os.path.join(base, "h_1", "a", "file"),
                os.path.join(base, "h_1", "a", "x" + temp),
                os.path.join(base, "h_1", ".mirror-tmp")]
        for p in removable + kept:
            with open(p, "w") as f:
                f.write("x")
        # A reserved-prefix directory and what a link points at stay; a reserved-prefix
        # link (a link being placed when the server was killed) goes, as a link.
        os.makedirs(os.path.join(base, "h_1", temp + "dir"))
        with open(os.path.join(base, "h_1", temp + "dir", "inside"), "w") as f:
            f.write("x")
        with open(os.path.join(outside, temp + "target"), "w") as f:
            f.write("x")
        os.symlink(os.path.join(outside, temp + "target"), os.path.join(base, temp + "link"))
        os.symlink(outside, os.path.join(base, "h_1", "linkdir"))
        os.mkfifo(os.path.join(base, "h_1", temp + "fifo"))

        self.assertEqual(sweep_temporaries(base), 4)
        for p in removable:
            self.assertFalse(os.path.exists(p), p)
        for p in kept:
            self.assertTrue(os.path.exists(p), p)
        self.assertTrue(os.path.isdir(os.path.join(base, "h_1", temp + "dir")))
        self.assertFalse(os.path.lexists(os.path.join(base, temp + "link")))
        self.assertTrue(os.path.islink(os.path.join(base, "h_1", "linkdir")))
        self.assertTrue(os.path.exists(os.path.join(outside, temp + "target")))
        self.assertTrue(os.path.exists(os.path.join(base, "h_1", temp + "fifo")))
        self.assertEqual(sweep_temporaries(base), 0)


def _touch(name: str, dir_fd: int) -> None:
    os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=dir_fd))


class SweepStaysInside(SynchronousTestCase):
    """The sweep climbs back up with ``..``: a directory moved out of the mirror while the
    sweep is inside it must not lead it outside (issue 7, item 4)."""

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        self.mirror = os.path.join(self.base, "mirror")
        self.outside = os.path.join(self.base, "outside")
        temp = paths.TEMP_PREFIX
        for d in ("h/a/b", "h/z"):
            os.makedirs(os.path.join(self.mirror, d))
        os.makedirs(os.path.join(self.outside, "z"))
        self.inner = os.path.join(self.mirror, "h", "a", "b", temp + "1")
        self.later = os.path.join(self.mirror, "h", "z", temp + "2")
        # Not the mirror's: named like what the sweep has still to visit after leaving b.
        self.victims = [os.path.join(self.outside, "z", temp + "victim"),
                        os.path.join(self.outside, temp + "victim")]
        for p in [self.inner, self.later] + self.victims:
            with open(p, "w") as f:
                f.write("x")

    def sweep_moving(self, moved: str, to: str, when_in: str) -> None:
        """Patch the sweep so that, once it has swept ``when_in``, ``moved`` is renamed to
        ``to``; directories are visited in name order."""
        real = store._sweep_dir
        target = os.stat(when_in)

        def sweep_dir(fd: int) -> tuple[int, list[str]]:
            n, subdirs = real(fd)
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                os.rename(moved, to)
            return n, sorted(subdirs, reverse=True)  # popped from the end: a before z

        self.patch(store, "_sweep_dir", sweep_dir)

    def sweep(self) -> Exception | None:
        """Sweep the mirror; what it raised, if anything."""
        try:
            sweep_temporaries(self.mirror)
        except store.SweepStopped as e:
            return e
        return None

    def test_directory_moved_out_while_inside(self) -> None:
        self.sweep_moving(os.path.join(self.mirror, "h", "a"),
                          os.path.join(self.outside, "a"),
                          when_in=os.path.join(self.mirror, "h", "a", "b"))
        stopped = self.sweep()
        for p in self.victims:
            self.assertTrue(os.path.exists(p), p)
        assert isinstance(stopped, store.SweepStopped), stopped
        self.assertEqual(stopped.removed, 1)
        self.assertIn("moved", str(stopped))
        self.assertFalse(os.path.exists(os.path.join(self.outside, "a", "b",
                                                     paths.TEMP_PREFIX + "1")))
        # Stopped: the rest of the mirror waits for the next start.
        self.assertTrue(os.path.exists(self.later))
        self.assertEqual(sweep_temporaries(self.mirror), 1)
        self.assertFalse(os.path.exists(self.later))

    def test_directory_moved_within_the_mirror(self) -> None:
        # Moved inside the mirror, ``..`` is not where the sweep came from either: it stops
        # rather than guess.
        self.sweep_moving(os.path.join(self.mirror, "h", "a", "b"),
                          os.path.join(self.mirror, "b"),
                          when_in=os.path.join(self.mirror, "h", "a", "b"))
        stopped = self.sweep()
        for p in self.victims:
            self.assertTrue(os.path.exists(p), p)
        self.assertIsInstance(stopped, store.SweepStopped)

    def test_the_service_logs_the_stop_and_starts_its_workers(self) -> None:
        def stopped(base_dir: str) -> int:
            raise store.SweepStopped("sweeping temporary files in x stopped: moved", 3)

        self.patch(mirror_service, "sweep_temporaries", stopped)
        service = MirrorService(self.mirror, MirrorSettings(workers=1),
                                reactor=MemoryReactorClock(), threads=InlineThreads())
        with capturedLogs() as events:
            service.startService()
        self.addCleanup(service.stopService)
        errors = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual([formatEvent(e) for e in errors],
                         ["sweeping temporary files in x stopped: moved"])
        self.assertNotIn("log_failure", errors[0])  # an operator's message, no traceback
        self.assertEqual(len(service._workers), 1)


class SweepDepth(SynchronousTestCase):
    DEPTH = 2000  # a legal wire path is up to 2,048 directories deep

    def test_deep_tree_swept_with_few_descriptors(self) -> None:
        # On tmpfs when there is one: thousands of mkdir and rmdir cost seconds on a disk.
        if os.access("/dev/shm", os.W_OK):
            base = tempfile.mkdtemp(prefix="mirror-sweep-", dir="/dev/shm")
        else:
            base = os.path.abspath(self.mktemp())
            os.makedirs(base)
        self.addCleanup(os.rmdir, base)
        temp = paths.TEMP_PREFIX
        # Built and removed with relative steps: the full path is longer than PATH_MAX.
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(self.remove_chain, base)
        for level in range(1, self.DEPTH + 1):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            if level % 500 == 0:
                _touch(temp + str(level), fd)
        _touch("keep", fd)
        os.close(fd)
        real = store._sweep_dir
        open_fds = []

        def sweep_dir(fd: int) -> tuple[int, list[str]]:
            open_fds.append(len(os.listdir("/proc/self/fd")))
            return real(fd)

        self.patch(store, "_sweep_dir", sweep_dir)
        baseline = len(os.listdir("/proc/self/fd"))
        self.assertEqual(sweep_temporaries(base), self.DEPTH // 500)
        self.assertEqual(len(open_fds), self.DEPTH + 1)  # every level was swept
        self.assertLessEqual(max(open_fds), baseline + 2)  # one directory open at a time
        self.assertEqual(len(os.listdir("/proc/self/fd")), baseline)
        self.assertEqual(self.leaves(base), ["keep"])

    def leaves(self, base: str) -> list[str]:
        """The files at every level of the chain under ``base``."""
        files = []
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
        try:
            while True:
                files += [n for n in os.listdir(fd) if n != "d"]
                try:
                    nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                except FileNotFoundError:
                    return files
                os.close(fd)
                fd = nfd
        finally:
            os.close(fd)

    @staticmethod
    def remove_chain(base: str) -> None:
        """Remove the chain of ``d`` directories under ``base`` without recursion
        (shutil.rmtree recurses once per level)."""
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
        levels = 0
        while "d" in os.listdir(fd):
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            levels += 1
        for _ in range(levels):
            for name in os.listdir(fd):
                os.unlink(name, dir_fd=fd)
            parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = parent
            os.rmdir("d", dir_fd=fd)
        os.close(fd)
