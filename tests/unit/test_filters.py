"""Include/exclude patterns (issue 12): the README's table, row by row, through the code the
mirror server runs (`SpecSync.wanted`, which also leaves excluded directories undescended);
bad patterns; ``--exclude-from`` files; mirror-init's options."""

from __future__ import annotations

import io
import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mirror.filters import (
    MAX_RULES,
    FilterList,
    Pattern,
    PatternError,
    Rule,
    read_exclude_from,
)
from mirror.initiator import cli
from mirror.job_options import JobOptions
from mirror.mirror_server.sync import SpecSync

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_table() -> list[tuple[list[Rule], str, bool, bool]]:
    """The rows of the README's filter table: rules, path, is_dir, mirrored."""
    text = README.read_text()
    block = text.split("<!-- filter-table -->", 1)[1].split("<!-- /filter-table -->", 1)[0]
    rows = []
    for line in block.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        words = cells[0].strip("`").split()
        rules = [Rule(flag == "--include", pattern)
                 for flag, pattern in zip(words[::2], words[1::2], strict=True)]
        assert all(flag in ("--include", "--exclude") for flag in words[::2]), cells[0]
        path = cells[1].strip("`")
        assert cells[2] in ("file", "dir") and cells[3] in ("yes", "no"), line
        rows.append((rules, path, cells[2] == "dir", cells[3] == "yes"))
    return rows


def mirrored(rules: list[Rule], path: str, is_dir: bool, root: tuple[str, ...] = ()) -> bool:
    """Whether a SPEC rooted at ``root`` mirrors ``path`` (relative to it): the listing
    meets its directories first, in canonical order, as a real one does."""
    sync = SpecSync(JobOptions(filters=tuple(rules)), root)
    parts = tuple(path.split("/"))
    sync.wanted(root, True)
    for i in range(1, len(parts)):
        sync.wanted(root + parts[:i], True)
    return sync.wanted(root + parts, is_dir)


class ReadmeTable(SynchronousTestCase):
    def test_the_table_has_the_cases_the_issue_asks_for(self) -> None:
        rows = readme_table()
        self.assertGreaterEqual(len(rows), 10)
        patterns = {r.pattern for rules, _, _, _ in rows for r in rules}
        for wanted in ("logs/", "/top", "**/*.iso", "*.tmp"):
            self.assertIn(wanted, patterns)
        self.assertTrue(any(len(rules) > 1 and rules[0].include and not rules[-1].include
                            for rules, _, _, _ in rows), "an include before an exclude")

    def test_every_row(self) -> None:
        for rules, path, is_dir, expected in readme_table():
            with self.subTest(rules=rules, path=path):
                self.assertEqual(mirrored(rules, path, is_dir), expected)
                # The same below a SPEC's path: patterns are relative to it.
                self.assertEqual(mirrored(rules, path, is_dir, ("pub", "x")), expected)


class Patterns(SynchronousTestCase):
    def test_bad_patterns(self) -> None:
        for bad, reason in [("", "empty pattern"), ("[abc", "'[' without its ']'"),
                            ("a\\", "lone"), ("/", "names no file"), ("//", "names no file"),
                            ("/***", "nothing before"), ("a\x01", "control character"),
                            ("[z-a]", "reversed"), ("[a/b]", "'/' inside"),
                            ("x" * 4097, "longer than")]:
            with self.subTest(bad=bad):
                with self.assertRaises(PatternError) as cm:
                    Pattern(bad)
                self.assertIn(reason, str(cm.exception))

    def test_no_rule_includes(self) -> None:
        self.assertTrue(FilterList().included(("a",), False))
        self.assertFalse(FilterList())

    def test_special_characters_are_literal(self) -> None:
        self.assertTrue(Pattern("a.b(c)+").matches(("a.b(c)+",), False))
        self.assertFalse(Pattern("a.b").matches(("axb",), False))
        self.assertTrue(Pattern("\\*").matches(("*",), False))
        self.assertFalse(Pattern("\\*").matches(("x",), False))
        self.assertTrue(Pattern("[a-c]x").matches(("bx",), False))
        self.assertTrue(Pattern("[]]").matches(("]",), False))

    def test_question_mark_and_star_never_cross_a_slash(self) -> None:
        self.assertFalse(Pattern("a?b/c").matches(("a", "b", "c"), False))
        self.assertFalse(Pattern("/a*c").matches(("ab", "c"), False))
        self.assertTrue(Pattern("/a**c").matches(("ab", "c"), False))

    def test_too_many_rules(self) -> None:
        with self.assertRaises(PatternError):
            FilterList([Rule(False, "x")] * (MAX_RULES + 1))


class ExcludeFrom(SynchronousTestCase):
    def test_lines(self) -> None:
        text = "# comment\n; comment\n\n*.iso\r\n+ keep/\n- drop me\n  spaced\n"
        self.assertEqual(read_exclude_from(io.StringIO(text), "f"), [
            Rule(False, "*.iso"), Rule(True, "keep/"), Rule(False, "drop me"),
            Rule(False, "  spaced")])

    def test_bad_line_named(self) -> None:
        with self.assertRaises(PatternError) as cm:
            read_exclude_from(io.StringIO("ok\n[bad\n"), "list.txt")
        self.assertIn("list.txt, line 2: bad pattern '[bad'", str(cm.exception))


class Options(SynchronousTestCase):
    def test_order_kept_across_the_three_options(self) -> None:
        path = self.mktemp()
        Path(path).write_text("b\n+ c\n")
        options = cli.parse_arguments(["-s", "127.0.0.1:1:.", "--include", "a",
                                       "--exclude-from", path,
                                       "--exclude", "d", "--delete", "--max-delete", "7",
                                       "--dry-run"])
        self.assertEqual(options.job_options, JobOptions(
            delete=True, max_delete=7, dry_run=True,
            filters=(Rule(True, "a"), Rule(False, "b"), Rule(True, "c"), Rule(False, "d"))))

    def test_defaults(self) -> None:
        options = cli.parse_arguments(["-s", "127.0.0.1:1:."])
        self.assertEqual(options.job_options, JobOptions())

    def usage_error(self, *argv: str) -> str:
        err = io.StringIO()
        with self.assertRaises(SystemExit) as cm:
            cli.parse_arguments(["-s", "127.0.0.1:1:.", *argv], stderr=err)
        self.assertEqual(cm.exception.code, 2)
        return err.getvalue()

    def test_usage_errors(self) -> None:
        self.assertEqual(self.usage_error("--include", "a[b"),
                         "mirror-init: error: --include: bad pattern 'a[b': '[' without its "
                         "']'\n")
        self.assertIn("--exclude: empty pattern", self.usage_error("--exclude", ""))
        self.assertIn("bad --max-delete '-1'", self.usage_error("--max-delete=-1"))
        self.assertIn("bad --max-delete 'x'", self.usage_error("--max-delete", "x"))
        self.assertTrue(re.search(r"cannot read '.*missing'",
                                  self.usage_error("--exclude-from", "/nonexistent/missing")))
