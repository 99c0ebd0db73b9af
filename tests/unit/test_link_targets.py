"""Link targets from the network: well formed (`parse_target`) and safe (`check_safe`,
rsync's --safe-links, with '..' allowed only at the start)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mirror import link_targets
from mirror.link_targets import UnsafeTarget, check_safe, parse_target

#: (link wire path, SPEC path, target, why it is unsafe or None if safe)
SAFETY = [
    ("dists/stable", "", "bookworm", None),
    ("dists/stable", "dists", "bookworm", None),
    ("dists/stable", "", "./bookworm/", None),
    ("dists/stable", "", "bookworm//main/../", "climbs"),  # '..' after a name
    ("x", "", "../x", "outside"),
    ("a/x", "", "../x", None),
    ("a/x", "a", "../x", "outside"),  # above the SPEC's tree, though inside the export
    ("x", "", "/etc", "absolute"),
    ("x", "", "/", "absolute"),
    ("x", "", "//x", "absolute"),
    ("x", "", "a/../../x", "climbs"),
    ("d/x", "", "a/../b", "climbs"),  # inside lexically, but 'a' could be a link
    ("x", "", ".", None),  # its own directory, the tree's top
    ("a/b/x", "", "..", None),
    ("a/b/x", "", "../..", None),
    ("a/b/x", "", "../../..", "outside"),
    ("a/b/c/d/x", "a/b", "../../e/f/g/h/i/j", None),  # deep, relative, stays inside
    ("a/b/c/d/x", "a/b", "../../../e", "outside"),
    ("x", "", "...", None),  # a name, not a climb
    ("x", "", "..a/b", None),
    ("x", "", "a/b/c", None),
    ("x", "", "x", None),  # a link to itself: a loop, harmless to place
]


class Safety(SynchronousTestCase):
    def test_table(self) -> None:
        for link, tree, target, why in SAFETY:
            link_parts = tuple(link.split("/"))
            tree_parts = tuple(tree.split("/")) if tree else ()
            with self.subTest(link=link, tree=tree, target=target):
                if why is None:
                    check_safe(link_parts, tree_parts, target)
                else:
                    with self.assertRaises(UnsafeTarget) as cm:
                        check_safe(link_parts, tree_parts, target)
                    self.assertIn(why, str(cm.exception))

    def test_link_outside_the_tree(self) -> None:
        for link, tree in [(("a",), ("a",)), (("b", "x"), ("a",))]:
            with self.assertRaises(UnsafeTarget):
                check_safe(link, tree, "x")

    def test_message_quotes_the_target_as_it_is(self) -> None:
        # Quoted, not repr()'d: a backslash or a quote in a target is shown once.
        with self.assertRaises(UnsafeTarget) as cm:
            check_safe(("x",), (), "/a\\b'c")
        self.assertEqual(str(cm.exception), "absolute target '/a\\b'c'")

    def test_message_quotes_the_target_printably(self) -> None:
        with self.assertRaises(UnsafeTarget) as cm:
            check_safe(("x",), (), "/\u202eevil" + "a" * 500)
        message = str(cm.exception)
        self.assertIn("\\u202e", message)
        self.assertLess(len(message), 200)


class Parse(SynchronousTestCase):
    def test_good(self) -> None:
        for raw in [b"bookworm", b"../x", b"/etc", b"a b", "é/ü".encode(), b"x" * 4095]:
            self.assertEqual(parse_target(raw), raw.decode("utf-8"))

    def test_hostile(self) -> None:
        for raw, why in [
            (b"", "empty"),
            (b"x" * 4096, "longer than 4095"),
            (b"x" * 70000, "longer than 4095"),
            (b"a\0b", "NUL"),
            (b"\0", "NUL"),
            (b"bad\xff", "UTF-8"),
            (b"a\nb", "U+000A"),
            (b"\x1b[2J", "U+001B"),
            ("\x9b".encode(), "U+009B"),
            (b"\x7f", "U+007F"),
        ]:
            with self.subTest(raw=raw[:20]):
                with self.assertRaises(UnsafeTarget) as cm:
                    parse_target(raw)
                self.assertIn(why, str(cm.exception))

    def test_bound(self) -> None:
        self.assertEqual(link_targets.MAX_TARGET_BYTES, 4095)
