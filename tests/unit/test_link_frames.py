"""The codec of link entries (LIST kind 4) and of the LIST option that asks for them
(doc/protocol.md). In the mutation test selection (setup.cfg [mutmut]) with test_frames."""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from mirror.link_targets import UnsafeTarget, parse_target
from mirror.wire import frames
from mirror.wire.frames import ProtocolError


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
        for raw, why in [(head, "truncated LIST link entry"),
                         (head + b"\0", "truncated LIST link entry"),
                         (head + struct.pack(">H", 65535) + b"short",
                          "truncated LIST link entry target")]:
            with self.assertRaises(ProtocolError) as cm:
                frames.decode_entries(raw)
            self.assertEqual(str(cm.exception), why)

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
        # A third NUL belongs to the options (never a valid one): not a path nor a cursor.
        for payload in [b"a\0\0links,more", b"a\0\0", b"a\0b\0c", b"\0\0LINKS",
                        b"a\0b\0links\0x", b"a\0b\0c\0links"]:
            with self.assertRaises(ProtocolError):
                frames.split_list_options(payload)

    def test_unknown_option_message(self) -> None:
        for options, shown in [(b"everything", "everything"),
                               (b"x" * 100, "x" * 39 + "\u2026"),
                               (b"\x1b[2J", "\\x1b[2J")]:
            with self.assertRaises(ProtocolError) as cm:
                frames.split_list_options(b"a\0\0" + options)
            self.assertEqual(str(cm.exception),
                             f"unknown LIST option '{shown}' after the cursor")
