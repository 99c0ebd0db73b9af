"""mirror.paths: what a name from the network may be, and confinement under a root fd."""

from __future__ import annotations

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from mirror import paths
from mirror.paths import (
    UnsafePath,
    open_dir,
    open_or_make_dir,
    open_parent_dir,
    open_regular_file,
    parse_request_path,
    parse_user_path,
    parse_wire_path,
)
from tests.unit.helpers import must_not_block

CONTROL_CHARS = [chr(c) for c in range(0x20)] + [chr(c) for c in range(0x7F, 0xA0)]


class AcceptedNames(SynchronousTestCase):
    def test_simple(self) -> None:
        self.assertEqual(parse_wire_path("a/b/c.txt"), ("a", "b", "c.txt"))
        self.assertEqual(parse_wire_path(b"a/b/c.txt"), ("a", "b", "c.txt"))

    def test_dot_dot_prefix(self) -> None:
        self.assertEqual(parse_wire_path("..foo"), ("..foo",))
        self.assertEqual(parse_wire_path("a/...")[-1], "...")
        self.assertEqual(parse_wire_path("foo.."), ("foo..",))

    def test_leading_dash(self) -> None:
        self.assertEqual(parse_wire_path("-rf"), ("-rf",))
        self.assertEqual(parse_wire_path("d/--delete"), ("d", "--delete"))

    def test_spaces(self) -> None:
        self.assertEqual(parse_wire_path(" a b /  "), (" a b ", "  "))

    def test_colon(self) -> None:
        self.assertEqual(parse_wire_path("c:/x:y"), ("c:", "x:y"))

    def test_unicode(self) -> None:
        self.assertEqual(parse_wire_path("unicodé ☃/日本語.txt"), ("unicodé ☃", "日本語.txt"))
        self.assertEqual(parse_wire_path("unicodé ☃".encode()), ("unicodé ☃",))

    def test_prefix_lookalikes(self) -> None:
        self.assertEqual(parse_wire_path(".mirror-tmp"), (".mirror-tmp",))
        self.assertEqual(parse_wire_path("x.mirror-tmp-1"), ("x.mirror-tmp-1",))

    def test_longest_component(self) -> None:
        self.assertEqual(parse_wire_path("a" * 255), ("a" * 255,))

    def test_longest_path(self) -> None:
        # 17 components (15 of 255 bytes, then 200 and 55) and 16 slashes: 4096 bytes.
        name = "/".join(["a" * 255] * 15 + ["b" * 200, "c" * 55])
        self.assertEqual(len(name.encode()), 4096)
        self.assertEqual(len(parse_wire_path(name)), 17)

    def test_user_root_forms(self) -> None:
        for root in ("", ".", "/", b"", b".", b"/"):
            self.assertEqual(parse_user_path(root), (), root)

    def test_user_path_tolerates_one_leading_and_trailing_slash(self) -> None:
        self.assertEqual(parse_user_path("/docs/sub/"), ("docs", "sub"))
        self.assertEqual(parse_user_path("docs/"), ("docs",))
        self.assertEqual(parse_user_path("/docs"), ("docs",))

    def test_request_path_is_strict(self) -> None:
        # Off the network, "/etc/passwd" is refused, never taken as "etc/passwd".
        self.assertEqual(parse_request_path(b""), ())
        for raw in (b".", b"/", b"/etc/passwd", b"docs/"):
            self.assertRaises(UnsafePath, parse_request_path, raw)

    def test_join_round_trip(self) -> None:
        parts = parse_wire_path("x/..y/ z")
        self.assertEqual(parse_wire_path(paths.join_parts(parts)), parts)


