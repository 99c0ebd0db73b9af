"""The LIST walker on its own: canonical order, resumption from a cursor, descriptors held,
and which failures are passed over silently and which become error entries (issue 7)."""

from __future__ import annotations

import errno
import os

from twisted.trial.unittest import SynchronousTestCase

from mirror import paths
from mirror.content_server import listing
from mirror.content_server.listing import TreeWalker
from mirror.wire import frames


def walk(root_fd: int, path: str = "", cursor: str | None = None,
         max_bytes: int = 64 * 1024, each_batch=None) -> tuple[list[frames.Entry], TreeWalker]:
    parts = paths.parse_request_path(path)
    walker = TreeWalker(root_fd, parts, paths.parse_wire_path(cursor) if cursor else None)
    entries: list[frames.Entry] = []
    try:
        while (batch := walker.next_batch(max_bytes)) is not None:
            entries.extend(frames.decode_entries(batch))
            if each_batch is not None:
                each_batch(entries)
    finally:
        walker.close()
    return entries, walker


def names(entries: list[frames.Entry]) -> list[str]:
    return [e.name.decode() for e in entries if not e.is_error]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class WalkerTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.mkdir(self.root)
        self.root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, self.root_fd)

    def make(self, *names: str) -> None:
        """Files, and directories for names ending in ``/``."""
        for name in names:
            path = os.path.join(self.root, name)
            if name.endswith("/"):
                os.makedirs(path, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(name)

    def make_deep(self, depth: int, top: str = "d") -> str:
        """A chain of ``depth`` one-letter directories under ``top``; returns its path."""
        path = os.path.join(self.root, top, *(["x"] * depth))
        os.makedirs(path)
        return path


class Resumption(WalkerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.make("a", "b/", "b/c/d/e/f/g", "b/c/d/h", "b/c/i/", "b/j", "k/l/m", "z",
                  "b/c/d/e/f2")
        self.full = names(walk(self.root_fd)[0])

    def test_canonical_order(self) -> None:
        self.assertEqual(self.full, [
            "a", "b", "b/c", "b/c/d", "b/c/d/e", "b/c/d/e/f", "b/c/d/e/f/g", "b/c/d/e/f2",
            "b/c/d/h", "b/c/i", "b/j", "k", "k/l", "k/l/m", "z"])

    def test_resume_after_every_entry(self) -> None:
        """After a directory (its contents come next), after a file, after the last entry
        of a deep subtree (the walk climbs several levels at once)."""
        for i, cursor in enumerate(self.full):
            entries, walker = walk(self.root_fd, "", cursor)
            self.assertEqual(names(entries), self.full[i + 1 :], cursor)
            self.assertEqual(walker.count, len(self.full) - i - 1)

    def test_resume_in_small_batches(self) -> None:
        for i, cursor in enumerate(self.full):
            entries, _ = walk(self.root_fd, "", cursor, max_bytes=1)
            self.assertEqual(names(entries), self.full[i + 1 :], cursor)

    def test_resume_under_a_requested_path(self) -> None:
        self.assertEqual(names(walk(self.root_fd, "b/c", "b/c")[0]),
                         ["b/c/d", "b/c/d/e", "b/c/d/e/f", "b/c/d/e/f/g", "b/c/d/e/f2",
                          "b/c/d/h", "b/c/i"])
        self.assertEqual(names(walk(self.root_fd, "b/c", "b/c/d/e/f/g")[0]),
                         ["b/c/d/e/f2", "b/c/d/h", "b/c/i"])
        self.assertEqual(names(walk(self.root_fd, "a", "a")[0]), [])

    def test_cursor_deleted_since(self) -> None:
        """The cursor names an entry that is gone: the walk resumes at the next name in
        canonical order all the same."""
        os.unlink(os.path.join(self.root, "b/c/d/h"))
        self.assertEqual(names(walk(self.root_fd, "", "b/c/d/h")[0]),
                         ["b/c/i", "b/j", "k", "k/l", "k/l/m", "z"])
        # A whole subtree gone, the cursor deep inside it.
        for sub in ("b/c/d/e/f/g", "b/c/d/e/f2"):
            os.unlink(os.path.join(self.root, sub))
        for sub in ("b/c/d/e/f", "b/c/d/e", "b/c/d"):
            os.rmdir(os.path.join(self.root, sub))
        self.assertEqual(names(walk(self.root_fd, "", "b/c/d/e/f/g")[0]),
                         ["b/c/i", "b/j", "k", "k/l", "k/l/m", "z"])
        # A name that never existed, between two that do.
        self.assertEqual(names(walk(self.root_fd, "", "b/c/e")[0]),
                         ["b/c/i", "b/j", "k", "k/l", "k/l/m", "z"])
        self.assertEqual(names(walk(self.root_fd, "", "zz")[0]), [])

    def test_cursor_now_a_file(self) -> None:
        os.rename(os.path.join(self.root, "k"), os.path.join(self.root, "k2"))
        self.make("k")
        self.assertEqual(names(walk(self.root_fd, "", "k/l")[0]), ["k2", "k2/l", "k2/l/m", "z"])


class Descriptors(WalkerTestCase):
    def test_one_descriptor_whatever_the_depth(self) -> None:
        deep = self.make_deep(300)
        with open(os.path.join(deep, "f"), "w"):
            pass
        self.make("e/f", "zz")
        before = open_fds()
        peak = [0]

        def seen(_entries) -> None:
            peak[0] = max(peak[0], open_fds() - before)

        entries, walker = walk(self.root_fd, max_bytes=1, each_batch=seen)
        self.assertEqual(len(names(entries)), 1 + 300 + 1 + 2 + 1)  # d, the chain, f, e, e/f, zz
        self.assertEqual(names(entries)[-1], "zz")
        self.assertLessEqual(peak[0], 1)
        self.assertEqual(open_fds(), before)

    def test_resume_deep_holds_one_descriptor(self) -> None:
        self.make_deep(200)
        cursor = "/".join(["d"] + ["x"] * 150)
        before = open_fds()
        walker = TreeWalker(self.root_fd, (), paths.parse_wire_path(cursor))
        try:
            self.assertLessEqual(open_fds() - before, 1)
            batch = walker.next_batch()
            self.assertEqual(len(frames.decode_entries(batch)), 50)
        finally:
            walker.close()
        self.assertEqual(open_fds(), before)

    def test_directory_moved_while_inside_it(self) -> None:
        """``..`` of the directory just finished is no longer its parent: the parent is
        opened again from the root, the walk goes on with its other names, and nothing of
        where the directory went is listed."""
        self.make("a/b/f", "a/c", "a/d", "elsewhere/secret")
        moved: list[bool] = []

        def each(entries) -> None:
            if names(entries)[-1:] == ["a/b/f"] and not moved:
                os.rename(os.path.join(self.root, "a/b"),
                          os.path.join(self.root, "elsewhere/b"))
                moved.append(True)

        entries, _ = walk(self.root_fd, max_bytes=1, each_batch=each)
        self.assertEqual(names(entries), ["a", "a/b", "a/b/f", "a/c", "a/d", "elsewhere",
                                          "elsewhere/b", "elsewhere/b/f", "elsewhere/secret"])


class Failures(WalkerTestCase):
    def fail_open(self, name: str, err: int) -> None:
        """Opening the directory ``name`` (as the walker does, by name under its parent)
        fails with ``err``; everything else is real."""
        real_open = listing._open_child

        def fake_open(path, dir_fd):
            if path == name:
                raise OSError(err, os.strerror(err))
            return real_open(path, dir_fd)

        self.patch(listing, "_open_child", fake_open)

    def test_unreadable_directory_is_an_error_entry(self) -> None:
        self.make("a/x", "b/secret", "c")
        for err, code in ((errno.EACCES, frames.E_NOT_ALLOWED), (errno.EMFILE, frames.E_IO),
                          (errno.EIO, frames.E_IO)):
            self.fail_open("b", err)
            entries, walker = walk(self.root_fd)
            self.assertEqual(names(entries), ["a", "a/x", "b", "c"])
            (error,) = [e for e in entries if e.is_error]
            self.assertEqual((error.name, error.mode), (b"b", code))
            self.assertIn("cannot list b: " + os.strerror(err), error.message)
            self.assertEqual((walker.errors, walker.skipped), (1, 0))

    def test_gone_or_a_link_now_is_skipped_silently(self) -> None:
        self.make("a/x", "b/secret", "c")
        for err in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            self.fail_open("b", err)
            entries, walker = walk(self.root_fd)
            self.assertEqual(names(entries), ["a", "a/x", "b", "c"])
            self.assertEqual([e for e in entries if e.is_error], [])
            self.assertEqual((walker.errors, walker.skipped), (0, 1))

    def test_unreadable_directory_while_resuming(self) -> None:
        self.make("a/b/c", "a/b/d", "a/z")
        self.fail_open("b", errno.EACCES)
        entries, _ = walk(self.root_fd, "", "a/b/c")
        self.assertEqual([(e.name, e.is_error) for e in entries],
                         [(b"a/b", True), (b"a/z", False)])

    def test_stat_failure_is_an_error_entry(self) -> None:
        self.make("a", "b", "c")
        real_stat = os.stat

        def fake_stat(path, *, dir_fd=None, follow_symlinks=True):
            if path == "b" and dir_fd is not None:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return real_stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)

        self.patch(os, "stat", fake_stat)
        entries, _ = walk(self.root_fd)
        self.assertEqual([(e.name, e.is_error) for e in entries],
                         [(b"a", False), (b"b", True), (b"c", False)])
