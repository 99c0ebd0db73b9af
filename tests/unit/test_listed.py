"""The LIST order check on its own (mirror/mirror_server/listed.py): every hostile order is
refused with a clear message, the order is the content server's, and the check's memory does
not grow with the tree (issue 9)."""

from __future__ import annotations

import gc
import os
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mirror import paths
from mirror.mirror_server.listed import EntryRefused, ListingOrder
from tests.unit.test_listing import WalkerTestCase, walk

D, F = True, False


def p(name: str) -> paths.Parts:
    return paths.parse_wire_path(name)


def refusals(*entries: tuple[str, bool]) -> list[tuple[str, str]]:
    """(name, message) of each entry refused, fed in this order to one checker."""
    order = ListingOrder()
    out = []
    for name, is_dir in entries:
        try:
            order.add(p(name), is_dir)
        except EntryRefused as e:
            out.append((name, str(e)))
    return out


TWICE = "listed twice; refused"
OUT_OF_ORDER = "listed out of order (after a name that sorts later, or listed twice); refused"
UNDER_FILE = "its parent was listed as a file; refused"


class Accepted(SynchronousTestCase):
    def test_canonical_listing(self) -> None:
        self.assertEqual(refusals(
            ("a", D), ("a/b", F), ("a/c", D), ("a/c/d", F), ("a/e", F), ("b", F),
            ("c", D), ("c/x", D), ("c/x/y", D), ("d", F)), [])

    def test_components_compared_not_joined_strings(self) -> None:
        """``a/z`` before ``a b``: "a" < "a b", though "/" sorts after " " as a character."""
        self.assertEqual(refusals(("a", D), ("a/z", F), ("a b", F)), [])
        self.assertEqual(refusals(("a", D), ("a b", F), ("a/z", F)),
                         [("a/z", OUT_OF_ORDER)])

    def test_utf8_byte_order(self) -> None:
        """Code points, as UTF-8 bytes sort: "Z" < "a" < "é" < "ﬁ" (U+FB01) < "😀" (U+1F600;
        UTF-16 would put it before U+FB01)."""
        names = ["Z", "a", "é", "ﬁ", "😀"]
        self.assertEqual(names, sorted(names, key=lambda n: n.encode("utf-8")))
        self.assertEqual(refusals(*[(n, F) for n in names]), [])
        self.assertEqual(refusals(("😀", F), ("ﬁ", F)), [("ﬁ", OUT_OF_ORDER)])

    def test_under_a_requested_path(self) -> None:
        """A listing of ``x/y`` starts there: its implied parents are directories."""
        self.assertEqual(refusals(("x/y", D), ("x/y/a", F), ("x/y/b", D), ("x/y/b/c", F)), [])


class Refused(SynchronousTestCase):
    def test_file_twice(self) -> None:
        self.assertEqual(refusals(("x", F), ("x", F)), [("x", TWICE)])

    def test_dir_twice(self) -> None:
        self.assertEqual(refusals(("x", D), ("x", D), ("x/a", F)), [("x", TWICE)])

    def test_dir_then_file_same_name(self) -> None:
        self.assertEqual(refusals(("x", D), ("x", F), ("x/inner", F)), [("x", TWICE)])

    def test_duplicate_not_adjacent(self) -> None:
        self.assertEqual(refusals(("a", F), ("b", F), ("a", F)), [("a", OUT_OF_ORDER)])

    def test_siblings_out_of_order(self) -> None:
        self.assertEqual(refusals(("b", F), ("a", F), ("c", F)), [("a", OUT_OF_ORDER)])

    def test_back_into_a_finished_directory(self) -> None:
        self.assertEqual(refusals(("a", D), ("a/x", F), ("b", F), ("a/y", F)),
                         [("a/y", OUT_OF_ORDER)])

    def test_dir_after_its_children(self) -> None:
        self.assertEqual(refusals(("a/b", F), ("a", D)),
                         [("a", "listed as a directory after entries inside it; refused")])

    def test_file_after_its_children(self) -> None:
        self.assertEqual(refusals(("c/d/e", F), ("c/d", F), ("c", F)), [
            ("c/d", "listed as a file after entries inside it; refused"),
            ("c", "listed as a file after entries inside it; refused")])

    def test_file_under_a_file(self) -> None:
        self.assertEqual(refusals(("p", F), ("p/child", F), ("p/q/r", D), ("p/q/r/s", F)),
                         [("p/child", UNDER_FILE), ("p/q/r", UNDER_FILE),
                          ("p/q/r/s", UNDER_FILE)])

    def test_file_then_dir_same_name(self) -> None:
        self.assertEqual(refusals(("x", F), ("x", D), ("x/inner", F)),
                         [("x", TWICE), ("x/inner", UNDER_FILE)])

    def test_a_refused_entry_changes_nothing(self) -> None:
        order = ListingOrder()
        order.add(p("m"), D)
        for name, is_dir in [("a", F), ("m", F), ("l/z", F)]:
            self.assertRaises(EntryRefused, order.add, p(name), is_dir)
            self.assertEqual(order.last, p("m"))
        order.add(p("m/n"), F)  # "m" is still the directory accepted
        self.assertEqual(order.last, p("m/n"))