class RefusedNames(SynchronousTestCase):
    def refused(self, raw: bytes | str, why: str, parse=parse_wire_path) -> None:
        with self.assertRaises(UnsafePath) as cm:
            parse(raw)
        self.assertIn(why, str(cm.exception), f"for {raw!r}")

    def test_empty(self) -> None:
        self.refused("", "empty name")
        self.refused(b"", "empty name")

    def test_absolute(self) -> None:
        self.refused("/etc/passwd", "absolute")
        self.refused(b"/", "absolute")

    def test_request_absolute_after_one_slash(self) -> None:
        self.refused("//etc/passwd", "absolute", parse_request_path)

    def test_dot_dot(self) -> None:
        self.refused("..", "'..' path component")
        self.refused("a/../../etc", "'..' path component")
        self.refused("a/..", "'..' path component")
        self.refused("../a", "'..' path component", parse_request_path)

    def test_dot(self) -> None:
        self.refused(".", "'.' path component")
        self.refused("a/./b", "'.' path component")
        self.refused("a/.", "'.' path component")
        self.refused("./a", "'.' path component", parse_request_path)

    def test_empty_component(self) -> None:
        self.refused("a//b", "empty path component")
        self.refused("a//b", "empty path component", parse_request_path)

    def test_trailing_slash(self) -> None:
        self.refused("a/", "empty path component")
        self.refused("a/b/", "empty path component")

    def test_request_two_trailing_slashes(self) -> None:
        self.refused("a//", "empty path component", parse_request_path)

    def test_backslash(self) -> None:
        self.refused("a\\b", "backslash")
        self.refused("..\\..\\windows", "backslash")
        self.refused("\\", "backslash", parse_request_path)

    def test_nul(self) -> None:
        self.refused("a\x00b", "control character U+0000")
        self.refused(b"a/\x00", "control character U+0000")

    def test_newline(self) -> None:
        self.refused("a\nb", "control character U+000A")
        self.refused("a\r\nb", "control character U+000D")

    def test_every_control_character(self) -> None:
        self.assertEqual(len(CONTROL_CHARS), 32 + 33)  # U+0000-001F, U+007F-009F
        for ch in CONTROL_CHARS:
            why = f"control character U+{ord(ch):04X}"
            self.refused(f"a{ch}b", why)
            self.refused(f"a/{ch}", why)
            self.refused(f"x{ch}".encode(), why)
            self.refused(f"d/x{ch}", why, parse_request_path)

    def test_invalid_utf8(self) -> None:
        for raw in (b"\xff", b"a\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"a/\x80b",
                    b"\xf8\x88\x80\x80\x80"):
            self.refused(raw, "not valid UTF-8")
            self.refused(raw, "not valid UTF-8", parse_request_path)

    def test_lone_surrogate_text(self) -> None:
        self.refused("a\udcffb", "not valid UTF-8")

    def test_component_too_long(self) -> None:
        self.refused("a" * 256, "longer than 255 bytes")
        self.refused("d/" + "a" * 256, "longer than 255 bytes")

    def test_component_too_long_in_bytes_not_characters(self) -> None:
        self.refused("é" * 128, "longer than 255 bytes")  # 128 characters, 256 bytes

    def test_path_too_long(self) -> None:
        name = "/".join(["a" * 255] * 15 + ["b" * 200, "c" * 56])  # 4097 bytes
        self.refused(name, "longer than 4096 bytes")
        self.refused("a/" * 3000 + "a", "longer than 4096 bytes")

    def test_reserved_prefix(self) -> None:
        self.refused(".mirror-tmp-0123abcd", "reserved prefix")
        self.refused("a/.mirror-tmp-x/b", "reserved prefix")
        self.refused(b".mirror-tmp-", "reserved prefix")

    def test_reserved_state_directory_name(self) -> None:
        self.refused(".mirror-state", "name '.mirror-state' is reserved")
        self.refused("a/.mirror-state/b", "name '.mirror-state' is reserved")
        for legal in (".mirror-statex", "x.mirror-state", ".mirror-stat"):
            self.assertEqual(paths.parse_wire_path(legal), (legal,))
        self.assertTrue(paths.is_reserved_name(".mirror-state"))
        self.assertTrue(paths.is_reserved_name(".mirror-tmp-1"))
        self.assertFalse(paths.is_reserved_name(".mirror-statex"))
        self.assertFalse(paths.is_reserved_name("x.mirror-tmp-1"))


