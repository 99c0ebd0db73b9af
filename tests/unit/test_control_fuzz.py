"""Property tests: every message survives encode -> parse, and no input makes a parser raise
anything but its own error type."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mirror.initiator.spec import SpecError, parse_specs
from mirror.paths import MAX_COMPONENT_BYTES, TEMP_PREFIX
from mirror.stats import SizeStats
from mirror.wire.control import (
    MAX_COUNT,
    MAX_DELAY,
    MAX_LINE,
    MAX_SOURCES,
    ControlError,
    Done,
    JobAccepted,
    Progress,
    Refused,
    SourceDone,
    SourceError,
    SourceRequest,
    encode_event,
    encode_source,
    parse_client_line,
    parse_server_line,
)

# No wall-clock deadline: the tests assert behaviour, never timings.
fuzz = settings(deadline=None, max_examples=200)

counts = st.integers(min_value=0, max_value=MAX_COUNT)
seconds = st.floats(min_value=0, max_value=10**7, allow_nan=False, allow_infinity=False)

# Cc covers U+0000-U+001F and U+007F-U+009F, the control characters mirror.paths refuses.
_name_chars = st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/\\")
components = (
    st.text(_name_chars, min_size=1, max_size=20)
    .filter(lambda c: c not in (".", "..") and not c.startswith(TEMP_PREFIX))
    .filter(lambda c: len(c.encode()) <= MAX_COMPONENT_BYTES)
)
wire_paths = st.lists(components, min_size=1, max_size=6).map("/".join)
request_paths = st.one_of(st.just(""), wire_paths)

# What str.isprintable() accepts, less the characters a host may not have.
_host_chars = st.characters(
    blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"),
    blacklist_characters="/[]",
)
hosts = st.text(_host_chars, min_size=1, max_size=60)

sources = st.builds(
    SourceRequest,
    host=hosts,
    port=st.integers(min_value=1, max_value=65535),
    path=request_paths,
    delay=st.floats(min_value=0, max_value=MAX_DELAY, allow_nan=False),
)


@st.composite
def source_dones(draw: st.DrawFn) -> SourceDone:
    sizes = draw(st.lists(st.integers(min_value=0, max_value=MAX_COUNT // 20), max_size=20))
    stats = SizeStats()
    for size in sizes:
        stats.add(size)
    return SourceDone(
        index=draw(st.integers(min_value=0, max_value=MAX_SOURCES - 1)),
        ok=draw(st.booleans()),
        files=stats.count,
        dirs=draw(counts),
        bytes=stats.total,
        sum_sq=stats.sum_sq,
        skipped=draw(counts),
        failed=draw(counts),
        elapsed=draw(seconds),
        not_exported=draw(counts),
    )


events = st.one_of(
    st.builds(JobAccepted, st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E),
                                   min_size=1, max_size=128)),
    st.builds(Progress, counts, counts, counts, counts, st.booleans()),
    st.builds(
        SourceError,
        st.integers(min_value=0, max_value=MAX_SOURCES - 1),
        st.one_of(st.none(), st.text(max_size=300)),  # any text: hostile names are reported too
        st.text(max_size=1000),
    ),
    source_dones(),
    st.builds(Done, st.booleans()),
    st.builds(Refused, st.text(max_size=1000)),
)  # fmt: skip

_COMMANDS = [b"SOURCE", b"GO", b"JOB", b"PROGRESS", b"ERROR", b"SOURCE-DONE", b"DONE", b"REFUSED"]
_FIELD_BYTES = st.sampled_from(
    [b"0", b"1", b"-", b".", b"ok", b"failed", b"%", b"%2", b"%C3", b"%FF", b"1.5", b"-1",
     b"65536", b"\xff", b"", b"a/b", b"nan", b"9" * 70, b"%2E%2E", b"\r"]
)  # fmt: skip
# Lines made of real commands and tricky fields reach far deeper than uniform random bytes.
structured_lines = st.builds(
    lambda cmd, fields: b" ".join([cmd, *fields]),
    st.sampled_from(_COMMANDS),
    st.lists(st.one_of(_FIELD_BYTES, st.binary(max_size=12)), max_size=10),
)


class RoundTripTests(SynchronousTestCase):
    @fuzz
    @given(sources)
    def test_source(self, req: SourceRequest) -> None:
        line = encode_source(req)
        self.assertLessEqual(len(line) + 2, MAX_LINE)
        self.assertEqual(parse_client_line(line), req)
        self.assertEqual(parse_client_line(line + b"\r"), req)

    @fuzz
    @given(events)
    def test_event(self, event: object) -> None:
        line = encode_event(event)  # type: ignore[arg-type]
        self.assertLessEqual(len(line) + 2, MAX_LINE)
        self.assertNotIn(b"\n", line)
        self.assertEqual(parse_server_line(line), event)

    @fuzz
    @given(st.lists(st.integers(min_value=0, max_value=2**64), min_size=1, max_size=50))
    def test_variance_exact(self, sizes: list[int]) -> None:
        stats = SizeStats()
        for size in sizes:
            stats.add(size)
        n = len(sizes)
        mean = Fraction(sum(sizes), n)
        self.assertEqual(stats.exact_variance, sum((x - mean) ** 2 for x in sizes) / n)
        self.assertEqual(SizeStats.from_sums(stats.count, stats.total, stats.sum_sq), stats)


class RobustnessTests(SynchronousTestCase):
    def assert_only(self, error: type[Exception], call: object, *args: object) -> None:
        try:
            call(*args)  # type: ignore[operator]
        except error as e:
            self.assertNotIn("\n", str(e))

    @fuzz
    @given(st.one_of(st.binary(max_size=200), structured_lines))
    def test_client_lines(self, line: bytes) -> None:
        self.assert_only(ControlError, parse_client_line, line)

    @fuzz
    @given(st.one_of(st.binary(max_size=200), structured_lines))
    def test_server_lines(self, line: bytes) -> None:
        self.assert_only(ControlError, parse_server_line, line)

    @fuzz
    @given(
        st.lists(
            st.one_of(
                st.text(max_size=40),
                st.text(st.sampled_from(":[],./0123456789-hé%\x00\\ "), max_size=30),
            ),
            max_size=3,
        )
    )
    def test_specs(self, values: list[str]) -> None:
        self.assert_only(SpecError, parse_specs, values, lambda host, port: None)
