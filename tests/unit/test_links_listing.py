"""The content server lists links (kind 4, never following them) only to a LIST that asks
(the codec: test_link_frames)."""

from __future__ import annotations

import os

from mirror.wire import frames
from tests.unit.helpers import list_result
from tests.unit.test_content_server import ServerTestCase


class ListingLinks(ServerTestCase):
    """make_tree has ``link`` and ``linkdir`` (absolute, out of the root) and ``docs/up``
    (``../../outside``): listed as they are, never followed, only when asked."""

    def list_links(self, path: str, request_id: int = 1, cursor: str | None = None):
        payload = frames.encode_list_options(frames.encode_list(path, cursor), True)
        self.rig.send(frames.LIST, request_id, payload)
        return list_result(self.answer(), request_id)

    def test_links_listed_when_asked(self) -> None:
        os.symlink("sub/c.txt", self.path_of("docs/c"))
        r = self.list_links("")
        self.assertIsNone(r.error)
        self.assertEqual(r.names, ["a.txt", "big.bin", "docs", "docs/b.txt", "docs/c",
                                   "docs/sub", "docs/sub/c.txt", "docs/up", "empty", "link",
                                   "linkdir"])
        links = {e.name.decode(): e.target.decode() for e in r.entries if e.is_link}
        self.assertEqual(links, {"docs/c": "sub/c.txt", "docs/up": "../../outside",
                                 "link": os.path.join(self.outside, "secret"),
                                 "linkdir": self.outside})
        # Only the FIFO is left out now; nothing of outside/ is listed (never followed).
        self.assertEqual(r.end, (11, 1))
        link = next(e for e in r.entries if e.name == b"docs/c")
        self.assertEqual(link.mtime_ns, os.lstat(self.path_of("docs/c")).st_mtime_ns)

    def test_not_listed_unless_asked(self) -> None:
        r = self.list("")
        self.assertFalse(any(e.is_link for e in r.entries))
        self.assertEqual(r.end, (7, 4))

    def test_resumed_listing_keeps_the_option(self) -> None:
        r = self.list_links("", cursor="docs/b.txt")
        self.assertEqual(r.names[:2], ["docs/sub", "docs/sub/c.txt"])
        self.assertIn("docs/up", r.names)
        self.assertTrue(next(e for e in r.entries if e.name == b"link").is_link)

    def test_unrepresentable_target_not_exported(self) -> None:
        os.symlink(b"bad\xff", os.path.join(self.root, "docs", "bad").encode())
        os.symlink("new\nline", self.path_of("docs/nl"))
        r = self.list_links("docs")
        self.assertEqual(r.names, ["docs", "docs/b.txt", "docs/sub", "docs/sub/c.txt",
                                   "docs/up"])
        self.assertEqual(r.end, (5, 2))

    def test_requested_path_that_is_a_link_is_refused(self) -> None:
        self.assert_error(self.list_links("linkdir"), frames.E_NOT_ALLOWED)

    def test_unknown_option_is_a_bad_request(self) -> None:
        self.rig.send(frames.LIST, 1, b"docs\0\0everything")
        self.assert_error(list_result(self.answer(), 1), frames.E_BAD_REQUEST, "option")