class Confinement(SynchronousTestCase):
    """open_dir / open_regular_file under a root fd: no link, no special file, no escape."""

    def setUp(self) -> None:
        base = self.mktemp()
        self.root = os.path.join(base, "root")
        self.outside = os.path.join(base, "outside")
        os.makedirs(os.path.join(self.root, "a", "b"))
        os.makedirs(self.outside)
        with open(os.path.join(self.outside, "secret"), "w") as f:
            f.write("secret")
        with open(os.path.join(self.root, "a", "file.txt"), "w") as f:
            f.write("inside")
        self.root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, self.root_fd)
        self.fds_before = len(os.listdir("/proc/self/fd"))

    def assert_no_fd_leak(self) -> None:
        self.assertEqual(len(os.listdir("/proc/self/fd")), self.fds_before)

    def test_open_regular_file(self) -> None:
        fd, st = open_regular_file(self.root_fd, ("a", "file.txt"))
        try:
            self.assertTrue(stat.S_ISREG(st.st_mode))
            self.assertEqual(os.read(fd, 100), b"inside")
        finally:
            os.close(fd)
        self.assert_no_fd_leak()

    def test_open_dir(self) -> None:
        fd = open_dir(self.root_fd, ("a", "b"))
        try:
            self.assertTrue(stat.S_ISDIR(os.fstat(fd).st_mode))
        finally:
            os.close(fd)
        self.assert_no_fd_leak()

    def test_open_dir_of_nothing_is_a_copy_of_the_root(self) -> None:
        fd = open_dir(self.root_fd, ())
        try:
            self.assertEqual(os.fstat(fd).st_ino, os.fstat(self.root_fd).st_ino)
        finally:
            os.close(fd)

    def tree(self) -> list[str]:
        """Everything under the root, as relative paths."""
        return sorted(os.path.relpath(os.path.join(d, n), self.root)
                      for d, ds, fs in os.walk(self.root) for n in ds + fs)

    def test_missing(self) -> None:
        before = self.tree()
        for missing in (("a", "nope"), ("x", "y"), ("x", "y", "z"), ("a", "nope", "c")):
            self.assertRaises(FileNotFoundError, open_dir, self.root_fd, missing)
            self.assertRaises(FileNotFoundError, open_parent_dir, self.root_fd,
                              missing + ("f",))
            self.assertRaises(FileNotFoundError, open_regular_file, self.root_fd, missing)
        self.assertEqual(self.tree(), before)  # nothing created on the way
        self.assert_no_fd_leak()

    def test_make_dir_makes_missing_directories(self) -> None:
        fd = open_or_make_dir(self.root_fd, ("a", "new", "deeper"))
        os.close(fd)
        self.assertTrue(os.path.isdir(os.path.join(self.root, "a", "new", "deeper")))
        self.assert_no_fd_leak()

    def test_make_dir_keeps_existing(self) -> None:
        before = self.tree()
        os.close(open_or_make_dir(self.root_fd, ("a", "b")))
        self.assertEqual(self.tree(), before)

    def test_symlink_final_file(self) -> None:
        os.symlink(os.path.join(self.outside, "secret"), os.path.join(self.root, "link"))
        with self.assertRaises(UnsafePath) as cm:
            open_regular_file(self.root_fd, ("link",))
        self.assertIn("symbolic link", str(cm.exception))
        self.assert_no_fd_leak()

    def test_symlink_final_inside_root(self) -> None:
        # Links are never followed, not even to a file inside the root.
        os.symlink("a/file.txt", os.path.join(self.root, "inlink"))
        self.assertRaises(UnsafePath, open_regular_file, self.root_fd, ("inlink",))

    def test_symlink_final_dir(self) -> None:
        os.symlink(self.outside, os.path.join(self.root, "a", "out"))
        with self.assertRaises(UnsafePath) as cm:
            open_dir(self.root_fd, ("a", "out"))
        self.assertIn("'out' is not a directory", str(cm.exception))
        self.assert_no_fd_leak()

    def test_symlink_parent(self) -> None:
        os.symlink(self.outside, os.path.join(self.root, "a", "out"))
        with self.assertRaises(UnsafePath):
            open_regular_file(self.root_fd, ("a", "out", "secret"))
        with self.assertRaises(UnsafePath):
            open_or_make_dir(self.root_fd, ("a", "out", "x"))
        self.assertFalse(os.path.exists(os.path.join(self.outside, "x")))
        self.assert_no_fd_leak()

    def test_relative_symlink_parent_going_up(self) -> None:
        os.symlink("../../outside", os.path.join(self.root, "up"))
        self.assertRaises(UnsafePath, open_regular_file, self.root_fd, ("up", "secret"))

    def test_file_as_parent(self) -> None:
        with self.assertRaises(UnsafePath):
            open_or_make_dir(self.root_fd, ("a", "file.txt", "x"))

    def test_directory_is_not_a_regular_file(self) -> None:
        with self.assertRaises(UnsafePath) as cm:
            open_regular_file(self.root_fd, ("a", "b"))
        self.assertIn("not a regular file", str(cm.exception))
        self.assert_no_fd_leak()

    def test_fifo_does_not_block(self) -> None:
        os.mkfifo(os.path.join(self.root, "a", "fifo"))
        with must_not_block():
            with self.assertRaises(UnsafePath) as cm:
                open_regular_file(self.root_fd, ("a", "fifo"))
        self.assertIn("not a regular file", str(cm.exception))
        with must_not_block():
            self.assertRaises(UnsafePath, open_dir, self.root_fd, ("a", "fifo"))
        self.assert_no_fd_leak()

    def test_device(self) -> None:
        where = os.path.join(self.root, "a", "null")
        try:
            os.mknod(where, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except (PermissionError, OSError) as e:
            raise self.skipTest(f"cannot make a device node here: {e}") from None
        with must_not_block():
            try:
                fd, _ = open_regular_file(self.root_fd, ("a", "null"))
            except UnsafePath as e:
                self.assertIn("not a regular file", str(e))
            except PermissionError:
                raise self.skipTest(
                    "devices cannot be opened on this file system (nodev)") from None
            else:
                os.close(fd)
                self.fail("a device was opened as a regular file")
        self.assert_no_fd_leak()


class DisplayName(SynchronousTestCase):
    def test_controls_escaped_and_capped(self) -> None:
        shown = paths.display_name(b"a\nb\x1b[31m\xff" + b"x" * 500)
        self.assertTrue(shown.startswith("a\\nb\\x1b[31m\\xffxxx"), shown)
        self.assertTrue(shown.endswith("x\u2026"), shown)
        self.assertEqual(len(shown), paths.DISPLAY_NAME_LIMIT)


class DirectoryDescriptors(SynchronousTestCase):
    """Regressions found by the load test and a review of paths.py."""

    def test_open_dir_of_root_has_its_own_read_position(self) -> None:
        # os.dup() would share the read position: two listings at once each saw part.
        root = self.mktemp()
        os.mkdir(root)
        for i in range(50):
            open(os.path.join(root, f"f{i}"), "w").close()
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, root_fd)
        a = open_dir(root_fd, ())
        b = open_dir(root_fd, ())
        try:
            with os.scandir(a) as it_a:
                first = next(it_a).name
                with os.scandir(b) as it_b:
                    names_b = sorted(e.name for e in it_b)
                names_a = sorted([first] + [e.name for e in it_a])
        finally:
            os.close(a)
            os.close(b)
        self.assertEqual(names_a, sorted(f"f{i}" for i in range(50)))
        self.assertEqual(names_b, names_a)

    def test_fifo_refused_before_open(self) -> None:
        root = self.mktemp()
        os.mkdir(root)
        os.mkfifo(os.path.join(root, "fifo"))
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, root_fd)
        opened = []
        real_open = os.open

        def recording_open(name, *a, **k):
            opened.append(name)
            return real_open(name, *a, **k)

        self.patch(os, "open", recording_open)
        with self.assertRaises(UnsafePath):
            open_regular_file(root_fd, ("fifo",))
        self.assertNotIn("fifo", opened)


