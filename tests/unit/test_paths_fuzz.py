"""Property tests of the wire-path parser: whatever comes in, what goes out is safe."""

from __future__ import annotations

from hypothesis import example, given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mirror.paths import (
    _SAFE_PATH,
    MAX_COMPONENT_BYTES,
    MAX_PATH_BYTES,
    STATE_DIR_NAME,
    TEMP_PREFIX,
    UnsafePath,
    _parse_checked,
    join_parts,
    parse_request_path,
    parse_wire_path,
)

FUZZ = settings(deadline=None, max_examples=300)

# Text biased towards the characters that matter: separators, dots, controls, the prefix.
_tricky = st.sampled_from(["/", ".", "..", "\\", "\x00", "\n", "\x7f", "\x85", "\u2028",
                           TEMP_PREFIX, "é", "a", ":", " "])
tricky_text = st.lists(st.one_of(_tricky, st.text(max_size=4)), max_size=12).map("".join)
tricky_bytes = st.one_of(st.binary(max_size=64), tricky_text.map(
    lambda t: t.encode("utf-8", "surrogatepass")))


def is_control(ch: str) -> bool:
    return ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F


class ParseWirePathProperties(SynchronousTestCase):
    def check_safe(self, parts: tuple[str, ...]) -> None:
        self.assertIsInstance(parts, tuple)
        self.assertTrue(parts)
        joined = join_parts(parts)
        self.assertFalse(joined.startswith("/"))
        self.assertLessEqual(len(joined.encode("utf-8")), MAX_PATH_BYTES)
        self.assertNotIn("\\", joined)
        self.assertFalse(any(is_control(ch) for ch in joined))
        for part in parts:
            self.assertNotIn(part, ("", ".", ".."))
            self.assertNotIn("/", part)
            self.assertFalse(part.startswith(TEMP_PREFIX))
            self.assertLessEqual(len(part.encode("utf-8")), MAX_COMPONENT_BYTES)
        # Re-parses to itself, as text and as bytes.
        self.assertEqual(parse_wire_path(joined), parts)
        self.assertEqual(parse_wire_path(joined.encode("utf-8")), parts)

    @FUZZ
    @given(tricky_bytes)
    @example(b"../etc/passwd")
    @example(b"a/\xc0\xaf..")
    def test_bytes(self, raw: bytes) -> None:
        try:
            parts = parse_wire_path(raw)
        except UnsafePath:
            return
        self.check_safe(parts)

    @FUZZ
    @given(st.one_of(tricky_text, st.text()))
    @example("a/../b")
    @example("a\udcffb")
    def test_text(self, text: str) -> None:
        try:
            parts = parse_wire_path(text)
        except UnsafePath:
            return
        self.check_safe(parts)

    @FUZZ
    @given(st.one_of(tricky_bytes, tricky_text))
    def test_request_path(self, raw: bytes | str) -> None:
        try:
            parts = parse_request_path(raw)
        except UnsafePath:
            return
        if parts:
            self.check_safe(parts)

    @FUZZ
    @given(st.lists(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FFF,
                                                    blacklist_characters="/\\",
                                                    blacklist_categories=["Cs"]),
                            min_size=1, max_size=20), min_size=1, max_size=8))
    def test_legal_names_accepted(self, names: list[str]) -> None:
        names = [n for n in names if n not in (".", "..", STATE_DIR_NAME)
                 and not n.startswith(TEMP_PREFIX) and not any(is_control(c) for c in n)]
        if not names:
            return
        self.assertEqual(parse_wire_path("/".join(names)), tuple(names))


_tricky_fast = st.sampled_from(["/", ".", "..", "\\", "\x00", "\n", "\x85", TEMP_PREFIX,
                                STATE_DIR_NAME, "é", "\U0001f600", "a" * 63, "b" * 64])
fast_path_text = st.lists(st.one_of(_tricky_fast, st.text(max_size=4)),
                          max_size=12).map("".join)


class FastPathAgrees(SynchronousTestCase):
    """parse_wire_path's one-regex fast path accepts only what the rules one by one accept,
    with the same components (it may leave accepted names to the rules: never the reverse).
    """

    @FUZZ
    @given(fast_path_text)
    @example("a/b")
    @example(".a/..b/...")
    @example(f"{STATE_DIR_NAME}x/{TEMP_PREFIX[:-1]}")
    @example(f"x/{STATE_DIR_NAME}")
    @example("..\n")
    @example("é" * 63 + "/" + "\U0001f600" * 63)
    def test_fast_path_agrees(self, text: str) -> None:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return
        if _SAFE_PATH.fullmatch(text) is None:
            return
        self.assertEqual(_parse_checked(text), tuple(text.split("/")))
        self.assertEqual(parse_wire_path(text.encode("utf-8")), tuple(text.split("/")))

    def test_the_fast_path_is_taken(self) -> None:
        # A guard against a pattern that never matches (the test above would pass vacuously).
        for text in ("pub/debian/pool/main/a/apt/apt_2.6.1_amd64.deb", "a", ".hidden/x"):
            self.assertIsNotNone(_SAFE_PATH.fullmatch(text))
