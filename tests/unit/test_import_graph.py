"""No import circle in ``mirror/`` (issue 8): every ``import`` counts, those under
``if TYPE_CHECKING:`` and inside functions too, since a circle there is still two modules
that cannot be read, changed or tested one without the other."""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import mirror

PACKAGE = Path(mirror.__file__).resolve().parent


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported(tree: ast.AST, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The ``mirror.*`` modules ``tree`` (the module ``name``) imports, anywhere in it."""
    found: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from a import b`` imports a, and a.b if b is a module.
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            # ``import a.b.c`` runs a, a.b and a.b.c; only the deepest known one is the edge
            # that matters here (a package's __init__ is empty or imports nothing of ours).
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    known = set(files)
    return {name: imported(ast.parse(path.read_text(), str(path)), name,
                           path.name == "__init__.py", known)
            for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (its modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


class ImportGraphTestCase(SynchronousTestCase):
    def test_no_import_circle(self) -> None:
        cycle = find_cycle(import_graph())
        self.assertIsNone(cycle, f"import circle: {' -> '.join(cycle or [])}")

    def test_graph_sees_every_kind_of_import(self) -> None:
        """The check itself: an import under TYPE_CHECKING, in a function, relative or
        ``from package import module`` is an edge."""
        known = {"mirror", "mirror.a", "mirror.b", "mirror.c", "mirror.d", "mirror.pkg",
                 "mirror.pkg.e"}
        source = (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from mirror.a import A\n"
            "def f():\n"
            "    import mirror.b\n"
            "from . import c\n"
            "from .pkg import e\n"
            "from mirror import d as _d\n"
            "import twisted.internet\n"
        )
        edges = imported(ast.parse(source), "mirror.x", False, known)
        self.assertEqual(edges, {"mirror", "mirror.a", "mirror.b", "mirror.c", "mirror.d",
                                 "mirror.pkg", "mirror.pkg.e"})

    def test_find_cycle(self) -> None:
        self.assertIsNone(find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}))
        self.assertEqual(find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}), ["a", "b", "c", "a"])