class LimitsCountBytes(SynchronousTestCase):
    """The 255-byte component and 4096-byte path limits count UTF-8 bytes, not characters.

    Multi-byte names sit exactly on each limit: a limit counted in characters would accept
    every refused name here.
    """

    def test_component_of_255_bytes_accepted(self) -> None:
        for name in ("é" * 127 + "a", "日" * 85, "😀" * 63 + "abc"):
            self.assertEqual(len(name.encode()), 255)
            self.assertEqual(parse_wire_path(name), (name,))
            self.assertEqual(parse_wire_path(name.encode()), (name,))
            self.assertEqual(parse_wire_path("d/" + name), ("d", name))

    def test_component_of_256_bytes_refused(self) -> None:
        for name in ("é" * 128, "日" * 85 + "a", "😀" * 64):
            self.assertEqual(len(name.encode()), 256)
            self.assertLess(len(name), 255)
            for raw in (name, name.encode(), "d/" + name + "/e"):
                with self.assertRaises(UnsafePath) as cm:
                    parse_wire_path(raw)
                self.assertEqual(str(cm.exception), "path component longer than 255 bytes")

    @staticmethod
    def long_path(extra: str) -> str:
        # 17 components (15 of 255 bytes in 3-byte characters, then 150 + 105 bytes) and 16
        # slashes: 4096 bytes in 1,370 characters; ``extra`` is appended to the last one.
        return "/".join(["日" * 85] * 15 + ["日" * 50, "é" * 52 + "a" + extra])

    def test_path_of_4096_bytes_accepted(self) -> None:
        name = self.long_path("")
        self.assertEqual(len(name.encode()), 4096)
        self.assertEqual(len(parse_wire_path(name)), 17)
        self.assertEqual(len(parse_wire_path(name.encode())), 17)

    def test_path_of_4097_bytes_refused(self) -> None:
        for name in (self.long_path("a"), self.long_path("")[:-1] + "é"):
            self.assertEqual(len(name.encode()), 4097)
            self.assertLess(len(name), 4096)
            for raw in (name, name.encode()):
                with self.assertRaises(UnsafePath) as cm:
                    parse_wire_path(raw)
                self.assertEqual(str(cm.exception), "name longer than 4096 bytes")


