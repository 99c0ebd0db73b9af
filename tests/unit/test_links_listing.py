"""Link entries of a LIST (kind 4) and the LIST option that asks for them: the codec, and the
content server listing links (never following them) only when asked."""

from __future__ import annotations

import os
import struct

from twisted.trial.unittest import SynchronousTestCase

from mirror.link_targets import UnsafeTarget, parse_target
from mirror.wire import frames
from mirror.wire.frames import ProtocolError
from tests.unit.helpers import list_result
from tests.unit.test_content_server import ServerTestCase


class LinkEntryCodec(SynchronousTestCase):
    def test_round_trip(self) -> None:
        raw = (frames.encode_entry(frames.KIND_DIR, 0o755, 0, 5, b"dists")
               + frames.encode_link_entry(b"dists/stable", b"bookworm", -7)
               + frames.encode_entry(frames.KIND_FILE, 0o644, 3, 5, b"dists/x"))
        entries = frames.decode_entries(raw)
        self.assertEqual([e.kind for e in entries], [1, 4, 2])
        link = entries[1]
        self.assertEqual(link, frames.Entry(frames.KIND_LINK, 0, 0, -7, b"dists/stable",
                                            target=b"bookworm"))
        self.assertTrue(link.is_link)
        self.assertFalse(link.is_dir or link.is_error or entries[0].is_link)

    def test_layout(self) -> None:
        raw = frames.encode_link_entry(b"l", b"t/u", 9)
        self.assertEqual(raw, struct.pack(">BHQqH", 4, 0, 0, 9, 1) + b"l"
                         + struct.pack(">H", 3) + b"t/u")

    def test_truncated(self) -> None:
        good = frames.encode_link_entry(b"name", b"target", 1)
        for cut in range(1, len(good)):
            with self.assertRaises(ProtocolError):
                frames.decode_entries(good[:cut])
        head = struct.pack(">BHQqH", 4, 0, 0, 0, 1) + b"x"
        with self.assertRaises(ProtocolError) as cm:
            frames.decode_entries(head + struct.pack(">H", 65535) + b"short")
        self.assertIn("target", str(cm.exception))

    def test_hostile_targets_are_decoded_raw_then_refused(self) -> None:
        # The framing is intact: the entry decodes, and the receiver refuses the target
        # (one entry fails, the listing goes on).
        for target, why in [(b"", "empty"), (b"a\0b", "NUL"), (b"x" * 5000, "longer"),
                            (b"\xff", "UTF-8"), (b"\x1b]0;t\x07", "control")]:
            with self.subTest(why=why):
                entry, = frames.decode_entries(frames.encode_link_entry(b"l", target, 0))
                self.assertEqual(entry.target, target)
                with self.assertRaises(UnsafeTarget) as cm:
                    parse_target(entry.target)
                self.assertIn(why, str(cm.exception))

    def test_longest_target_fits(self) -> None:
        target = b"t" * frames.MAX_LINK_TARGET
        entry, = frames.decode_entries(frames.encode_link_entry(b"l", target, 0))
        self.assertEqual(parse_target(entry.target), target.decode())


class ListOptions(SynchronousTestCase):
    def test_without_links_the_old_payload(self) -> None:
        for path, cursor in [("a", None), ("", None), ("a", "a/b")]:
            plain = frames.encode_list(path, cursor)
            self.assertEqual(frames.encode_list_options(plain, False), plain)
            self.assertEqual(frames.split_list_options(plain), (plain, False))

    def test_with_links(self) -> None:
        for path, cursor in [("a", None), ("", None), ("a", "a/b")]:
            payload = frames.encode_list_options(frames.encode_list(path, cursor), True)
            self.assertEqual(payload.count(b"\0"), 2)
            rest, links = frames.split_list_options(payload)
            self.assertTrue(links)
            self.assertEqual(frames.decode_list(rest),
                             (path.encode(), None if cursor is None else cursor.encode()))

    def test_unknown_option(self) -> None:
        for payload in [b"a\0\0links,more", b"a\0\0", b"a\0b\0c", b"\0\0LINKS"]:
            with self.assertRaises(ProtocolError):
                frames.split_list_options(payload)


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
