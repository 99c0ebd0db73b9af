"""Links in the mirror: placed atomically and never followed (`place_link`, `make_dir`), and
a job's links end to end in memory: safe ones recreated, unsafe ones skipped and reported,
``--no-links``, re-runs, an older content server, and hostile listings."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase

from mirror import paths
from mirror.mirror_server import links
from mirror.mirror_server.links import make_dir, place_link
from mirror.mirror_server.store import DescriptorBudget, MirrorStore, StoreError
from mirror.wire import frames
from tests.unit.test_mirror_job import JobTestCase, _Frames, source


class Placing(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(os.path.abspath(self.mktemp()))
        self.outside = self.base / "outside"
        self.outside.mkdir(parents=True)
        (self.base / "m").mkdir()
        self.store = MirrorStore(str(self.base / "m"), "h_1", DescriptorBudget())
        self.addCleanup(self.store.close)
        self.top = self.base / "m" / "h_1"
        (self.top / "d").mkdir()

    def place(self, name: str, target: str, mtime_ns: int = 1_500_000_000_000_000_000) -> bool:
        return place_link(self.store.root_fd, paths.parse_wire_path(name), target, mtime_ns)

    def temporaries(self) -> list[Path]:
        return [p for p in self.base.rglob("*") if p.name.startswith(paths.TEMP_PREFIX)]

    def test_new_link(self) -> None:
        self.assertTrue(self.place("d/l", "../x", 7))
        link = self.top / "d" / "l"
        self.assertEqual(os.readlink(link), "../x")
        self.assertEqual(os.lstat(link).st_mtime_ns, 7)
        self.assertEqual(self.temporaries(), [])

    def test_identical_link_left_alone(self) -> None:
        self.place("d/l", "x", 7)
        ino = os.lstat(self.top / "d" / "l").st_ino
        self.assertFalse(self.place("d/l", "x", 7))
        self.assertEqual(os.lstat(self.top / "d" / "l").st_ino, ino)
        self.assertFalse(self.place("d/l", "x", 9))  # only its time differs: set in place
        self.assertEqual(os.lstat(self.top / "d" / "l").st_mtime_ns, 9)
        self.assertEqual(os.lstat(self.top / "d" / "l").st_ino, ino)

    def test_changed_link_replaced(self) -> None:
        self.place("d/l", "x")
        self.assertTrue(self.place("d/l", "y"))
        self.assertEqual(os.readlink(self.top / "d" / "l"), "y")

    def test_file_replaced_by_the_link(self) -> None:
        (self.top / "d" / "l").write_bytes(b"old")
        self.assertTrue(self.place("d/l", "x"))
        self.assertEqual(os.readlink(self.top / "d" / "l"), "x")

    def test_planted_link_replaced_not_followed(self) -> None:
        os.symlink(self.outside, self.top / "d" / "l")
        (self.outside / "keep").write_bytes(b"k")
        self.assertTrue(self.place("d/l", "x"))
        self.assertEqual(os.readlink(self.top / "d" / "l"), "x")
        self.assertEqual(sorted(os.listdir(self.outside)), ["keep"])

    def test_directory_in_the_way(self) -> None:
        (self.top / "d" / "l").mkdir()
        with self.assertRaises(StoreError) as cm:
            self.place("d/l", "x")
        self.assertIn("directory is in the way", str(cm.exception))
        self.assertTrue((self.top / "d" / "l").is_dir())
        self.assertEqual(self.temporaries(), [])

    def test_parent_is_a_link(self) -> None:
        os.symlink(self.outside, self.top / "p")
        with self.assertRaises(paths.UnsafePath):
            self.place("p/l", "x")
        self.assertEqual(os.listdir(self.outside), [])

    def test_failed_rename_leaves_no_temporary(self) -> None:
        def failing(*args, **kwargs):
            raise OSError(28, "No space left on device")

        self.patch(os, "rename", failing)
        with self.assertRaises(StoreError) as cm:
            self.place("d/l", "x")
        self.assertIn("No space left", str(cm.exception))
        self.assertEqual(self.temporaries(), [])
        self.assertFalse(os.path.lexists(self.top / "d" / "l"))

    def test_make_dir_replaces_a_link(self) -> None:
        os.symlink(self.outside, self.top / "d" / "sub")
        make_dir(self.store, ("d", "sub"))
        self.assertTrue((self.top / "d" / "sub").is_dir())
        self.assertFalse((self.top / "d" / "sub").is_symlink())
        self.assertEqual(os.listdir(self.outside), [])

    def test_make_dir_does_not_replace_a_file(self) -> None:
        (self.top / "d" / "f").write_bytes(b"f")
        with self.assertRaises(paths.UnsafePath):
            make_dir(self.store, ("d", "f"))
        self.assertEqual((self.top / "d" / "f").read_bytes(), b"f")


def make_links_tree(src: Path) -> Path:
    """A Debian-like tree with safe and unsafe links."""
    (src / "dists" / "bookworm").mkdir(parents=True)
    (src / "dists" / "bookworm" / "Release").write_bytes(b"release\n")
    os.symlink("bookworm", src / "dists" / "stable")  # a directory target
    os.symlink("bookworm/Release", src / "dists" / "Release")  # a file target
    os.symlink("..", src / "dists" / "top")  # the export's top: safe for the whole export
    os.symlink("/etc", src / "abs")
    os.symlink("../outside", src / "escape")
    os.symlink("dists/../..", src / "sneaky")
    os.symlink("missing", src / "dangling")  # safe: a target need not exist
    return src


class JobLinks(JobTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.src = make_links_tree(self.base / "src")
        self.serve(self.src)
        self.top = self.mirror / "10.0.0.1_7000"

    def run_links_job(self, *sources, mode: str = links.LINKS_SAFE):
        from tests.unit.test_mirror_job import Observer

        observer = Observer()
        job = self.service.submit(list(sources), observer, links_mode=mode)
        self.network.run_until(job.finished)
        return observer

    def test_safe_links_recreated_unsafe_skipped_and_reported(self) -> None:
        observer = self.run_links_job(source())
        self.assertEqual(observer.finished, [True])
        self.assertEqual(observer.errors, [])
        run = observer.done[0]
        self.assertEqual((run.links.placed, run.links.skipped), (4, 3))
        self.assertEqual(os.readlink(self.top / "dists" / "stable"), "bookworm")
        self.assertEqual(os.readlink(self.top / "dists" / "Release"), "bookworm/Release")
        self.assertEqual(os.readlink(self.top / "dists" / "top"), "..")
        self.assertEqual(os.readlink(self.top / "dangling"), "missing")
        self.assertEqual((self.top / "dists" / "stable" / "Release").read_bytes(), b"release\n")
        for name in ("abs", "escape", "sneaky"):
            self.assertFalse(os.path.lexists(self.top / name), name)
        skipped = {path: message for _, path, message in observer.links_skipped}
        self.assertEqual(sorted(skipped), ["abs", "escape", "sneaky"])
        self.assertIn("absolute target '/etc'", skipped["abs"])
        self.assertIn("outside the mirrored tree", skipped["escape"])
        self.assertIn("climbs", skipped["sneaky"])
        self.assertEqual(run.not_exported, 0)

    def test_tree_is_the_specs_path(self) -> None:
        # dists/top -> .. is the export's top: outside MIRROR_DIR/HOST_PORT/dists.
        observer = self.run_links_job(source("dists"))
        run = observer.done[0]
        self.assertEqual((run.links.placed, run.links.skipped), (2, 1))
        self.assertEqual([p for _, p, _ in observer.links_skipped], ["dists/top"])
        self.assertFalse(os.path.lexists(self.top / "dists" / "top"))

    def test_rerun_leaves_identical_links_and_replaces_changed_ones(self) -> None:
        self.run_links_job(source())
        ino = os.lstat(self.top / "dists" / "stable").st_ino
        os.unlink(self.src / "dangling")
        os.symlink("dists", self.src / "dangling")
        observer = self.run_links_job(source())
        run = observer.done[0]
        self.assertEqual((run.links.placed, run.links.skipped), (1, 3))
        self.assertEqual(run.skipped, 1 + 3)  # Release, and three links already current
        self.assertEqual(os.lstat(self.top / "dists" / "stable").st_ino, ino)
        self.assertEqual(os.readlink(self.top / "dangling"), "dists")

    def test_no_links(self) -> None:
        observer = self.run_links_job(source(), mode=links.LINKS_SKIP)
        self.assertEqual(observer.finished, [True])
        run = observer.done[0]
        self.assertEqual((run.links.placed, run.links.skipped), (0, 7))
        self.assertEqual(observer.links_skipped, [])  # counted, not reported one by one
        self.assertEqual(sorted(os.listdir(self.top)), ["dists"])
        self.assertEqual(os.listdir(self.top / "dists"), ["bookworm"])

    def test_link_in_the_mirror_where_a_directory_goes(self) -> None:
        # The source turned a link into a directory (or a link was planted): the link is
        # replaced, never followed.
        outside = self.base / "outside"
        outside.mkdir()
        (self.top / "dists").mkdir(parents=True)
        os.symlink(outside, self.top / "dists" / "bookworm")
        observer = self.run_links_job(source())
        self.assertEqual(observer.errors, [])
        self.assertFalse((self.top / "dists" / "bookworm").is_symlink())
        self.assertEqual((self.top / "dists" / "bookworm" / "Release").read_bytes(),
                         b"release\n")
        self.assertEqual(os.listdir(outside), [])

    def test_older_content_server_without_links(self) -> None:
        # An older content server: the LIST option reads as a bad cursor (ERROR 3).
        self.patch(frames, "split_list_options", lambda payload: (payload, False))
        observer = self.run_links_job(source())
        self.assertEqual(observer.finished, [True])
        self.assertEqual(observer.errors, [])
        run = observer.done[0]
        self.assertEqual((run.links.placed, run.links.skipped, run.not_exported), (0, 0, 7))
        (index, path, message), = observer.links_skipped
        self.assertIsNone(path)
        self.assertIn("does not list symbolic links", message)
        self.assertEqual((self.top / "dists" / "bookworm" / "Release").read_bytes(),
                         b"release\n")


class RawListing(Protocol):
    """A content server answering LIST with crafted, pre-encoded entries (links included)
    and FETCH with nothing but errors: enough to see what the mirror does with a listing."""

    def __init__(self, body: bytes, seen: list[bytes]) -> None:
        self.body = body
        self.seen = seen
        self.receiver = _Frames(self._request)

    def dataReceived(self, data: bytes) -> None:
        self.receiver.dataReceived(data)

    def _request(self, opcode: int, rid: int, payload: bytes) -> None:
        if opcode == frames.LIST:
            self.transport.write(frames.frame(frames.ENTRIES, rid, self.body))
            self.transport.write(frames.frame(frames.LIST_END, rid,
                                              frames.encode_list_end(0, 0)))
            return
        self.seen.append(payload)
        self.transport.write(frames.frame(frames.ERROR, rid, frames.encode_error(
            frames.E_IO, "no file here")))


def d(name: bytes) -> bytes:
    return frames.encode_entry(frames.KIND_DIR, 0o755, 0, 1, name)


def f(name: bytes) -> bytes:
    return frames.encode_entry(frames.KIND_FILE, 0o644, 1, 1, name)


def link(name: bytes, target: bytes) -> bytes:
    return frames.encode_link_entry(name, target, 1)


class HostileLinks(JobTestCase):
    def serve_raw(self, *entries: bytes) -> list[bytes]:
        seen: list[bytes] = []
        self.network.listen("10.0.0.1", 7000,
                            Factory.forProtocol(lambda: RawListing(b"".join(entries), seen)))
        return seen

    def test_nothing_written_through_a_listed_link(self) -> None:
        # dists/stable -> bookworm, then a file and a directory "inside" the link.
        seen = self.serve_raw(d(b"dists"), d(b"dists/bookworm"),
                              link(b"dists/stable", b"bookworm"),
                              d(b"dists/stable/sub"), f(b"dists/stable/evil"))
        observer = self.run_job(source())
        top = self.mirror / "10.0.0.1_7000"
        self.assertEqual(os.readlink(top / "dists" / "stable"), "bookworm")
        refused = {path: message for _, path, message in observer.errors}
        self.assertEqual(sorted(refused), ["dists/stable/evil", "dists/stable/sub"])
        for message in refused.values():
            self.assertIn("refused", message)
        self.assertEqual(os.listdir(top / "dists" / "bookworm"), [])
        self.assertEqual(seen, [])  # never even fetched

    def test_link_then_same_name_as_directory(self) -> None:
        self.serve_raw(link(b"x", b"/tmp"), d(b"x"), f(b"x/evil"))
        observer = self.run_job(source())
        self.assertIn("x", [path for _, path, _ in observer.errors])
        self.assertFalse(os.path.lexists(self.mirror / "10.0.0.1_7000" / "x"))

    def test_malformed_targets_fail(self) -> None:
        self.serve_raw(link(b"a", b""), link(b"b", b"x\0y"), link(b"c", b"t" * 5000),
                       link(b"d", b"\xff"), link(b"e", b"ok"))
        observer = self.run_job(source())
        self.assertEqual(observer.finished, [False])
        refused = {path: message for _, path, message in observer.errors}
        self.assertEqual(sorted(refused), ["a", "b", "c", "d"])
        for message in refused.values():
            self.assertIn("link refused", message)
        top = self.mirror / "10.0.0.1_7000"
        self.assertEqual(os.listdir(top), ["e"])
        self.assertEqual(observer.done[0].failed, 4)

    def test_unsafe_names_refused_before_targets(self) -> None:
        self.serve_raw(link(b"../up", b"x"), link(b".mirror-tmp-1", b"x"))
        observer = self.run_job(source())
        self.assertEqual(len(observer.errors), 2)
        self.assertEqual(os.listdir(self.mirror / "10.0.0.1_7000"), [])

    def test_many_unsafe_links_reported_up_to_a_bound(self) -> None:
        self.patch(links, "MAX_REPORTED_SKIPS", 3)
        self.serve_raw(*[link(f"l{i:02}".encode(), b"/etc") for i in range(10)])
        observer = self.run_job(source())
        self.assertEqual(observer.finished, [True])
        self.assertEqual(observer.done[0].links.skipped, 10)
        self.assertEqual(len(observer.links_skipped), 4)
        self.assertEqual(observer.links_skipped[-1][1:], (None, "7 more unsafe links skipped"))