class RaceLayers(SynchronousTestCase):
    """Each guard of `open_regular_file` alone, with the others unable to catch the case.

    The guards: an lstat before opening (no open of a link or special file at all), then
    ``O_NOFOLLOW | O_NONBLOCK`` on the open, then an fstat of what was opened. The later ones
    exist for a name swapped after the lstat: here the swap is made from inside ``os.stat``,
    right after the real lstat saw a regular file, so only the later guards can notice.
    """

    def setUp(self) -> None:
        base = self.mktemp()
        self.root = os.path.join(base, "root")
        os.makedirs(os.path.join(self.root, "d"))
        self.secret = os.path.join(base, "secret")
        with open(self.secret, "w") as f:
            f.write("outside the root")
        self.victim = os.path.join(self.root, "d", "victim")
        with open(self.victim, "w") as f:
            f.write("inside")
        self.root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, self.root_fd)
        self.fds_before = len(os.listdir("/proc/self/fd"))
        self.opened: list[str] = []
        real_open = os.open

        def recording_open(name, *a, **k):
            self.opened.append(name)
            return real_open(name, *a, **k)

        self.patch(os, "open", recording_open)

    def swap_after_lstat(self, swap) -> None:
        """Run ``swap()`` right after open_regular_file's lstat of the victim."""
        real_stat = os.stat

        def stat_then_swap(name, *args, **kwargs):
            st = real_stat(name, *args, **kwargs)
            if name == "victim" and kwargs.get("dir_fd") is not None:
                swap()
            return st

        self.patch(os, "stat", stat_then_swap)

    def refused(self, why: str) -> None:
        with must_not_block(2):
            with self.assertRaises(UnsafePath) as cm:
                fd, _ = open_regular_file(self.root_fd, ("d", "victim"))
                os.close(fd)
        self.assertEqual(str(cm.exception), why)
        self.assertEqual(len(os.listdir("/proc/self/fd")), self.fds_before, "descriptor leak")

    # -- the lstat, before any open -----------------------------------------------------

    def test_lstat_refuses_a_link_without_opening_it(self) -> None:
        os.unlink(self.victim)
        os.symlink(self.secret, self.victim)
        self.refused("is a symbolic link")
        self.assertNotIn("victim", self.opened)

    def test_lstat_refuses_a_special_file_without_opening_it(self) -> None:
        os.unlink(self.victim)
        os.mkfifo(self.victim)
        self.refused("not a regular file")
        self.assertNotIn("victim", self.opened)

    # -- O_NOFOLLOW: a link swapped in after the lstat ----------------------------------

    def test_link_swapped_in_is_not_followed(self) -> None:
        def to_link() -> None:
            os.unlink(self.victim)
            os.symlink(self.secret, self.victim)

        # Followed, the link would reach a regular file, which the fstat would accept.
        self.swap_after_lstat(to_link)
        self.refused("is a symbolic link")
        self.assertIn("victim", self.opened)

    def test_name_removed_after_the_lstat_is_missing_not_a_link(self) -> None:
        self.swap_after_lstat(lambda: os.unlink(self.victim))
        self.assertRaises(FileNotFoundError, open_regular_file, self.root_fd, ("d", "victim"))
        self.assertEqual(len(os.listdir("/proc/self/fd")), self.fds_before)

    # -- O_NONBLOCK and the fstat: a special file or directory swapped in ---------------

    def test_fifo_swapped_in_neither_blocks_nor_passes(self) -> None:
        def to_fifo() -> None:
            os.unlink(self.victim)
            os.mkfifo(self.victim)

        # Without O_NONBLOCK the open waits for a writer (must_not_block fails the test).
        self.swap_after_lstat(to_fifo)
        self.refused("not a regular file")
        self.assertIn("victim", self.opened)

    def test_directory_swapped_in_is_refused_by_the_fstat(self) -> None:
        def to_dir() -> None:
            os.unlink(self.victim)
            os.mkdir(self.victim)

        # A directory opens fine with O_RDONLY | O_NOFOLLOW | O_NONBLOCK: only the fstat sees it.
        self.swap_after_lstat(to_dir)
        self.refused("not a regular file")
        self.assertIn("victim", self.opened)

    # -- what passes all guards -----------------------------------------------------------

    def test_regular_file_at_any_depth(self) -> None:
        # parts[-1] is the name opened, whatever the depth (a 1- and a 3-component path).
        with open(os.path.join(self.root, "top"), "w") as f:
            f.write("top")
        os.makedirs(os.path.join(self.root, "x", "y"))
        with open(os.path.join(self.root, "x", "y", "z"), "w") as f:
            f.write("deep")
        for parts, content in ((("top",), b"top"), (("x", "y", "z"), b"deep")):
            fd, st = open_regular_file(self.root_fd, parts)
            try:
                self.assertEqual(os.read(fd, 100), content)
                self.assertEqual(st.st_size, len(content))
                self.assertFalse(os.get_inheritable(fd))
            finally:
                os.close(fd)
        self.assertEqual(len(os.listdir("/proc/self/fd")), self.fds_before)