class AgreesWithTheWalker(WalkerTestCase):
    """The content server's walker lists in the order the check accepts, including names
    where code-point, UTF-16 and joined-string orders would disagree."""

    NAMES = ("a/", "a/z", "a b", "a-", "a.b/c", "A", "é/x", "ﬁ", "😀/😀", "😀/a", "z/",
             "b/c/d/e", "b/c/d/f", "b/c-", "b0")

    def test_full_listing_accepted_and_sorted_by_utf8_bytes(self) -> None:
        self.make(*self.NAMES)
        entries, _ = walk(self.root_fd)
        order = ListingOrder()
        for e in entries:
            order.add(p(e.name.decode()), e.is_dir)  # raises if out of order
        listed = [e.name for e in entries]
        self.assertEqual(listed, sorted(listed, key=lambda n: n.split(b"/")))
        self.assertEqual(len(listed), 21)

    def test_resumed_listing_goes_on_in_order(self) -> None:
        """A listing closed after any entry and resumed from it as a cursor (job.py does that
        when the work queue stays full) continues in the same order."""
        self.make(*self.NAMES)
        full = [e.name.decode() for e in walk(self.root_fd)[0]]
        for i, cursor in enumerate(full):
            order = ListingOrder()
            for name in full[: i + 1]:
                order.add(p(name), os.path.isdir(os.path.join(self.root, name)))
            for e in walk(self.root_fd, cursor=cursor)[0]:
                order.add(p(e.name.decode()), e.is_dir)


def reachable_size(obj: Any) -> int:
    """Bytes of every object reachable from ``obj``'s own state (classes and modules
    excluded): what keeping ``obj`` alive keeps in memory."""
    seen: set[int] = set()
    todo = [obj]
    total = 0
    while todo:
        o = todo.pop()
        if id(o) in seen or isinstance(o, type) or type(o).__name__ == "module":
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        todo.extend(gc.get_referents(o))
    return total


class BoundedMemory(SynchronousTestCase):
    def test_state_does_not_grow_with_the_tree(self) -> None:
        """100,000 entries (1,000 directories of 99 files, depth 3): the checker holds one
        path, as small as after the first few entries."""
        order = ListingOrder()
        order.add(p("top"), D)
        sizes = []
        for i in range(1000):
            directory = f"top/d{i:04}"
            order.add(p(directory), D)
            for j in range(99):
                order.add(p(f"{directory}/f{j:02}"), F)
            sizes.append(reachable_size(order))
        self.assertEqual(order.last, ("top", "d0999", "f98"))
        self.assertLessEqual(max(sizes), sizes[0])
        self.assertLess(sizes[-1], 1000)

    def test_state_is_proportional_to_depth(self) -> None:
        order = ListingOrder()
        name = ""
        for _ in range(100):
            name = f"{name}/d" if name else "d"
            order.add(p(name), D)
        self.assertEqual(len(order.last or ()), 100)
        self.assertLess(reachable_size(order), 100 * 100)
