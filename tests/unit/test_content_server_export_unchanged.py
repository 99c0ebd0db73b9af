"""LIST and FETCH never change the export: a missing path is an error, never created.

`paths.open_parent_dir` once had an untested ``create`` flag; flipped, a LIST or FETCH of
``a/b/c`` would have made ``a`` and ``a/b`` inside the export (issue 7, item 4).
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from mirror.wire import frames
from tests.unit.helpers import connect_server, fetch_result, list_result, make_factory

#: Requested paths, and the error each gets.
CASES = [(path, frames.E_NOT_FOUND) for path in ("a/b/c", "a/b", "a", "docs/x/y", "docs/x")]
CASES.append(("docs/f.txt/z", frames.E_NOT_ALLOWED))  # a file as a parent


class MissingPaths(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.root, "docs", "sub"))
        with open(os.path.join(self.root, "docs", "f.txt"), "wb") as f:
            f.write(b"x")
        self.factory = make_factory(self.root)
        self.addCleanup(os.close, self.factory.root_fd)
        self.rig = connect_server(self.factory)

    def tree(self) -> list[tuple[str, int, int]]:
        """Every name under the root with its inode and mtime (a directory made and
        removed again would still change its parent's mtime)."""
        st = os.stat(self.root)
        out = [(".", st.st_ino, st.st_mtime_ns)]
        for d, ds, fs in os.walk(self.root):
            for name in ds + fs:
                st = os.stat(os.path.join(d, name), follow_symlinks=False)
                out.append((os.path.relpath(os.path.join(d, name), self.root), st.st_ino,
                            st.st_mtime_ns))
        return sorted(out)

    def assert_error(self, error: tuple[int, str] | None, path: str, code: int) -> None:
        self.assertIsNotNone(error, f"{path}: no ERROR")
        self.assertEqual(error[0], code, f"{path}: {error}")

    def test_list_creates_nothing(self) -> None:
        before = self.tree()
        for request_id, (path, code) in enumerate(CASES, 1):
            self.rig.list(request_id, path)
            self.assert_error(list_result(self.rig.log.take(), request_id).error, path, code)
        self.assertEqual(self.tree(), before)
        self.assertFalse(self.rig.aborted)

    def test_fetch_creates_nothing(self) -> None:
        before = self.tree()
        for request_id, (path, code) in enumerate(CASES, 1):
            self.rig.fetch(request_id, path)
            self.assert_error(fetch_result(self.rig.log.take(), request_id).error, path, code)
        self.assertEqual(self.tree(), before)
        self.assertFalse(self.rig.aborted)