class ExactRefusals(SynchronousTestCase):
    """The full text of each refusal: it is what users read in an error report."""

    def test_messages(self) -> None:
        cases: list[tuple[str | bytes, str]] = [
            ("", "empty name"),
            ("/a", "absolute name"),
            ("a//b", "empty path component"),
            ("a/./b", "'.' path component"),
            ("a/../b", "'..' path component"),
            ("a\\b", "backslash in name"),
            ("a\tb", "control character U+0009 in name"),
            ("a\x9fb", "control character U+009F in name"),
            (b"a\xffb", "name is not valid UTF-8"),
            ("a\udcffb", "name is not valid UTF-8"),
            ("d/.mirror-tmp-x", "name uses the reserved prefix '.mirror-tmp-'"),
        ]
        for raw, why in cases:
            with self.assertRaises(UnsafePath, msg=repr(raw)) as cm:
                parse_wire_path(raw)
            self.assertEqual(str(cm.exception), why, repr(raw))

    def test_first_characters_past_the_control_ranges_accepted(self) -> None:
        # U+0020 and U+00A0 (no-break space) border the two refused ranges.
        self.assertEqual(parse_wire_path("a\x20b/c\xa0d"), ("a b", "c\xa0d"))
        self.assertEqual(parse_wire_path("~\u00a1"), ("~\u00a1",))

    def test_request_path_root_as_text_or_bytes(self) -> None:
        self.assertEqual(parse_request_path(""), ())
        self.assertEqual(parse_request_path(b""), ())


