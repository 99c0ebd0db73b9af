"""The registry's SQL on SQLite: leases, full listings, incremental changes, bounds."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mirror.index.codec import FileRecord
from mirror.index.registry import Limits, NotRegistered, Query, RegistryLimit
from tests.unit.index_helpers import inline_registry, result_of

D1 = "1" * 64
D2 = "2" * 64


class RegistryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry, self.db = inline_registry(Limits(max_nodes=2, max_files_per_node=3))

    def hello(self, node: str, now: float = 0.0, lease: float = 10.0) -> bool:
        return result_of(self.registry.hello(node, f"{node}.example:9000", now, lease))

    def put(self, node: str, *files: FileRecord) -> int:
        return result_of(self.registry.put(node, files))

    def holders(self, now: float = 1.0, **query: str):
        return result_of(self.registry.holders(Query(**query), now, None, 100))

    def test_path_and_tree_and_digest(self) -> None:
        self.assertFalse(self.hello("a"))
        self.put("a", FileRecord("d/x", 1, 2, D1), FileRecord("d/y", 3, 4, None),
                 FileRecord("d0", 5, 6, D1))
        self.assertEqual([h.path for h in self.holders(path="d")], ["d/x", "d/y"])
        self.assertEqual([h.path for h in self.holders(path="d/x")], ["d/x"])
        self.assertEqual([h.path for h in self.holders(digest=D1)], ["d/x", "d0"])
        self.assertEqual(len(self.holders(path="")), 3)
        row = self.holders(path="d/x")[0]
        self.assertEqual((row.node, row.address, row.size, row.mtime_ns, row.digest),
                         ("a", "a.example:9000", 1, 2, D1))
        self.assertEqual((row.age, row.expires_in), (1.0, 9.0))

    def test_lease_expires_on_the_clock(self) -> None:
        self.hello("a", now=0.0, lease=10.0)
        self.put("a", FileRecord("f", 1, 1, D1))
        self.assertEqual(len(self.holders(now=9.9, path="f")), 1)
        self.assertEqual(self.holders(now=10.0, path="f"), [])
        self.assertRaises(NotRegistered, result_of, self.registry.renew("a", 10.0, 10.0))
        self.assertEqual(result_of(self.registry.expire(10.0)), 1)
        self.assertEqual(self.db.execute("select count(*) from index_files").fetchone()[0], 0)
        # Registering again starts empty.
        self.assertFalse(self.hello("a", now=11.0))

    def test_renewal_keeps_the_lease(self) -> None:
        self.hello("a", now=0.0, lease=10.0)
        self.put("a", FileRecord("f", 1, 1, D1))
        result_of(self.registry.renew("a", 8.0, 10.0))
        self.assertEqual(len(self.holders(now=17.0, path="f")), 1)
        self.assertEqual(result_of(self.registry.expire(17.0)), 0)
        self.assertTrue(self.hello("a", now=17.5))
        self.assertEqual(self.holders(now=18.0, path="f")[0].age, 0.5)

    def test_full_listing_removes_what_it_does_not_name(self) -> None:
        self.hello("a")
        self.put("a", FileRecord("f", 1, 1), FileRecord("g", 1, 1))
        result_of(self.registry.begin("a"))
        self.put("a", FileRecord("g", 2, 2, D2))
        self.assertEqual(result_of(self.registry.end("a")), 1)
        rows = self.holders(path="")
        self.assertEqual([(h.path, h.size, h.digest) for h in rows], [("g", 2, D2)])

    def test_incremental_changes(self) -> None:
        self.hello("a")
        self.assertEqual(self.put("a", FileRecord("f", 1, 1), FileRecord("g", 1, 1)), 2)
        self.assertEqual(self.put("a", FileRecord("f", 9, 9, D1)), 2)
        self.assertEqual(result_of(self.registry.remove("a", ["g", "unknown"])), 1)
        self.assertEqual([(h.path, h.size) for h in self.holders(path="")], [("f", 9)])

    def test_a_node_changes_only_its_own_files(self) -> None:
        self.hello("a")
        self.hello("b")
        self.put("a", FileRecord("f", 1, 1, D1))
        self.put("b", FileRecord("f", 2, 2, D2))
        result_of(self.registry.remove("b", ["f"]))
        result_of(self.registry.withdraw("b"))
        self.assertEqual([(h.node, h.size) for h in self.holders(path="f")], [("a", 1)])

    def test_bounds(self) -> None:
        self.hello("a")
        self.hello("b")
        self.assertRaises(RegistryLimit, self.hello, "c")
        # An expired node makes room.
        self.assertFalse(self.hello("c", now=11.0))
        self.hello("a", now=11.0)
        self.put("a", FileRecord("1", 1, 1), FileRecord("2", 1, 1), FileRecord("3", 1, 1))
        # Changing a held file is not a new file; a fourth is refused, the batch not kept.
        self.put("a", FileRecord("3", 2, 2))
        with self.assertRaises(RegistryLimit):
            self.put("a", FileRecord("3", 3, 3), FileRecord("4", 1, 1))
        self.assertEqual([(h.path, h.size) for h in self.holders(now=12.0, path="")],
                         [("1", 1), ("2", 1), ("3", 2)])

    def test_unregistered_node_changes_nothing(self) -> None:
        for d in (self.registry.put("x", [FileRecord("f", 1, 1)]), self.registry.begin("x"),
                  self.registry.remove("x", ["f"]), self.registry.end("x")):
            self.assertRaises(NotRegistered, result_of, d)

    def test_pages_go_on_after_the_cursor(self) -> None:
        self.hello("a")
        self.hello("b")
        self.put("a", FileRecord("f", 1, 1), FileRecord("g", 1, 1))
        self.put("b", FileRecord("f", 1, 1))
        first = result_of(self.registry.holders(Query(path=""), 1.0, None, 2))
        self.assertEqual([(h.path, h.node) for h in first], [("f", "a"), ("f", "b")])
        rest = result_of(self.registry.holders(Query(path=""), 1.0, ("f", "b"), 2))
        self.assertEqual([(h.path, h.node) for h in rest], [("g", "a")])
