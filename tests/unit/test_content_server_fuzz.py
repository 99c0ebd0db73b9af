"""Property tests of the content server's frame handling, with a strict oracle.

Arbitrary byte streams and request sequences, cut at arbitrary points, fed to a
`ContentServerProtocol` on a transport that applies back-pressure at random: nothing ever
escapes ``dataReceived``; nothing is logged as an unexpected failure; the output is a clean
frame stream in which every answer is complete and true (a FETCH's bytes are the file's bytes
at that offset, its digest theirs), or an ERROR with a known code, or the connection is
aborted; nothing from outside the root is ever sent.

Also the regression tests of two bugs found under load: LISTs of the root running at once
shared one directory offset, and a graceful close against a peer that never reads.
"""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings, strategies as st
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import provider

from mirror import limits
from mirror.content_server.factory import ContentServerFactory, open_root
from mirror.content_server.fetch import BIG_CHUNK_SIZE
from mirror.content_server.listing import TreeWalker
from mirror.content_server.protocol import ContentServerProtocol, ContentSettings
from mirror.hashing import digest_of
from mirror.testing import BackPressureTransport, InlineThreads
from mirror.wire import frames

SECRET = b"SECRET-OUTSIDE-THE-ROOT"
FILES = {
    "a.txt": b"hello\n",
    "empty": b"",
    "sub/inner.txt": b"inner\n" * 10,
    # 1,536,000 bytes: streamed in several chunks (two of 1 MiB, or six of 256 KiB once more
    # than BIG_CHUNK_STREAMS streams share the connection).
    "big.bin": bytes(range(256)) * 6000,
}
PATHS = ["", ".", "/", "a.txt", "empty", "sub", "sub/inner.txt", "big.bin", "..", "../outside",
         "sub/../../outside/secret", "/etc/passwd", "link", "linkdir/secret", "fifo",
         "a.txt/x", "nope", "a\x00b", "sub//inner.txt", ".mirror-tmp-x", "x" * 5000]


def _make_tree() -> tuple[str, str]:
    """(root, outside) in a fresh temporary directory."""
    base = Path(tempfile.mkdtemp(prefix="cs-fuzz-"))
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(SECRET)
    root = base / "root"
    for name, data in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    os.symlink(outside / "secret", root / "link")
    os.symlink(outside, root / "linkdir")
    os.mkfifo(root / "fifo")
    return str(root), str(base)