class CreatedDirectories(SynchronousTestCase):
    """open_or_make_dir makes directories with exactly the mode asked (under umask)."""

    def setUp(self) -> None:
        self.root = self.mktemp()
        os.mkdir(self.root)
        self.root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, self.root_fd)
        old = os.umask(0)
        self.addCleanup(os.umask, old)

    def mode_of(self, *parts: str) -> int:
        return stat.S_IMODE(os.stat(os.path.join(self.root, *parts)).st_mode)

    def test_default_mode(self) -> None:
        os.close(paths.open_or_make_dir(self.root_fd, ("a", "b")))
        self.assertEqual((self.mode_of("a"), self.mode_of("a", "b")), (0o755, 0o755))

    def test_mode_given(self) -> None:
        os.close(paths.open_or_make_dir(self.root_fd, ("a", "b"), mode=0o700))
        self.assertEqual((self.mode_of("a"), self.mode_of("a", "b")), (0o700, 0o700))

    def test_umask_applies(self) -> None:
        os.umask(0o027)
        os.close(paths.open_or_make_dir(self.root_fd, ("a",)))
        self.assertEqual(self.mode_of("a"), 0o750)

    def test_existing_directory_keeps_its_mode(self) -> None:
        os.mkdir(os.path.join(self.root, "a"), 0o711)
        os.close(paths.open_or_make_dir(self.root_fd, ("a", "b"), mode=0o700))
        self.assertEqual((self.mode_of("a"), self.mode_of("a", "b")), (0o711, 0o700))

    def test_parent_dir_never_created(self) -> None:
        self.assertRaises(FileNotFoundError, paths.open_parent_dir, self.root_fd, ("new", "f"))
        self.assertFalse(os.path.exists(os.path.join(self.root, "new")))

    def test_open_regular_file_creates_nothing(self) -> None:
        self.assertRaises(FileNotFoundError, open_regular_file, self.root_fd, ("new", "f"))
        self.assertEqual(os.listdir(self.root), [])


class DisplayNameExact(SynchronousTestCase):
    def test_printable_text_unchanged(self) -> None:
        self.assertEqual(paths.display_name("docs/é ☃.txt"), "docs/é ☃.txt")
        self.assertEqual(paths.display_name("docs/é ☃.txt".encode()), "docs/é ☃.txt")

    def test_escapes(self) -> None:
        self.assertEqual(paths.display_name("a\nb\x1b\x7f\u200b"), "a\\nb\\x1b\\x7f\\u200b")
        self.assertEqual(paths.display_name(b"x\xff/\x00"), "x\\xff/\\x00")

    def test_cap_at_the_limit(self) -> None:
        self.assertEqual(paths.display_name("x" * 200), "x" * 200)
        # The rule (escapes, "…" within the limit) is mirror.text's: see tests/unit/test_text.py.
        self.assertEqual(paths.display_name("x" * 201), "x" * 199 + "\u2026")
