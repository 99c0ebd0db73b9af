"""--delete (issue 12): the streaming merge, the removal walk, the job-wide --max-delete gate,
the subtree locks, the control lines, and whole jobs in memory."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from mirror import paths
from mirror.filters import Rule
from mirror.job_options import JobOptions, options_from_lines, options_lines
from mirror.mirror_server.deletion import (
    DeletionGate,
    TreeMerge,
    read_local_dir,
    remove_tree,
)
from mirror.mirror_server.subtree_lock import SubtreeLocked, SubtreeLocks
from mirror.mirror_server.sync import SpecSync
from mirror.wire import control
from tests.trees import tree_listing
from tests.unit.test_mirror_job import JobTestCase, Observer, source


def nothing_protected(parts: paths.Parts, is_dir: bool) -> bool:
    return False


class FakeTree:
    """A local tree for `TreeMerge`: path -> sorted entries; records what was read."""

    def __init__(self, dirs: dict[str, list[str]]) -> None:
        # "name/" is a directory.
        self.dirs = {tuple(k.split("/")) if k else (): v for k, v in dirs.items()}
        self.read: list[paths.Parts] = []

    def read_dir(self, parts: paths.Parts) -> list[tuple[str, bool]]:
        self.read.append(parts)
        return sorted((n.rstrip("/"), n.endswith("/")) for n in self.dirs.get(parts, []))

    def kind_of(self, parts: paths.Parts) -> str | None:
        return "dir" if parts in self.dirs else None


def listing(*names: str) -> list[tuple[paths.Parts, bool]]:
    return [(tuple(n.rstrip("/").split("/")) if n.strip("/") else (), n.endswith("/"))
            for n in names]


class Merge(SynchronousTestCase):
    def merge(self, tree: FakeTree, entries: list[tuple[paths.Parts, bool]],
              root: paths.Parts = (), protected=nothing_protected) -> TreeMerge:
        merge = TreeMerge(root, tree.read_dir, tree.kind_of, protected)
        for parts, is_dir in entries:
            merge.entry(parts, is_dir)
        merge.finish()
        return merge

    def test_candidates_are_the_roots_of_what_the_listing_lacks(self) -> None:
        tree = FakeTree({"": ["a", "b/", "c", "z/"], "b": ["x", "y/"], "b/y": ["deep"],
                         "z": ["q"]})
        merge = self.merge(tree, listing("/", "a", "b/", "b/x", "d"))
        self.assertEqual(merge.candidates, [(("b", "y"), True), (("c",), False),
                                            (("z",), True)])
        # Extraneous directories are not read: their contents go with them.
        self.assertEqual(tree.read, [(), ("b",)])

    def test_names_sort_as_the_listing_does(self) -> None:
        # "a b" sorts after "a" but a/z (inside a) comes before it in canonical order.
        tree = FakeTree({"": ["a/", "a b", "a-"], "a": ["z"]})
        merge = self.merge(tree, listing("/", "a/", "a/z", "a b", "a-"))
        self.assertEqual(merge.candidates, [])

    def test_type_changes_reported(self) -> None:
        tree = FakeTree({"": ["f", "d/"], "d": ["x"]})
        merge = TreeMerge((), tree.read_dir, tree.kind_of, nothing_protected)
        self.assertEqual(merge.entry((), True), "dir")
        self.assertEqual(merge.entry(("d",), False), "dir")
        self.assertEqual(merge.entry(("f",), True), "file")
        merge.finish()
        self.assertEqual(merge.candidates, [])

    def test_protected_names_never_candidates(self) -> None:
        tree = FakeTree({"": ["keep.log", "x"]})
        merge = self.merge(tree, listing("/"),
                           protected=lambda parts, is_dir: parts[-1].endswith(".log"))
        self.assertEqual(merge.candidates, [(("x",), False)])

    def test_memory_follows_depth_not_size(self) -> None:
        # 30 directories of 30 files, 3 deep: at most the path's directories are held.
        dirs: dict[str, list[str]] = {"": [f"d{i:02}/" for i in range(30)]}
        names = ["/"]
        for i in range(30):
            dirs[f"d{i:02}"] = ["s/"]
            dirs[f"d{i:02}/s"] = [f"f{j:02}" for j in range(30)]
            names += [f"d{i:02}/", f"d{i:02}/s/"] + [f"d{i:02}/s/f{j:02}" for j in range(30)]
        tree = FakeTree(dirs)
        merge = TreeMerge((), tree.read_dir, tree.kind_of, nothing_protected)
        deepest = 0
        for parts, is_dir in listing(*names):
            merge.entry(parts, is_dir)
            deepest = max(deepest, merge.depth)
        merge.finish()
        self.assertEqual((deepest, merge.depth, merge.candidates), (3, 0, []))

    def test_whole_export_has_no_root_entry(self) -> None:
        tree = FakeTree({"": ["a", "b"]})
        self.assertEqual(self.merge(tree, listing("b")).candidates, [(("a",), False)])
        # An empty listing of the whole export: everything goes (--max-delete guards).
        self.assertEqual(self.merge(FakeTree({"": ["a", "b/"]}), []).candidates,
                         [(("a",), False), (("b",), True)])

    def test_root_below_the_store(self) -> None:
        tree = FakeTree({"pub": ["old"], "": ["pub/", "other"]})
        merge = self.merge(tree, listing("pub/"), root=("pub",))
        self.assertEqual(merge.candidates, [(("pub", "old"), False)])  # "other" untouched


class Removing(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp())
        self.root = self.base / "root"
        self.outside = self.base / "outside"
        (self.outside / "sub").mkdir(parents=True)
        (self.outside / "sub" / "precious").write_text("p")
        for name in ("t/a", "t/d/b", "t/d/e/c", "t/busy/x"):
            (self.root / name).parent.mkdir(parents=True, exist_ok=True)
            (self.root / name).write_text(name)
        (self.root / "t" / "busy" / (paths.TEMP_PREFIX + "1")).write_text("in flight")
        (self.root / "t" / "link").symlink_to(self.outside / "sub")
        (self.root / "t" / "d" / "link").symlink_to(self.outside)
        self.fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, self.fd)

    def test_count_only_then_remove(self) -> None:
        before = tree_listing(self.base)
        planned = remove_tree(self.fd, ("t",), nothing_protected, count_only=True)
        self.assertEqual(tree_listing(self.base), before)
        done = remove_tree(self.fd, ("t",), nothing_protected)
        self.assertEqual((planned.entries, planned.bytes, planned.problems),
                         (done.entries, done.bytes, done.problems))
        # a, d, d/b, d/e, d/e/c, d/link, busy/x, link; busy and t stay (a temp file in busy).
        self.assertEqual((done.entries, done.bytes), (8, 3 + 5 + 7 + 8))
        left = sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*"))
        self.assertEqual(left, ["t", "t/busy", f"t/busy/{paths.TEMP_PREFIX}1"])
        self.assertEqual((self.outside / "sub" / "precious").read_text(), "p")

    def test_protected_kept_with_its_directories(self) -> None:
        done = remove_tree(self.fd, ("t",), lambda parts, is_dir: parts[-1] == "c")
        left = sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*"))
        self.assertEqual(left, ["t", "t/busy", f"t/busy/{paths.TEMP_PREFIX}1", "t/d", "t/d/e",
                                "t/d/e/c"])
        self.assertEqual(done.problems, [])

    def test_a_link_on_the_way_is_never_followed(self) -> None:
        done = remove_tree(self.fd, ("t", "link", "precious"), nothing_protected)
        self.assertEqual(done.entries, 0)
        self.assertIn("not a directory", done.problems[0][1])
        self.assertEqual((self.outside / "sub" / "precious").read_text(), "p")

    def test_a_link_as_target_removed_as_a_link(self) -> None:
        done = remove_tree(self.fd, ("t", "link"), nothing_protected)
        self.assertEqual(done.entries, 1)
        self.assertFalse(os.path.lexists(self.root / "t" / "link"))
        self.assertEqual((self.outside / "sub" / "precious").read_text(), "p")

    def test_gone_is_nothing(self) -> None:
        done = remove_tree(self.fd, ("t", "nothing"), nothing_protected)
        self.assertEqual((done.entries, done.problems), (0, []))

    def test_local_dir_read_sorted_without_reserved_names(self) -> None:
        (self.root / "t" / paths.STATE_DIR_NAME).mkdir()
        self.assertEqual(read_local_dir(self.fd, ("t",)),
                         [("a", False), ("busy", True), ("d", True), ("link", False)])
        self.assertEqual(read_local_dir(self.fd, ("t", "link")), [])


class TypeChanges(SynchronousTestCase):
    def test_replaced_with_delete_only(self) -> None:
        root = Path(self.mktemp())
        (root / "was-dir").mkdir(parents=True)
        (root / "was-dir" / "x").write_text("x")
        (root / "was-file").write_text("f")

        class Store:
            root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)

            def lstat(self, parts):
                return os.lstat(root.joinpath(*parts)) if parts else os.fstat(self.root_fd)

            def file_removed(self, parts):
                pass

        store = Store()
        self.addCleanup(os.close, store.root_fd)
        for options, left in [(JobOptions(delete=True, dry_run=True), ["was-dir", "was-file"]),
                              (JobOptions(delete=True), [])]:
            sync = SpecSync(options, ())
            sync.start(store)  # type: ignore[arg-type]
            problems = sync.take(store, [((), True), (("was-dir",), False),  # type: ignore[arg-type]
                                         (("was-file",), True)])
            self.assertEqual((problems, sync.replaced), ([], 2))
            self.assertEqual(sorted(os.listdir(root)), left)


class Gate(SynchronousTestCase):
    def test_waits_for_every_source_then_decides(self) -> None:
        gate = DeletionGate(2, 5)
        first = Deferred.fromCoroutine(gate.decide(3))
        self.assertNoResult(first)
        second = Deferred.fromCoroutine(gate.decide(2))
        self.assertTrue(self.successResultOf(first))
        self.assertTrue(self.successResultOf(second))

    def test_over_the_limit_nobody_deletes(self) -> None:
        gate = DeletionGate(2, 4)
        first = Deferred.fromCoroutine(gate.decide(0))
        second = Deferred.fromCoroutine(gate.decide(5))
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)),
                         (False, False))
        self.assertEqual(gate.total, 5)

    def test_no_limit_no_wait(self) -> None:
        gate = DeletionGate(3, None)
        self.assertTrue(self.successResultOf(Deferred.fromCoroutine(gate.decide(10**9))))


class Locks(SynchronousTestCase):
    def test_overlap(self) -> None:
        locks = SubtreeLocks()
        locks.acquire("1", [("h_1", ("pub", "a"))])
        for tree in [("h_1", ("pub",)), ("h_1", ()), ("h_1", ("pub", "a")),
                     ("h_1", ("pub", "a", "b"))]:
            with self.assertRaises(SubtreeLocked) as cm:
                locks.acquire("2", [tree])
            self.assertIn("locked by job 1 (--delete on h_1/pub/a)", str(cm.exception))
        locks.acquire("3", [("h_1", ("pub", "b")), ("h_2", ("pub",)), ("h_1", ("pubx",))])
        self.assertEqual(sorted(locks.held()), ["1", "3"])
        locks.release("1")
        locks.acquire("4", [("h_1", ("pub", "a", "b"))])

    def test_overlapping_specs_of_one_job(self) -> None:
        with self.assertRaises(SubtreeLocked) as cm:
            SubtreeLocks().acquire("1", [("h_1", ("a",)), ("h_1", ("a", "b"))])
        self.assertIn("overlapping SPECs", str(cm.exception))


class Codec(SynchronousTestCase):
    def test_round_trips(self) -> None:
        options = JobOptions(True, 12, True, (Rule(True, "a b/**"), Rule(False, "%x")))
        lines = [control.encode_option(m) if isinstance(m, control.JobOption)
                 else control.encode_filter(m) for m in options_lines(options)]
        self.assertEqual(lines, [b"OPTION delete", b"OPTION max-delete 12", b"OPTION dry-run",
                                 b"FILTER include a%20b/%2A%2A", b"FILTER exclude %25x"])
        parsed = [control.parse_client_line(line) for line in lines]
        self.assertEqual(options_from_lines(parsed), options)  # type: ignore[arg-type]
        self.assertEqual(options_lines(JobOptions()), [])
        event = control.SourceSync(3, 1, 2, 3, "refused")
        line = control.encode_event(event)
        self.assertEqual(line, b"SOURCE-SYNC 3 1 2 3 refused")
        self.assertEqual(control.parse_server_line(line), event)

    def test_refused_lines(self) -> None:
        for line in [b"OPTION", b"OPTION nope", b"OPTION delete 1", b"OPTION max-delete",
                     b"OPTION max-delete -1", b"FILTER include", b"FILTER maybe x",
                     b"FILTER exclude %5Babc", b"FILTER exclude a b"]:
            with self.subTest(line=line), self.assertRaises(control.ControlError):
                control.parse_client_line(line)
        for line in [b"SOURCE-SYNC 0 0 0 0 maybe", b"SOURCE-SYNC 0 0 0 done",
                     b"SOURCE-SYNC 64 0 0 0 done"]:
            with self.subTest(line=line), self.assertRaises(control.ControlError):
                control.parse_server_line(line)


class Jobs(JobTestCase):
    def run_with(self, options: JobOptions, *sources) -> Observer:
        observer = Observer()
        job = self.service.submit(list(sources), observer, options)
        self.network.run_until(job.finished)
        return observer

    def test_max_delete_is_per_job(self) -> None:
        src = self.base / "src"
        for name in ("a/keep", "b/keep"):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_text("k")
        self.serve(src)
        local = self.mirror / "10.0.0.1_7000"
        for name in ("a/x", "a/y", "b/z"):
            (local / name).parent.mkdir(parents=True, exist_ok=True)
            (local / name).write_text("old")
        observer = self.run_with(JobOptions(delete=True, max_delete=2), source("a"),
                                 source("b"))
        self.assertEqual([r.sync.deletion for r in observer.done.values()],
                         ["refused", "refused"])
        self.assertTrue((local / "a" / "x").exists() and (local / "b" / "z").exists())
        message = ("deletion refused: the job would delete 3 entries, more than "
                   "--max-delete 2; nothing deleted")
        self.assertEqual(sorted(e for e in observer.errors if e[2] == message),
                         [(0, None, message), (1, None, message)])
        observer = self.run_with(JobOptions(delete=True, max_delete=3), source("a"),
                                 source("b"))
        self.assertEqual([(r.sync.deletion, r.sync.deleted) for r in observer.done.values()],
                         [("done", 2), ("done", 1)])
        self.assertEqual(sorted(os.listdir(local / "a")), ["keep"])
        self.assertEqual(sorted(os.listdir(local / "b")), ["keep"])

    def test_over_max_delete_candidates_are_no_longer_kept(self) -> None:
        src = self.base / "src"
        (src / "pub").mkdir(parents=True)
        self.serve(src)
        local = self.mirror / "10.0.0.1_7000" / "pub"
        local.mkdir(parents=True)
        for i in range(10):
            (local / f"old{i}").write_text("x")
        kept = []
        delete = SpecSync.delete

        def spy(sync, store, allowed):
            kept.append(list(sync._candidates))
            return delete(sync, store, allowed)

        self.patch(SpecSync, "delete", spy)
        observer = self.run_with(JobOptions(delete=True, max_delete=3), source("pub"))
        self.assertEqual(kept, [[]])  # memory bounded by the limit, not by the deletions
        self.assertIn((0, None, "deletion refused: the job would delete at least 4 entries, "
                                "more than --max-delete 3; nothing deleted"), observer.errors)
        self.assertEqual(len(os.listdir(local)), 10)

    def test_skipped_after_a_refused_entry(self) -> None:
        src = self.base / "src"
        src.mkdir()
        (src / "big").write_bytes(b"x" * 100)
        self.serve(src)
        local = self.mirror / "10.0.0.1_7000"
        local.mkdir()
        (local / "big").write_text("the old big file")
        self.service.settings.max_file_size = 10
        observer = self.run_with(JobOptions(delete=True), source())
        self.assertIn((0, None, "deletion skipped: the listing of 10.0.0.1:7000:. had errors"),
                      observer.errors)
        self.assertEqual(observer.done[0].sync.deletion, "skipped")
        self.assertEqual((local / "big").read_text(), "the old big file")

    def test_whole_export(self) -> None:
        src = self.base / "src"
        (src / "d").mkdir(parents=True)
        (src / "d" / "f").write_text("f")
        self.serve(src)
        local = self.mirror / "10.0.0.1_7000"
        (local / "d" / "old").mkdir(parents=True)
        (local / "top").write_text("t")
        observer = self.run_with(JobOptions(delete=True), source())
        self.assertEqual(observer.errors, [])
        self.assertEqual(observer.done[0].sync.deleted, 2)
        self.assertEqual(tree_listing(local), tree_listing(src))

    def test_dry_run_leaves_no_trace(self) -> None:
        src = self.base / "src"
        (src / "d").mkdir(parents=True)
        (src / "d" / "f").write_text("f")
        self.serve(src)
        observer = self.run_with(JobOptions(dry_run=True, delete=True), source())
        run = observer.done[0]
        self.assertEqual(observer.errors, [])
        self.assertEqual((run.stats.count, run.dirs, run.ok), (1, 1, True))
        self.assertEqual(os.listdir(self.mirror), [])

    def test_lock_held_for_the_job_only(self) -> None:
        src = self.base / "src"
        src.mkdir()
        self.serve(src)
        job = self.service.submit([source("x")], Observer(), JobOptions(delete=True))
        with self.assertRaises(SubtreeLocked):
            self.service.submit([source()], Observer(), JobOptions(delete=True))
        self.network.run_until(job.finished)
        self.assertEqual(self.service.subtree_locks.held(), {})


class ControlPort(JobTestCase):
    """OPTION and FILTER lines reach the job; a bad one, or a locked subtree, is refused."""

    def connect(self):
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        from mirror.mirror_server.control import ControlFactory

        addr = IPv4Address("TCP", "127.0.0.1", 5000)
        proto = ControlFactory(self.service).buildProtocol(addr)
        transport = StringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        return proto, transport

    def test_options_reach_the_job(self) -> None:
        (self.base / "src").mkdir()
        self.serve(self.base / "src")
        proto, transport = self.connect()
        proto.dataReceived(b"OPTION delete\r\nSOURCE 10.0.0.1 7000 pub 0\r\nOPTION max-delete 5"
                           b"\r\nFILTER exclude *.iso\r\nFILTER include %2A/\r\nGO\r\n")
        self.assertEqual(proto.job.options, JobOptions(
            delete=True, max_delete=5, filters=(Rule(False, "*.iso"), Rule(True, "*/"))))
        other, transport2 = self.connect()
        other.dataReceived(b"SOURCE 10.0.0.1 7000 pub/x 0\r\nOPTION delete\r\nGO\r\n")
        self.assertIn(b"REFUSED 10.0.0.1_7000/pub/x%20is%20locked%20by%20job%20",
                      transport2.value())
        self.network.run_until(proto.job.finished)
        self.assertIn(b"SOURCE-SYNC 0 0 0 0 skipped\r\nSOURCE-DONE 0 failed", transport.value())

    def test_bad_filter_refused(self) -> None:
        proto, transport = self.connect()
        proto.dataReceived(b"SOURCE 10.0.0.1 7000 . 0\r\nFILTER exclude %5Bx\r\nGO\r\n")
        self.assertTrue(transport.value().startswith(b"REFUSED bad%20pattern"))
        self.assertIsNone(proto.job)