def _frames_of(data: bytes) -> list[tuple[int, int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        assert len(data) - pos >= 9, "partial frame at the end of the output"
        (length,) = struct.unpack_from(">I", data, pos)
        assert 5 <= length <= len(data) - pos - 4, f"bad frame length {length}"
        opcode, rid = struct.unpack_from(">BI", data, pos + 4)
        out.append((opcode, rid, bytes(data[pos + 9 : pos + 4 + length])))
        pos += 4 + length
    return out


# -- strategies -----------------------------------------------------------------------------

_file = st.sampled_from(["a.txt", "empty", "sub/inner.txt", "big.bin"])
_path = st.one_of(_file.map(str.encode), st.sampled_from(PATHS).map(str.encode),
                  st.binary(max_size=40))
_list = st.tuples(st.just(frames.LIST), _path)
_offset = st.one_of(st.integers(0, 8), st.integers(0, 1_600_000),
                    st.sampled_from([0, 1, 262_143, 262_144, 1_048_576, 1_535_999, 1_536_000,
                                     1_536_001]),
                    st.sampled_from([2**63, 2**64 - 1]), st.integers(0, 2**64 - 1))
_length = st.one_of(st.just(frames.TO_END), st.integers(0, 1_600_000),
                    st.sampled_from([0, 1, 262_144, 1_048_577, 2**63]),
                    st.integers(0, 2**64 - 1))
_fetch = st.tuples(st.just(frames.FETCH), st.one_of(_file.map(str.encode), _path),
                   _offset, _length, st.sampled_from([0, 0, 0, 300, 2**32 - 1]))
_fetch_many = st.tuples(
    st.just(frames.FETCH_MANY),
    st.lists(st.tuples(st.one_of(_file.map(str.encode), _path),
                       st.sampled_from([0, 1, 6, 60, 665_600, 2**64 - 1])), min_size=1, max_size=6),
    st.sampled_from([0, 0, 0, 300]))
#: One step: a request, a clock advance or a drain of the transport (the client reads).
_step = st.one_of(
    _list, _fetch, _fetch, _fetch, _fetch_many, _fetch_many,
    st.tuples(st.just("advance"), st.sampled_from([0.1, 0.5, 2.0])),
    st.tuples(st.just("drain")),
)
#: The same, or a raw byte string (which usually breaks the framing).
_step_or_raw = st.one_of(_step, st.tuples(st.just("raw"), st.binary(min_size=1, max_size=64)))
_FUZZ = settings(deadline=None, max_examples=200,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class ContentServerFuzz(SynchronousTestCase):
    def setUp(self) -> None:
        self.root, base = _make_tree()
        self.addCleanup(_rmtree, base)
        self.root_fd = open_root(self.root)
        self.addCleanup(os.close, self.root_fd)
        self.failures: list[Any] = []

        @provider(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            if "log_failure" in event:
                self.failures.append(event["log_failure"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def connect(self, limit: int) -> tuple[Any, BackPressureTransport, MemoryReactorClock,
                                           ContentServerFactory]:
        clock = MemoryReactorClock()
        settings_ = ContentSettings(max_requests=4, max_delay=1.0, frame_timeout=5.0,
                                    idle_timeout=30.0, write_timeout=30.0)
        factory = ContentServerFactory(self.root_fd, InlineThreads(), settings_, clock=clock)
        transport = BackPressureTransport(limit)
        proto = factory.buildProtocol(transport.getPeer())
        proto.makeConnection(transport)
        return proto, transport, clock, factory

    @_FUZZ
    @given(steps=st.lists(_step, min_size=1, max_size=12), cut=st.integers(1, 50),
           limit=st.sampled_from([0, 100, 5000, 300_000]))
    def test_any_requests(self, steps: list[tuple[Any, ...]], cut: int, limit: int) -> None:
        """Well-framed requests of every kind: each answered completely and truly."""
        self.run_steps(steps, cut, limit)

    @_FUZZ
    @given(steps=st.lists(_step_or_raw, min_size=1, max_size=12), cut=st.integers(1, 50),
           limit=st.sampled_from([0, 100, 5000, 300_000]))
    def test_any_stream(self, steps: list[tuple[Any, ...]], cut: int, limit: int) -> None:
        """Requests mixed with garbage: clean answers up to the garbage, then an abort."""
        self.run_steps(steps, cut, limit)

    def run_steps(self, steps: list[tuple[Any, ...]], cut: int, limit: int) -> None:
        proto, transport, clock, factory = self.connect(limit)
        sent: dict[int, tuple[Any, ...]] = {}
        rid = 0
        wire = bytearray()  # requests are cut into pieces unrelated to frame boundaries

        def feed() -> None:
            while wire and not transport.disconnecting:
                if transport.reading_paused:
                    return  # a real transport delivers nothing while reading is paused
                piece = bytes(wire[:cut])
                del wire[:cut]
                proto.dataReceived(piece)  # must never raise

        try:
            for step in steps:
                kind = step[0]
                if kind == "advance":
                    clock.advance(step[1])
                elif kind == "drain":
                    transport.drain()
                elif kind == "raw":
                    wire += step[1]
                    sent.clear()  # framing is now unknown: later answers are not checked
                    rid = 10_000
                else:
                    rid += 1
                    if kind == frames.LIST:
                        wire += frames.frame(frames.LIST, rid, step[1])
                    elif kind == frames.FETCH_MANY:
                        _, wants, delay = step
                        wire += frames.frame(frames.FETCH_MANY, rid,
                                             frames.encode_fetch_many(delay, wants))
                    else:
                        _, path, offset, length, delay = step
                        wire += frames.frame(frames.FETCH, rid,
                                             struct.pack(">QQI", offset, length, delay) + path)
                    if rid < 10_000:
                        sent[rid] = step
                feed()
            # Let it all finish: drain until the server stops pausing, fire every timer.
            for i in range(200):
                transport.drain()
                feed()
                clock.advance(0.5)  # past max_delay after a few rounds
                # Not before every request has ended: a delayed FETCH parsed in the last
                # round still waits out its delay.
                if (i >= 3 and not transport.producer_paused and not wire
                        and (proto.is_idle() or transport.disconnecting)):
                    break
            transport.drain()
            output = bytes(transport.out)
        finally:
            proto.connectionLost()
            clock.advance(100)
        self.assertEqual(factory.limiter.total, 0)
        self.assertEqual(self.failures, [])
        self.assertNotIn(SECRET, output)
        event(f"aborted: {transport.aborted}; back-pressure: {transport.pauses > 0}")
        self._check_answers(_frames_of(output), sent, transport.aborted)

    def _check_answers(self, got: list[tuple[int, int, bytes]], sent: dict[int, Any],
                       aborted: bool) -> None:
        answers: dict[int, list[tuple[int, bytes]]] = {}
        for opcode, rid, payload in got:
            self.assertIn(opcode, frames.RESPONSE_OPCODES)
            answers.setdefault(rid, []).append((opcode, payload))
        for rid, answer in answers.items():
            last, payload = answer[-1]
            if last == frames.ERROR:
                code, _ = frames.decode_error(payload)
                self.assertIn(code, range(1, 7))
            if rid not in sent:
                continue
            request = sent[rid]
            # Nothing follows the end of an answer.
            ends = [i for i, (op, _) in enumerate(answer)
                    if op in (frames.ERROR, frames.LIST_END, frames.FILE_END)]
            self.assertLessEqual(len(ends), 1, answer)
            if ends:
                self.assertEqual(ends[0], len(answer) - 1)
            if request[0] == frames.FETCH and last == frames.FILE_END:
                self._check_fetch(request, answer)
                event("a FETCH answer checked byte for byte")
            if request[0] == frames.FETCH_MANY and last == frames.BUNDLE:
                self._check_bundle(request, answer)
                event("a FETCH_MANY answer checked byte for byte")
            if request[0] == frames.LIST and last == frames.LIST_END:
                for op, p in answer[:-1]:
                    self.assertEqual(op, frames.ENTRIES)
                    for entry in frames.decode_entries(p):
                        self.assertNotIn(entry.name.decode(), ("link", "linkdir", "fifo"))
        if not aborted:
            # Every request of a connection that was never dropped got its whole answer.
            for rid in sent:
                self.assertIn(rid, answers)
                if sent[rid][0] == frames.FETCH_MANY and answers[rid][-1][0] == frames.BUNDLE:
                    items = [i for _, p in answers[rid] for i in frames.decode_bundle(p)]
                    self.assertEqual(len(items), len(sent[rid][1]))
                    continue
                self.assertIn(answers[rid][-1][0],
                              (frames.ERROR, frames.LIST_END, frames.FILE_END))

    def _check_bundle(self, request: tuple[Any, ...], answer: list[tuple[int, bytes]]) -> None:
        """Items in order, each file whole, true, its listed size; never outside the root."""
        _, wants, _ = request
        self.assertEqual({op for op, _ in answer}, {frames.BUNDLE})
        items = []
        for _, payload in answer:
            self.assertLessEqual(len(payload) + 5, frames.MAX_BUNDLE_FRAME)
            items += frames.decode_bundle(payload)
        self.assertEqual([i.index for i in items], list(range(len(items))))
        self.assertLessEqual(len(items), len(wants))
        for item in items:
            path, size = wants[item.index]
            if item.error is not None:
                self.assertIn(item.code, range(1, 7))
                continue
            name = path.decode()
            self.assertIn(name, FILES)
            self.assertEqual((item.size, bytes(item.data)), (size, FILES[name]))
            self.assertEqual(item.digest, digest_of(FILES[name]))

    def _check_fetch(self, request: tuple[Any, ...], answer: list[tuple[int, bytes]]) -> None:
        _, path, offset, length, _ = request
        self.assertEqual(answer[0][0], frames.FILE)
        header = frames.decode_file(answer[0][1])
        body = b"".join(p for op, p in answer[1:-1] if op == frames.DATA)
        self.assertEqual([op for op, _ in answer[1:-1]], [frames.DATA] * (len(answer) - 2))
        self.assertEqual(header.size, len(body))
        self.assertEqual(digest_of(body), answer[-1][1])
        # The true bytes of a file inside the root.
        name = path.decode().lstrip("/")
        self.assertIn(name, FILES)
        content = FILES[name]
        self.assertEqual(header.file_size, len(content))
        self.assertEqual(body, content[offset : offset + length])


def _rmtree(base: str) -> None:
    for dirpath, dirnames, filenames in os.walk(base, topdown=False):
        for name in filenames + dirnames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p) or not os.path.isdir(p):
                os.unlink(p)
            else:
                os.rmdir(p)
    os.rmdir(base)


# -- regressions ----------------------------------------------------------------------------


class RootListingTests(SynchronousTestCase):
    def test_listing_the_root_does_not_share_the_roots_directory_offset(self) -> None:
        """LISTs of the root ran in several disk threads at once, each on a dup() of the root
        descriptor: one open file description, one directory offset, so each read only part
        of the root and files were silently missing (found by 200 concurrent clients)."""
        root, base = _make_tree()
        self.addCleanup(_rmtree, base)
        for i in range(50):
            Path(root, f"more{i:02d}").write_bytes(b"x")
        root_fd = open_root(root)
        self.addCleanup(os.close, root_fd)
        # Another reader of the root, half-way through (as a concurrent LIST would be).
        other = os.scandir(root_fd)
        self.addCleanup(other.close)
        for _ in range(20):
            next(other)
        walker = TreeWalker(root_fd, ())
        self.addCleanup(walker.close)
        names = []
        while (batch := walker.next_batch()) is not None:
            names += [e.name.decode() for e in frames.decode_entries(batch)]
        expected = {"a.txt", "empty", "sub", "sub/inner.txt", "big.bin"} | {
            f"more{i:02d}" for i in range(50)}
        self.assertEqual(set(names), expected)
        self.assertEqual(walker.skipped, 3)  # link, linkdir, fifo


class GracefulCloseTests(SynchronousTestCase):
    def test_close_escalates_to_abort_when_the_peer_never_reads(self) -> None:
        root, base = _make_tree()
        self.addCleanup(_rmtree, base)
        root_fd = open_root(root)
        self.addCleanup(os.close, root_fd)
        clock = MemoryReactorClock()
        factory = ContentServerFactory(root_fd, InlineThreads(), ContentSettings(), clock=clock)
        transport = BackPressureTransport(0)
        proto = factory.buildProtocol(transport.getPeer())
        assert isinstance(proto, ContentServerProtocol)
        proto.makeConnection(transport)
        proto.close("test")
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.aborted)
        clock.advance(limits.CLOSE_GRACE - 0.1)
        self.assertFalse(transport.aborted)  # the buffer may still drain
        clock.advance(0.2)
        self.assertTrue(transport.aborted)
        proto.connectionLost()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_close_that_completes_cancels_the_abort(self) -> None:
        root, base = _make_tree()
        self.addCleanup(_rmtree, base)
        root_fd = open_root(root)
        self.addCleanup(os.close, root_fd)
        clock = MemoryReactorClock()
        factory = ContentServerFactory(root_fd, InlineThreads(), ContentSettings(), clock=clock)
        transport = BackPressureTransport(0)
        proto = factory.buildProtocol(transport.getPeer())
        assert isinstance(proto, ContentServerProtocol)
        proto.makeConnection(transport)
        proto.close("test")
        proto.connectionLost()  # the buffer drained and the connection closed
        clock.advance(limits.CLOSE_GRACE + 1)
        self.assertFalse(transport.aborted)
        self.assertEqual(clock.getDelayedCalls(), [])


class PauseTests(SynchronousTestCase):
    def test_requests_are_not_read_while_the_client_does_not_read(self) -> None:
        root, base = _make_tree()
        self.addCleanup(_rmtree, base)
        root_fd = open_root(root)
        self.addCleanup(os.close, root_fd)
        clock = MemoryReactorClock()
        factory = ContentServerFactory(root_fd, InlineThreads(), ContentSettings(), clock=clock)
        transport = BackPressureTransport(1000)
        proto = factory.buildProtocol(transport.getPeer())
        proto.makeConnection(transport)
        # Ten requests in one read; the first answer fills the buffer.
        proto.dataReceived(b"".join(frames.frame(frames.FETCH, i, frames.encode_fetch("big.bin"))
                                    for i in range(1, 11)))
        self.assertTrue(transport.producer_paused and transport.reading_paused)
        before = len(transport.value())
        self.assertLess(before, BIG_CHUNK_SIZE + 64 * 1024)  # about one chunk, not ten files
        # Nothing more while the client does not read, however long (until write-timeout).
        clock.advance(1)
        self.assertEqual(len(transport.value()), before)
        # Once it reads, everything is answered in full.
        for _ in range(1000):
            transport.drain()
            if not transport.producer_paused:
                break
        self.assertFalse(transport.reading_paused)
        got = _frames_of(bytes(transport.out))
        ends = [rid for op, rid, _ in got if op == frames.FILE_END]
        self.assertEqual(sorted(ends), list(range(1, 11)))
        proto.connectionLost()
        clock.advance(100)
        self.assertEqual(clock.getDelayedCalls(), [])


