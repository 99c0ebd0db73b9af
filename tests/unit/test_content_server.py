"""The content server protocol on a StringTransport with a fake clock and inline disk work."""

from __future__ import annotations

import os
import random
import struct

from hypothesis import given, settings as hypothesis_settings, strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mirror.content_server.fetch import BIG_CHUNK_SIZE, CHUNK_SIZE
from mirror.content_server.protocol import BIG_CHUNK_STREAMS, ContentServerProtocol
from mirror.hashing import digest_of
from mirror.limits import CLOSE_GRACE
from mirror.testing import BackPressureTransport, StepThreads
from mirror.wire import frames
from tests.unit.helpers import (
    FrameLog,
    ServerRig,
    bundle_result,
    connect_server,
    fetch_result,
    list_result,
    make_factory,
    must_not_block,
    parse_frames,
)

BIG_SIZE = 3 * BIG_CHUNK_SIZE + 12345  # streamed in several chunks


def make_tree(base: str) -> tuple[str, str, dict[str, bytes]]:
    """root and outside dirs; returns (root, outside, contents of the regular files)."""
    root = os.path.join(base, "root")
    outside = os.path.join(base, "outside")
    os.makedirs(os.path.join(root, "docs", "sub"))
    os.makedirs(os.path.join(root, "empty"))
    os.makedirs(outside)
    rnd = random.Random(7)
    files = {
        "a.txt": b"hello\n",
        "big.bin": rnd.randbytes(BIG_SIZE),
        "docs/b.txt": b"bee\n",
        "docs/sub/c.txt": b"",
    }
    for name, data in files.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    os.chmod(os.path.join(root, "a.txt"), 0o640)
    os.utime(os.path.join(root, "a.txt"), ns=(1_600_000_000_123_456_789,) * 2)
    with open(os.path.join(outside, "secret"), "wb") as f:
        f.write(b"secret")
    os.symlink(os.path.join(outside, "secret"), os.path.join(root, "link"))
    os.symlink(outside, os.path.join(root, "linkdir"))
    os.symlink("../../outside", os.path.join(root, "docs", "up"))
    os.mkfifo(os.path.join(root, "fifo"))
    return root, outside, files


class ServerTestCase(SynchronousTestCase):
    settings: dict = {}

    def setUp(self) -> None:
        self.root, self.outside, self.files = make_tree(self.mktemp())
        self.factory = make_factory(self.root, **self.settings)
        self.addCleanup(os.close, self.factory.root_fd)
        self.rig = connect_server(self.factory)
        self.clock = self.rig.clock

    def answer(self) -> list[tuple[int, int, bytes]]:
        return self.rig.log.take()

    def list(self, path: str | bytes, request_id: int = 1):
        self.rig.list(request_id, path)
        return list_result(self.answer(), request_id)

    def fetch(self, path: str | bytes, request_id: int = 1, **kw):
        self.rig.fetch(request_id, path, **kw)
        return fetch_result(self.answer(), request_id)

    def assert_error(self, result, code: int, *words: str) -> None:
        self.assertIsNotNone(result.error, "no ERROR frame")
        got_code, message = result.error
        self.assertEqual(got_code, code, message)
        for word in words:
            self.assertIn(word, message)
        self.assertFalse(self.rig.aborted)

    def path_of(self, name: str) -> str:
        return os.path.join(self.root, name)


class Listing(ServerTestCase):
    def test_root(self) -> None:
        r = self.list("")
        self.assertIsNone(r.error)
        self.assertEqual(r.names, ["a.txt", "big.bin", "docs", "docs/b.txt", "docs/sub",
                                   "docs/sub/c.txt", "empty"])
        # fifo, link, linkdir and docs/up are skipped and counted, never listed.
        self.assertEqual(r.end, (7, 4))

    def test_root_is_the_empty_path_only(self) -> None:
        # On the wire the whole export is "" (doc/protocol.md); "." and "/" are what users
        # type, mapped by mirror-init, and refused here rather than guessed at.
        self.assertEqual(self.list("", 1).end, (7, 4))
        self.assert_error(self.list(".", 2), frames.E_NOT_ALLOWED)
        self.assert_error(self.list("/", 3), frames.E_NOT_ALLOWED, "absolute")

    def test_entries_metadata(self) -> None:
        r = self.list("")
        by_name = {e.name.decode(): e for e in r.entries}
        a = by_name["a.txt"]
        st = os.stat(self.path_of("a.txt"))
        self.assertEqual((a.kind, a.mode, a.size, a.mtime_ns),
                         (frames.KIND_FILE, 0o640, 6, 1_600_000_000_123_456_789))
        self.assertEqual(a.mtime_ns, st.st_mtime_ns)
        docs = by_name["docs"]
        self.assertEqual((docs.kind, docs.size), (frames.KIND_DIR, 0))
        self.assertEqual(docs.mode, os.stat(self.path_of("docs")).st_mode & 0o7777)
        self.assertEqual(by_name["big.bin"].size, BIG_SIZE)

    def test_subdirectory(self) -> None:
        r = self.list("docs")
        self.assertEqual(r.names, ["docs", "docs/b.txt", "docs/sub", "docs/sub/c.txt"])
        self.assertEqual(r.end, (4, 1))  # docs/up

    def test_file(self) -> None:
        r = self.list("docs/b.txt")
        self.assertEqual(r.names, ["docs/b.txt"])
        self.assertEqual(r.entries[0].size, 4)
        self.assertEqual(r.end, (1, 0))

    def test_order_directory_before_contents_sorted(self) -> None:
        for name in ("z", "m/z", "m/a", "A", "m0", "m/k/x"):
            path = self.path_of("docs/" + name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w"):
                pass
        names = self.list("docs").names
        self.assertEqual(names, ["docs", "docs/A", "docs/b.txt", "docs/m", "docs/m/a",
                                 "docs/m/k", "docs/m/k/x", "docs/m/z", "docs/m0", "docs/sub",
                                 "docs/sub/c.txt", "docs/z"])

    def test_unrepresentable_names_skipped(self) -> None:
        for name in (b"new\nline", b"bad\xffutf8", b".mirror-tmp-abc", b"back\\slash"):
            with open(os.path.join(self.root.encode(), b"empty", name), "w"):
                pass
        r = self.list("empty")
        self.assertEqual(r.names, ["empty"])
        self.assertEqual(r.end, (1, 4))

    def test_many_entries_in_several_frames(self) -> None:
        many = self.path_of("many")
        os.mkdir(many)
        for i in range(3000):
            with open(os.path.join(many, f"file-with-a-longish-name-{i:05d}"), "w"):
                pass
        self.rig.list(1, "many")
        got = self.answer()
        entries_frames = [f for f in got if f[0] == frames.ENTRIES]
        self.assertGreater(len(entries_frames), 1)
        for f in entries_frames:
            self.assertLessEqual(5 + len(f[2]), 256 * 1024)  # the client's frame limit
        r = list_result(got, 1)
        self.assertEqual(len(r.names), 3001)
        self.assertEqual(r.names[1:], sorted(r.names[1:]))

    def test_many_entries_wait_for_a_reader(self) -> None:
        many = self.path_of("many")
        os.mkdir(many)
        for i in range(3000):
            with open(os.path.join(many, f"file-with-a-longish-name-{i:05d}"), "w"):
                pass
        self.rig.proto.pauseProducing()
        self.rig.list(1, "many")
        self.assertEqual(self.answer(), [])  # nothing written while the client is not reading
        self.rig.proto.resumeProducing()
        self.assertEqual(len(list_result(self.answer(), 1).names), 3001)


class ListCursor(ServerTestCase):
    """LIST with a cursor resumes after it (doc/protocol.md); a bad cursor is refused."""

    def list_after(self, path: str, cursor: bytes, request_id: int = 1):
        self.rig.list(request_id, path.encode() + b"\0" + cursor)
        return list_result(self.answer(), request_id)

    def test_resume_after_each_entry(self) -> None:
        names = self.list("").names
        for i, name in enumerate(names):
            r = self.list_after("", name.encode())
            self.assertIsNone(r.error)
            self.assertEqual(r.names, names[i + 1 :], name)
            self.assertEqual(r.end[0], len(names) - i - 1)

    def test_resume_in_a_subdirectory(self) -> None:
        self.assertEqual(self.list_after("docs", b"docs").names,
                         ["docs/b.txt", "docs/sub", "docs/sub/c.txt"])
        self.assertEqual(self.list_after("docs", b"docs/b.txt").names,
                         ["docs/sub", "docs/sub/c.txt"])
        self.assertEqual(self.list_after("docs/b.txt", b"docs/b.txt").names, [])

    def test_cursor_deleted_since(self) -> None:
        os.unlink(self.path_of("docs/b.txt"))
        self.assertEqual(self.list_after("", b"docs/b.txt").names,
                         ["docs/sub", "docs/sub/c.txt", "empty"])
        self.assertEqual(self.list_after("", b"docs/gone/deeper").names,
                         ["docs/sub", "docs/sub/c.txt", "empty"])

    def test_bad_cursors(self) -> None:
        for i, (path, cursor) in enumerate([
            ("", b""), ("", b"../x"), ("", b"/abs"), ("", b"a//b"), ("", b"a\0b"),
            ("", b"bad\xff"), ("docs", b"empty"), ("docs", b"doc"), ("docs/sub", b"docs"),
        ]):
            r = self.list_after(path, cursor, request_id=i + 1)
            self.assert_error(r, frames.E_BAD_REQUEST, "cursor")


class ListCaps(ServerTestCase):
    """Walkers at once are capped per connection and in total; more wait their turn."""

    settings = {"max_lists_per_connection": 1, "max_lists": 2}

    def test_caps(self) -> None:
        threads = StepThreads()
        self.factory.threads = threads
        self.rig.list(1, "")
        self.rig.list(2, "docs")
        threads.step()  # the first walker opens; the second LIST waits for it
        self.assertEqual(len(threads.queue), 1)
        other = connect_server(self.factory)
        other.list(1, "docs")
        third = connect_server(self.factory)
        third.list(1, "docs")
        self.assertEqual(self.factory.lists, 2)
        self.assertEqual(len(threads.queue), 2)  # the third LIST waits, holding no walker
        threads.run_all()
        got = self.answer()
        self.assertEqual(list_result(got, 1).end, (7, 4))
        self.assertEqual(list_result(got, 2).end, (4, 1))
        self.assertEqual(list_result(other.log.take(), 1).end, (4, 1))
        self.assertEqual(list_result(third.log.take(), 1).end, (4, 1))
        self.assertEqual(self.factory.lists, 0)

    def test_waiting_list_dropped_with_the_connection(self) -> None:
        threads = StepThreads()
        self.factory.threads = threads
        self.rig.list(1, "")
        self.rig.list(2, "docs")
        other = connect_server(self.factory)
        other.list(1, "docs")
        self.rig.proto.connectionLost()
        threads.run_all()
        self.assertEqual(self.rig.proto._list_slots.waiting, [])
        self.assertEqual(list_result(other.log.take(), 1).end, (4, 1))
        self.assertEqual(self.factory.lists, 0)


class ListRefusals(ServerTestCase):
    def test_dot_dot(self) -> None:
        self.assert_error(self.list(".."), frames.E_NOT_ALLOWED, "'..'", "path component")

    def test_dot_dot_inside(self) -> None:
        self.assert_error(self.list("docs/../.."), frames.E_NOT_ALLOWED, "docs/../..")

    def test_double_slash_absolute(self) -> None:
        self.assert_error(self.list("//etc"), frames.E_NOT_ALLOWED, "//etc", "absolute")

    def test_symlink_final(self) -> None:
        self.assert_error(self.list("link"), frames.E_NOT_ALLOWED, "link")

    def test_symlink_to_directory_final(self) -> None:
        self.assert_error(self.list("linkdir"), frames.E_NOT_ALLOWED, "linkdir")

    def test_symlink_parent(self) -> None:
        self.assert_error(self.list("linkdir/secret"), frames.E_NOT_ALLOWED, "linkdir/secret")

    def test_relative_symlink_parent(self) -> None:
        self.assert_error(self.list("docs/up/secret"), frames.E_NOT_ALLOWED, "docs/up/secret")

    def test_fifo(self) -> None:
        with must_not_block():
            r = self.list("fifo")
        self.assert_error(r, frames.E_NOT_ALLOWED, "fifo")

    def test_missing(self) -> None:
        self.assert_error(self.list("no/such"), frames.E_NOT_FOUND, "no/such", "no such file")

    def test_control_characters(self) -> None:
        r = self.list("a\nb")
        self.assert_error(r, frames.E_NOT_ALLOWED, "control character")
        self.assertNotIn("\n", r.error[1])

    def test_invalid_utf8(self) -> None:
        self.assert_error(self.list(b"\xff\xfe"), frames.E_NOT_ALLOWED, "UTF-8")

    def test_refused_name_shown_by_the_one_rule(self) -> None:
        # The ERROR frame itself (not as decoded by a client) shows the name escaped:
        # no raw ESC, bad UTF-8 as \xNN, as mirror.text.printable says.
        self.rig.fetch(1, b"a\x1b[2J\xff\xe2\x80\xae")
        [(opcode, request_id, payload)] = self.answer()
        self.assertEqual((opcode, request_id), (frames.ERROR, 1))
        self.assertEqual(payload[2:], b"a\\x1b[2J\\xff\\u202e: name is not valid UTF-8")

    def test_reserved_prefix(self) -> None:
        self.assert_error(self.list(".mirror-tmp-x"), frames.E_NOT_ALLOWED, "reserved prefix")

    def test_connection_goes_on_after_an_error(self) -> None:
        self.assert_error(self.list("..", 1), frames.E_NOT_ALLOWED)
        self.assertEqual(self.list("docs/b.txt", 2).names, ["docs/b.txt"])


class Fetching(ServerTestCase):
    def check_whole(self, r, name: str) -> None:
        data = self.files[name]
        st = os.stat(self.path_of(name))
        self.assertIsNone(r.error)
        self.assertEqual(r.header, frames.FileHeader(len(data), len(data), st.st_mtime_ns,
                                                     st.st_mode & 0o7777))
        self.assertEqual(r.data, data)
        self.assertEqual(r.digest, digest_of(data))

    def test_small(self) -> None:
        self.check_whole(self.fetch("a.txt"), "a.txt")

    def test_empty(self) -> None:
        self.check_whole(self.fetch("docs/sub/c.txt"), "docs/sub/c.txt")

    def test_large(self) -> None:
        r = self.fetch("big.bin")
        self.check_whole(r, "big.bin")
        self.assertGreaterEqual(r.data_frames, 4)

    def test_large_frames_fit_the_clients_limit(self) -> None:
        self.rig.fetch(1, "big.bin")
        for opcode, _, payload in self.answer():
            if opcode == frames.DATA:
                self.assertLessEqual(len(payload), 4 * 1024 * 1024)

    def test_range(self) -> None:
        data = self.files["big.bin"]
        r = self.fetch("big.bin", offset=1000, length=5000)
        self.assertEqual(r.header.size, 5000)
        self.assertEqual(r.header.file_size, BIG_SIZE)
        self.assertEqual(r.data, data[1000:6000])
        self.assertEqual(r.digest, digest_of(data[1000:6000]))

    def test_large_range(self) -> None:
        data = self.files["big.bin"]
        r = self.fetch("big.bin", offset=7, length=2 * CHUNK_SIZE + 3)
        self.assertEqual(r.data, data[7 : 7 + 2 * CHUNK_SIZE + 3])
        self.assertEqual(r.digest, digest_of(r.data))

    def test_range_to_the_end(self) -> None:
        data = self.files["big.bin"]
        r = self.fetch("big.bin", offset=BIG_SIZE - 10)
        self.assertEqual(r.data, data[-10:])
        self.assertEqual(r.header.size, 10)

    def test_range_longer_than_the_file(self) -> None:
        r = self.fetch("a.txt", offset=2, length=1000)
        self.assertEqual(r.data, b"llo\n")
        self.assertEqual(r.header.size, 4)

    def test_range_at_the_end(self) -> None:
        r = self.fetch("a.txt", offset=6)
        self.assertEqual((r.header.size, r.data, r.digest),
                         (0, b"", digest_of(b"")))

    def test_offset_beyond_the_end(self) -> None:
        self.assert_error(self.fetch("a.txt", offset=7), frames.E_BAD_REQUEST, "a.txt",
                          "beyond the end")

    def test_huge_offset(self) -> None:
        self.assert_error(self.fetch("a.txt", offset=2**64 - 1), frames.E_BAD_REQUEST, "a.txt")

    def test_stream_waits_while_the_client_is_not_reading(self) -> None:
        transport = BackPressureTransport(limit=BIG_CHUNK_SIZE)
        rig = self.fresh_connection(transport)
        rig.fetch(1, "big.bin")
        first = transport.value()
        self.assertTrue(transport.producer_paused)
        self.assertLessEqual(len(first), BIG_CHUNK_SIZE + 1024)  # FILE and one chunk at most
        # Time passing and more requests arriving do not make it write past the pause.
        self.clock.advance(1)
        rig.list(2, "a.txt")
        self.assertEqual(transport.value(), first)
        received = b""
        for more in transport.rounds():
            self.assertLessEqual(len(more), BIG_CHUNK_SIZE + 1024)  # one chunk per resume
            received += more
        self.assertGreaterEqual(transport.pauses, 3)
        got = parse_frames(received)
        self.check_whole(fetch_result(got, 1), "big.bin")
        self.assertEqual(list_result(got, 2).names, ["a.txt"])

    def test_big_chunks_only_while_few_streams_share_the_connection(self) -> None:
        # A client stalling many streams pins about one chunk per stream: the big chunk
        # (fewer thread hops per byte) only for the first few streams of a connection.
        threads = StepThreads()
        self.factory.threads = threads
        rig = self.fresh_connection(StringTransport())
        streams = BIG_CHUNK_STREAMS + 2
        for request_id in range(1, streams + 1):
            rig.fetch(request_id, "big.bin")
        threads.run_all()
        got = rig.log.take()
        first_data: dict[int, int] = {}
        for opcode, request_id, payload in got:
            if opcode == frames.DATA:
                first_data.setdefault(request_id, len(payload))
        self.assertEqual(first_data, {
            i: BIG_CHUNK_SIZE if i <= BIG_CHUNK_STREAMS else CHUNK_SIZE
            for i in range(1, streams + 1)})
        for request_id in range(1, streams + 1):
            self.check_whole(fetch_result(got, request_id), "big.bin")

    def test_a_big_chunk_goes_out_in_one_send(self) -> None:
        # A TCP transport sends SEND_LIMIT (128 KiB) per send() call and reactor turn, and
        # pauses its producer above bufferSize: both are raised to a big chunk or more.
        transport = StringTransport()
        transport.SEND_LIMIT = 128 * 1024  # type: ignore[attr-defined]
        transport.bufferSize = 64 * 1024  # type: ignore[attr-defined]
        self.fresh_connection(transport)
        self.assertGreaterEqual(transport.SEND_LIMIT, BIG_CHUNK_SIZE)  # type: ignore[attr-defined]
        self.assertGreaterEqual(transport.bufferSize, BIG_CHUNK_SIZE)  # type: ignore[attr-defined]

    def fresh_connection(self, transport: StringTransport) -> ServerRig:
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 99))
        assert isinstance(proto, ContentServerProtocol)
        proto.makeConnection(transport)
        return ServerRig(self.factory, proto, transport, self.clock, FrameLog(transport))

    def test_interleaved_requests(self) -> None:
        # Disk work that completes only when the test says so: all four requests are in
        # flight at once, and their answers interleave frame by frame.
        threads = StepThreads()
        self.factory.threads = threads
        rig = self.fresh_connection(StringTransport())
        rig.fetch(1, "big.bin")
        rig.fetch(2, "big.bin", offset=100)
        rig.list(3, "docs")
        rig.fetch(4, "a.txt")
        self.assertEqual(rig.transport.value(), b"")
        threads.run_all()
        got = rig.log.take()
        self.check_whole(fetch_result(got, 1), "big.bin")
        self.assertEqual(fetch_result(got, 2).data, self.files["big.bin"][100:])
        self.assertEqual(list_result(got, 3).names[0], "docs")
        self.check_whole(fetch_result(got, 4), "a.txt")
        ids = [rid for _, rid, _ in got]
        self.assertNotEqual(ids, sorted(ids), "responses did not interleave")


class FetchMany(ServerTestCase):
    """FETCH_MANY: many small files in one request, answered in BUNDLE frames built in one
    thread call each; each file checked as a FETCH is, and failing alone."""

    settings = {"max_delay": 10.0}

    def listed(self, name: str) -> tuple[str, int]:
        return name, len(self.files[name])

    def check_item(self, item: frames.BundleItem, name: str) -> None:
        data = self.files[name]
        st = os.stat(self.path_of(name))
        self.assertEqual(item.header, frames.FileHeader(len(data), len(data), st.st_mtime_ns,
                                                        st.st_mode & 0o7777))
        self.assertEqual(bytes(item.data), data)
        self.assertEqual(item.digest, digest_of(data))

    def fetch_many(self, wants, request_id: int = 1, **kw):
        self.rig.fetch_many(request_id, wants, **kw)
        return bundle_result(self.answer(), request_id)

    def assert_item_error(self, item: frames.BundleItem, code: int, *words: str) -> None:
        self.assertIsNone(item.header)
        self.assertEqual(item.code, code, item.error)
        for word in words:
            self.assertIn(word, item.error)

    def test_files_in_one_frame_and_one_thread_call(self) -> None:
        threads = StepThreads()
        self.factory.threads = threads
        self.rig.fetch_many(1, [self.listed("a.txt"), self.listed("docs/b.txt"),
                                self.listed("docs/sub/c.txt"), self.listed("a.txt")])
        self.assertEqual(threads.run_all(), 1)
        r = bundle_result(self.answer(), 1)
        self.assertEqual(r.frames, 1)
        for item, name in zip(r.items, ["a.txt", "docs/b.txt", "docs/sub/c.txt", "a.txt"],
                              strict=True):
            self.check_item(item, name)
        self.assertFalse(self.rig.aborted)
        self.assertTrue(self.rig.proto.is_idle())

    def test_each_file_fails_alone(self) -> None:
        r = self.fetch_many([
            ("missing", 1), ("link", 6), ("fifo", 0), ("docs", 0), ("../x", 1),
            ("a.txt", 6), ("bad\x01name", 1), ("docs/b.txt", 999), ("big.bin", BIG_SIZE),
            ("docs/up/secret", 6), (".", 0),
        ])
        e = frames
        self.assert_item_error(r.items[0], e.E_NOT_FOUND, "missing", "no such file")
        self.assert_item_error(r.items[1], e.E_NOT_ALLOWED, "link")
        self.assert_item_error(r.items[2], e.E_NOT_ALLOWED, "fifo")
        self.assertIsNone(r.items[3].header)  # a directory
        self.assert_item_error(r.items[4], e.E_NOT_ALLOWED, "../x")
        self.check_item(r.items[5], "a.txt")
        self.assert_item_error(r.items[6], e.E_NOT_ALLOWED, "bad\\x01name")
        self.assert_item_error(r.items[7], e.E_CHANGED, "docs/b.txt",
                               "listed with 999 bytes, now 4")
        self.assert_item_error(r.items[8], e.E_BAD_REQUEST, "too large for FETCH_MANY")
        self.assert_item_error(r.items[9], e.E_NOT_ALLOWED, "docs/up")
        self.assert_item_error(r.items[10], e.E_NOT_ALLOWED)
        self.assertEqual(len(r.items), 11)
        self.assertFalse(self.rig.aborted)

    def test_grown_since_listed(self) -> None:
        """More bytes than listed are never sent, even within the bundle limit."""
        r = self.fetch_many([("a.txt", 2)])
        self.assert_item_error(r.items[0], frames.E_CHANGED, "listed with 2 bytes, now 6")

    def test_shrunk_since_listed(self) -> None:
        r = self.fetch_many([("a.txt", 10)])
        self.assert_item_error(r.items[0], frames.E_CHANGED, "listed with 10 bytes, now 6")

    def test_grown_past_the_bundle_limit(self) -> None:
        with open(self.path_of("a.txt"), "wb") as f:
            f.write(b"x" * (frames.BUNDLE_FILE_MAX + 1))
        r = self.fetch_many([("a.txt", 6)])
        self.assert_item_error(r.items[0], frames.E_CHANGED,
                               f"now {frames.BUNDLE_FILE_MAX + 1}")

    def test_frames_stay_within_the_limit(self) -> None:
        os.makedirs(self.path_of("many"))
        wants = []
        for i in range(12):
            name = f"many/f{i}"
            self.files[name] = bytes([i]) * frames.BUNDLE_FILE_MAX
            with open(self.path_of(name), "wb") as f:
                f.write(self.files[name])
            wants.append(self.listed(name))
        r = self.fetch_many(wants)  # bundle_result checks each frame's size
        self.assertGreaterEqual(r.frames, 3)
        for item, (name, _) in zip(r.items, wants, strict=True):
            self.check_item(item, name)

    def test_malformed_request(self) -> None:
        self.rig.send(frames.FETCH_MANY, 1, struct.pack(">IH", 0, 2) + b"\x00" * 3)
        r = bundle_result(self.answer(), 1)
        self.assertEqual(r.error[0], frames.E_BAD_REQUEST)
        self.assertIn("truncated", r.error[1])
        self.assertFalse(self.rig.aborted)
        self.assertEqual(self.fetch_many([self.listed("a.txt")], request_id=2).items[0].code, 0)

    def test_empty_request(self) -> None:
        self.rig.send(frames.FETCH_MANY, 1, struct.pack(">IH", 0, 0))
        self.assertEqual(bundle_result(self.answer(), 1).error[0], frames.E_BAD_REQUEST)

    def test_request_over_the_frame_limit(self) -> None:
        wants = [("a" * 4000, 1), ("b" * 4000, 1), ("c" * 200, 1)]
        self.rig.fetch_many(1, wants)
        self.assertTrue(self.rig.aborted)
        self.assertEqual(self.answer(), [])

    def test_delay_before_each_file(self) -> None:
        self.rig.fetch_many(1, [self.listed("a.txt"), self.listed("docs/b.txt")],
                            delay_ms=2000)
        self.clock.advance(1.999)
        self.assertEqual(self.answer(), [])
        self.clock.advance(0.001)
        first = bundle_result(self.answer(), 1)
        self.assertEqual((first.frames, len(first.items)), (1, 1))
        self.check_item(first.items[0], "a.txt")
        self.clock.advance(1.999)
        self.assertEqual(self.answer(), [])
        self.clock.advance(0.001)
        second = self.answer()
        [item] = frames.decode_bundle(second[0][2])
        self.assertEqual(item.index, 1)
        self.assertTrue(self.rig.proto.is_idle())

    def test_delay_capped_by_max_delay(self) -> None:
        self.rig.fetch_many(1, [self.listed("a.txt")], delay_ms=2**32 - 1)
        self.clock.advance(9.9)
        self.assertEqual(self.answer(), [])
        self.clock.advance(0.1)
        self.check_item(bundle_result(self.answer(), 1).items[0], "a.txt")

    def test_delayed_bundle_dropped_with_the_connection(self) -> None:
        self.rig.fetch_many(1, [self.listed("a.txt")] * 3, delay_ms=1000)
        self.clock.advance(1)
        self.answer()
        self.rig.proto.connectionLost()
        self.clock.advance(5)
        self.assertEqual(self.answer(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connection_lost_during_the_thread_call(self) -> None:
        threads = StepThreads()
        self.factory.threads = threads
        self.rig.fetch_many(1, [self.listed("a.txt")])
        self.rig.proto.connectionLost()
        threads.run_all()
        self.assertEqual(self.answer(), [])

    def test_next_frame_waits_for_the_client_to_read(self) -> None:
        os.makedirs(self.path_of("many"))
        wants = []
        for i in range(8):
            name = f"many/f{i}"
            self.files[name] = bytes([i]) * frames.BUNDLE_FILE_MAX
            with open(self.path_of(name), "wb") as f:
                f.write(self.files[name])
            wants.append(self.listed(name))
        transport = BackPressureTransport(limit=1024)
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 99))
        assert isinstance(proto, ContentServerProtocol)
        proto.makeConnection(transport)
        proto.dataReceived(frames.frame(frames.FETCH_MANY, 1, frames.encode_fetch_many(
            0, [(n.encode(), size) for n, size in wants])))
        first = transport.value()
        self.assertTrue(transport.producer_paused)
        self.assertLessEqual(len(first), frames.MAX_BUNDLE_FRAME + 4)  # one frame at most
        # The client that reads nothing is dropped after --write-timeout, bundle or not.
        self.clock.advance(proto.settings.write_timeout)
        self.assertTrue(transport.disconnected)

    def test_counts_as_one_request(self) -> None:
        threads = StepThreads()
        self.factory.threads = threads
        self.rig.fetch_many(1, [self.listed("a.txt")] * 70)  # more files than --max-requests
        self.assertEqual(len(self.rig.proto._requests), 1)
        threads.run_all()
        self.assertEqual(len(bundle_result(self.answer(), 1).items), 70)


class FetchRefusals(ServerTestCase):
    def test_dot_dot(self) -> None:
        self.assert_error(self.fetch("../outside/secret"), frames.E_NOT_ALLOWED,
                          "../outside/secret", "'..'")

    def test_symlink_final(self) -> None:
        self.assert_error(self.fetch("link"), frames.E_NOT_ALLOWED, "link", "symbolic link")

    def test_symlink_parent(self) -> None:
        self.assert_error(self.fetch("linkdir/secret"), frames.E_NOT_ALLOWED, "linkdir/secret")

    def test_relative_symlink_parent(self) -> None:
        self.assert_error(self.fetch("docs/up/secret"), frames.E_NOT_ALLOWED, "docs/up/secret")

    def test_fifo(self) -> None:
        with must_not_block():
            r = self.fetch("fifo")
        self.assert_error(r, frames.E_NOT_ALLOWED, "fifo", "not a regular file")

    def test_directory(self) -> None:
        r = self.fetch("docs")
        self.assertIsNotNone(r.error)
        self.assertIn(r.error[0], (frames.E_NOT_ALLOWED, frames.E_BAD_REQUEST))
        self.assertIn("docs", r.error[1])

    def test_root(self) -> None:
        self.assert_error(self.fetch(""), frames.E_BAD_REQUEST, "directory")

    def test_missing(self) -> None:
        self.assert_error(self.fetch("nope.txt"), frames.E_NOT_FOUND, "nope.txt")

    def test_file_as_a_parent(self) -> None:
        r = self.fetch("a.txt/x")
        self.assertIsNotNone(r.error)
        self.assertIn("a.txt", r.error[1])

    def test_payload_too_short(self) -> None:
        self.rig.send(frames.FETCH, 1, b"\x00" * 10)
        self.assert_error(fetch_result(self.answer(), 1), frames.E_BAD_REQUEST, "too short")

    def test_device(self) -> None:
        import stat as stat_mod
        try:
            os.mknod(self.path_of("null"), stat_mod.S_IFCHR | 0o666, os.makedev(1, 3))
        except OSError as e:
            raise self.skipTest(f"cannot make a device node: {e}") from None
        with must_not_block():
            r = self.fetch("null")
        self.assertIsNotNone(r.error)
        self.assertIn(r.error[0], (frames.E_NOT_ALLOWED,))
        self.assertIsNone(r.header)


class ChangedWhileSent(ServerTestCase):
    """The file changes after the first chunk went out (the client is slow to read)."""

    def start_paused_fetch(self) -> None:
        self.transport = BackPressureTransport(limit=BIG_CHUNK_SIZE)
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.3", 1))
        assert isinstance(proto, ContentServerProtocol)
        proto.makeConnection(self.transport)
        self.rig = ServerRig(self.factory, proto, self.transport, self.clock,
                             FrameLog(self.transport))
        self.rig.fetch(1, "big.bin")
        self.assertTrue(self.transport.producer_paused)
        self.received = self.transport.value()
        self.transport.clear()

    def finish(self):
        self.received += self.transport.drain_all()
        return fetch_result(parse_frames(self.received), 1)

    def test_truncated(self) -> None:
        self.start_paused_fetch()
        os.truncate(self.path_of("big.bin"), BIG_CHUNK_SIZE + 100)
        r = self.finish()
        self.assert_error(r, frames.E_CHANGED, "big.bin", "truncated")
        self.assertIsNone(r.digest)
        self.assertLess(len(r.data), BIG_SIZE)

    def test_rewritten_same_size(self) -> None:
        self.start_paused_fetch()
        with open(self.path_of("big.bin"), "r+b") as f:
            f.seek(BIG_SIZE - 5)
            f.write(b"XXXXX")
        st = os.stat(self.path_of("big.bin"))
        os.utime(self.path_of("big.bin"), ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        r = self.finish()
        self.assert_error(r, frames.E_CHANGED, "big.bin", "changed")
        self.assertIsNone(r.digest)

    def test_grown(self) -> None:
        self.start_paused_fetch()
        with open(self.path_of("big.bin"), "ab") as f:
            f.write(b"more")
        r = self.finish()
        self.assert_error(r, frames.E_CHANGED, "big.bin")
        self.assertIsNone(r.digest)

    def test_other_requests_unaffected(self) -> None:
        self.start_paused_fetch()
        os.truncate(self.path_of("big.bin"), 10)
        self.rig.fetch(2, "a.txt")
        self.assertEqual(self.finish().error[0], frames.E_CHANGED)
        self.assertEqual(fetch_result(parse_frames(self.received), 2).data, b"hello\n")
        self.assertFalse(self.rig.aborted)


class Delays(ServerTestCase):
    settings = {"max_delay": 10.0}

    def test_nothing_before_the_delay(self) -> None:
        self.rig.fetch(1, "a.txt", delay_ms=2000)
        self.assertEqual(self.answer(), [])
        self.clock.advance(1.999)
        self.assertEqual(self.answer(), [])
        self.clock.advance(0.001)
        self.assertEqual(fetch_result(self.answer(), 1).data, b"hello\n")

    def test_delay_does_not_hold_up_other_requests(self) -> None:
        self.rig.fetch(1, "a.txt", delay_ms=5000)
        self.rig.fetch(2, "docs/b.txt")
        self.rig.list(3, "docs/sub")
        got = self.answer()
        self.assertEqual({rid for _, rid, _ in got}, {2, 3})
        self.assertEqual(fetch_result(got, 2).data, b"bee\n")
        self.clock.advance(5)
        self.assertEqual(fetch_result(self.answer(), 1).data, b"hello\n")

    def test_delay_capped_by_max_delay(self) -> None:
        self.rig.fetch(1, "a.txt", delay_ms=2**32 - 1)
        self.clock.advance(9.9)
        self.assertEqual(self.answer(), [])
        self.clock.advance(0.1)
        self.assertEqual(fetch_result(self.answer(), 1).data, b"hello\n")

    def test_delayed_request_dropped_with_the_connection(self) -> None:
        self.rig.fetch(1, "a.txt", delay_ms=1000)
        self.rig.proto.connectionLost()
        self.clock.advance(2)
        self.assertEqual(self.answer(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RequestLimits(ServerTestCase):
    settings = {"max_requests": 2, "max_delay": 10.0}

    def test_busy(self) -> None:
        self.rig.fetch(1, "a.txt", delay_ms=1000)
        self.rig.fetch(2, "a.txt", delay_ms=1000)
        self.rig.fetch(3, "a.txt")
        r = fetch_result(self.answer(), 3)
        self.assert_error(r, frames.E_BUSY, "more than 2 requests")
        self.clock.advance(1)
        got = self.answer()
        self.assertEqual(fetch_result(got, 1).data, b"hello\n")
        self.assertEqual(fetch_result(got, 2).data, b"hello\n")
        # Room again.
        self.assertEqual(self.fetch("a.txt", request_id=3).data, b"hello\n")

    def test_duplicate_request_id(self) -> None:
        self.rig.fetch(1, "a.txt", delay_ms=1000)
        self.rig.fetch(1, "docs/b.txt")
        self.assertTrue(self.rig.aborted)
        self.assertEqual(self.answer(), [])

    def test_finished_request_id_may_be_reused(self) -> None:
        self.assertEqual(self.fetch("a.txt", request_id=1).data, b"hello\n")
        self.assertEqual(self.fetch("a.txt", request_id=1).data, b"hello\n")
        self.assertFalse(self.rig.aborted)

    def test_unknown_opcodes(self) -> None:
        for opcode in (0x00, 0x05, frames.ENTRIES, frames.DATA, frames.ERROR, 0xFF):
            rig = connect_server(self.factory, IPv4Address("TCP", "10.0.0.9", opcode))
            rig.send(opcode, 1, b"a.txt")
            self.assertTrue(rig.aborted, hex(opcode))
            self.assertEqual(rig.transport.value(), b"")

    def test_nothing_served_after_a_bad_frame(self) -> None:
        self.rig.proto.dataReceived(frames.frame(0x05, 1) + frames.frame(
            frames.FETCH, 2, frames.encode_fetch("a.txt")))
        self.assertTrue(self.rig.aborted)
        self.assertEqual(self.answer(), [])

    def test_request_frame_too_long(self) -> None:
        self.rig.proto.dataReceived(struct.pack(">IBI", 8193, frames.LIST, 1))
        self.assertTrue(self.rig.aborted)

    def test_longest_request_frame_accepted(self) -> None:
        name = "/".join(["a" * 255] * 16)
        self.rig.fetch(1, name)
        r = fetch_result(self.answer(), 1)
        self.assertEqual(r.error[0], frames.E_NOT_FOUND)
        self.assertFalse(self.rig.aborted)

    def test_huge_length_prefix(self) -> None:
        self.rig.proto.dataReceived(b"\xff\xff\xff\xff")
        self.assertTrue(self.rig.aborted)

    def test_short_length_prefix(self) -> None:
        self.rig.proto.dataReceived(b"\x00\x00\x00\x04\x01\x00\x00\x00\x01")
        self.assertTrue(self.rig.aborted)


class Timeouts(ServerTestCase):
    settings = {"frame_timeout": 2.0, "idle_timeout": 10.0, "write_timeout": 3.0,
                "max_delay": 60.0}

    def test_partial_frame_then_silence(self) -> None:
        wire = frames.frame(frames.LIST, 1, b"docs")
        self.rig.proto.dataReceived(wire[:6])
        self.clock.advance(1.9)
        self.assertFalse(self.rig.aborted)
        self.clock.advance(0.1)
        self.assertTrue(self.rig.aborted)

    def test_partial_length_prefix_then_silence(self) -> None:
        self.rig.proto.dataReceived(b"\x00\x00")
        self.clock.advance(2)
        self.assertTrue(self.rig.aborted)

    def test_trickle_cannot_extend_the_deadline(self) -> None:
        wire = frames.frame(frames.LIST, 1, b"docs/sub/" + b"x" * 50)
        for i in range(4):  # one byte every 0.5 s
            self.rig.proto.dataReceived(wire[i : i + 1])
            self.clock.advance(0.5)
        self.assertTrue(self.rig.aborted)
        self.assertEqual(self.answer(), [])

    def test_frame_completed_in_time(self) -> None:
        wire = frames.frame(frames.LIST, 1, b"docs/b.txt")
        self.rig.proto.dataReceived(wire[:3])
        self.clock.advance(1.5)
        self.rig.proto.dataReceived(wire[3:])
        self.clock.advance(1.5)
        self.assertFalse(self.rig.aborted)
        self.assertEqual(list_result(self.answer(), 1).names, ["docs/b.txt"])

    def test_deadline_is_per_frame(self) -> None:
        # Complete frames, one every 1.5 s: each frame is within its own deadline.
        for i in range(1, 5):
            wire = frames.frame(frames.LIST, i, b"a.txt")
            self.rig.proto.dataReceived(wire[:4])
            self.clock.advance(1.5)
            self.rig.proto.dataReceived(wire[4:])
        self.assertFalse(self.rig.closing)

    def test_idle(self) -> None:
        self.clock.advance(9.9)
        self.assertFalse(self.rig.closing)
        self.clock.advance(0.1)
        self.assertTrue(self.rig.closing)
        self.assertFalse(self.rig.aborted)

    def test_idle_close_escalates_to_abort(self) -> None:
        self.clock.advance(10)
        self.assertTrue(self.rig.closing)
        self.clock.advance(CLOSE_GRACE)
        self.assertTrue(self.rig.aborted)

    def test_idle_counts_from_the_last_answer(self) -> None:
        self.clock.advance(8)
        self.list("a.txt")
        self.clock.advance(8)
        self.assertFalse(self.rig.closing)
        self.clock.advance(2)
        self.assertTrue(self.rig.closing)

    def test_not_idle_while_a_request_is_in_flight(self) -> None:
        self.rig.fetch(1, "a.txt", delay_ms=30_000)
        self.clock.advance(29)
        self.assertFalse(self.rig.closing)
        self.clock.advance(1)
        self.assertEqual(fetch_result(self.answer(), 1).data, b"hello\n")
        self.clock.advance(9.9)
        self.assertFalse(self.rig.closing)
        self.clock.advance(0.1)
        self.assertTrue(self.rig.closing)

    def test_write_timeout(self) -> None:
        # Disk work on the test's command, so that the FETCH is still in flight when the
        # transport pauses (StringTransport never pauses by itself).
        threads = StepThreads()
        self.factory.threads = threads
        self.rig.fetch(1, "big.bin", delay_ms=0)
        threads.step()
        self.rig.proto.pauseProducing()
        threads.run_all()
        self.clock.advance(2.9)
        self.assertFalse(self.rig.aborted)
        self.clock.advance(0.1)
        self.assertTrue(self.rig.aborted)

    def test_paused_list_gets_the_write_timeout(self) -> None:
        # A client that reads nothing is dropped, whatever it asked for (issue 7): a mirror
        # server that must stop reading a listing closes it and resumes from its cursor.
        threads = StepThreads()
        self.factory.threads = threads
        self.rig.list(1, "")
        threads.step()  # the walker is open
        self.rig.proto.pauseProducing()
        threads.run_all()
        self.clock.advance(2.9)
        self.assertFalse(self.rig.aborted)
        self.clock.advance(0.1)
        self.assertTrue(self.rig.aborted)
        self.rig.proto.connectionLost()  # StringTransport does not call it
        self.assertEqual(self.factory.lists, 0)

    def test_write_timeout_stopped_by_resume(self) -> None:
        self.rig.proto.pauseProducing()
        self.rig.fetch(1, "big.bin")
        self.clock.advance(2)
        self.rig.proto.resumeProducing()
        self.clock.advance(2)
        self.assertFalse(self.rig.aborted)
        self.assertIsNotNone(fetch_result(self.answer(), 1).digest)

    def test_no_timers_left_after_connection_lost(self) -> None:
        self.rig.proto.dataReceived(b"\x00")
        self.rig.proto.pauseProducing()
        self.rig.proto.connectionLost()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ConnectionLimits(SynchronousTestCase):
    """The caps as the content server applies them (the policy itself: test_limits.py)."""

    def setUp(self) -> None:
        self.root, _, _ = make_tree(self.mktemp())

    def factory(self, **settings):
        factory = make_factory(self.root, **settings)
        self.addCleanup(os.close, factory.root_fd)
        return factory

    def busy(self, factory, host: str, port: int = 1) -> ServerRig:
        """A connection from ``host`` with a request in flight (a delayed FETCH)."""
        rig = connect_server(factory, IPv4Address("TCP", host, port))
        rig.fetch(1, "a.txt", delay_ms=30_000)
        self.assertFalse(rig.proto.is_idle())
        return rig

    def refusal(self, factory, host: str) -> tuple[int, str]:
        """Connect from ``host`` expecting a refusal: the one frame it gets, decoded."""
        proto = factory.buildProtocol(IPv4Address("TCP", host, 9))
        self.assertNotIsInstance(proto, ContentServerProtocol)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.assertTrue(transport.disconnecting)
        (opcode, request_id, payload), = parse_frames(transport.value())
        self.assertEqual((opcode, request_id), (frames.ERROR, 0))
        return frames.decode_error(payload)

    def test_per_peer_cap_refuses_with_the_reason(self) -> None:
        factory = self.factory(max_connections=10, max_per_peer=2)
        self.busy(factory, "10.0.0.1", 1)
        rig = self.busy(factory, "10.0.0.1", 2)
        self.assertEqual(self.refusal(factory, "10.0.0.1"),
                         (frames.E_BUSY, "content server busy: too many connections from "
                                         "10.0.0.1"))
        self.assertEqual(factory.limiter.total, 2)
        # Another address is served meanwhile; a slot freed is a slot for the next client.
        connect_server(factory, IPv4Address("TCP", "10.0.0.2", 1))
        rig.proto.connectionLost()
        connect_server(factory, IPv4Address("TCP", "10.0.0.1", 3))

    def test_idle_connection_of_the_same_peer_makes_room(self) -> None:
        factory = self.factory(max_connections=10, max_per_peer=2)
        idle = connect_server(factory, IPv4Address("TCP", "10.0.0.1", 1))
        working = self.busy(factory, "10.0.0.1", 2)
        new = connect_server(factory, IPv4Address("TCP", "10.0.0.1", 3))
        # The idle one was told why and closed; the working one goes on.
        (opcode, request_id, payload), = parse_frames(idle.transport.value())
        self.assertEqual((opcode, request_id), (frames.ERROR, 0))
        code, message = frames.decode_error(payload)
        self.assertEqual(code, frames.E_BUSY)
        self.assertIn("idle connection closed", message)
        self.assertTrue(idle.closing)
        self.assertFalse(working.closing or working.aborted or new.closing)
        self.assertEqual(factory.limiter.total, 2)
        # Its close, when it completes, frees nothing twice.
        idle.proto.connectionLost()
        self.assertEqual(factory.limiter.total, 2)
        # The next one takes the slot of the now idle newest, never the working one.
        connect_server(factory, IPv4Address("TCP", "10.0.0.1", 4))
        self.assertTrue(new.closing)
        self.assertFalse(working.closing or working.aborted)

    def test_total_cap_never_takes_another_peers_working_connection(self) -> None:
        factory = self.factory(max_connections=2, max_per_peer=10)
        rigs = [self.busy(factory, f"10.0.0.{i}") for i in (1, 2)]
        self.assertEqual(self.refusal(factory, "10.0.0.3"),
                         (frames.E_BUSY, "content server busy: too many connections "
                                         "(2 in total)"))
        self.assertFalse(any(r.closing or r.aborted for r in rigs))
        rigs[0].proto.connectionLost()
        connect_server(factory, IPv4Address("TCP", "10.0.0.3", 1))

    def test_total_cap_takes_an_idle_connection_of_the_biggest_peer(self) -> None:
        factory = self.factory(max_connections=4, max_per_peer=10)
        small = connect_server(factory, IPv4Address("TCP", "10.0.0.1", 1))
        big = [connect_server(factory, IPv4Address("TCP", "10.0.0.2", p)) for p in (1, 2)]
        working = self.busy(factory, "10.0.0.2", 3)
        connect_server(factory, IPv4Address("TCP", "10.0.0.3", 1))
        self.assertTrue(big[0].closing)
        self.assertFalse(small.closing or big[1].closing or working.closing)
        self.assertEqual(factory.limiter.count("10.0.0.2"), 2)

    def test_released_once_per_connection(self) -> None:
        factory = self.factory(max_connections=1, max_per_peer=1)
        rig = connect_server(factory)
        rig.proto.connectionLost()
        self.assertEqual(factory.limiter.total, 0)


class AbsolutePaths(ServerTestCase):
    """A request path is a wire path (doc/protocol.md): a leading "/" is refused, never
    read as relative to the export."""

    def test_list(self) -> None:
        path = os.path.abspath(self.outside)
        self.assert_error(self.list(path), frames.E_NOT_ALLOWED, path, "absolute")

    def test_fetch(self) -> None:
        path = os.path.abspath(os.path.join(self.outside, "secret"))
        r = self.fetch(path)
        self.assert_error(r, frames.E_NOT_ALLOWED, path, "absolute")
        self.assertIsNone(r.header)

    def test_fetch_naming_a_file_inside(self) -> None:
        self.assert_error(self.fetch("/a.txt"), frames.E_NOT_ALLOWED, "/a.txt", "absolute")

    def test_list_naming_a_directory_inside(self) -> None:
        self.assert_error(self.list("/docs"), frames.E_NOT_ALLOWED, "/docs", "absolute")


# -- property: nothing a client sends makes the server raise ------------------------------

PATHS = [b"", b".", b"/", b"a.txt", b"docs", b"docs/sub/c.txt", b"big.bin", b"../x", b"/etc",
         b"link", b"linkdir/secret", b"fifo", b"nope", b"a\x00b", b"\xff", b"docs/up/secret",
         b".mirror-tmp-1"]
_paths = st.sampled_from(PATHS)
_ids = st.integers(0, 3)
_request = st.one_of(
    st.builds(lambda rid, path: frames.frame(frames.LIST, rid, path), _ids, _paths),
    st.builds(lambda rid, off, length, delay, path: frames.frame(
        frames.FETCH, rid, struct.pack(">QQI", off, length, delay) + path),
        _ids, st.sampled_from([0, 1, 5, 2**20, 2**64 - 1]),
        st.sampled_from([0, 3, 2**64 - 1]), st.sampled_from([0, 500, 2**32 - 1]), _paths),
    st.builds(lambda op, rid, body: frames.frame(op, rid, body), st.integers(0, 255), _ids,
              st.binary(max_size=30)),
    st.binary(min_size=1, max_size=30),
)


class ServerFuzz(ServerTestCase):
    settings = {"max_requests": 3, "max_delay": 1.0}

    @hypothesis_settings(deadline=None, max_examples=120)
    @given(st.lists(st.tuples(_request, st.integers(1, 40), st.booleans()), max_size=8))
    def test_any_input(self, steps) -> None:
        rig = connect_server(self.factory, IPv4Address("TCP", "10.9.9.9", 1))
        try:
            for wire, cut, advance in steps:
                for i in range(0, len(wire), cut):
                    rig.proto.dataReceived(wire[i : i + cut])  # never raises
                if advance:
                    self.clock.advance(0.5)
            self.clock.advance(2)
            for opcode, _, _ in parse_frames(rig.transport.value()):  # well-formed output
                self.assertIn(opcode, frames.RESPONSE_OPCODES)
        finally:
            rig.proto.connectionLost()
            self.clock.advance(100)
        self.assertEqual(self.factory.limiter.total, 1)  # only setUp's connection is left

    def test_every_path_answered(self) -> None:
        """Each path of the property above, LISTed and FETCHed: one complete answer each."""
        for i, path in enumerate(PATHS):
            with must_not_block():
                lr = self.list(path, 2 * i + 1)
                fr = self.fetch(path, 2 * i + 2)
            self.assertTrue(lr.error is not None or lr.end is not None, path)
            self.assertTrue(fr.error is not None or fr.digest is not None, path)
            self.assertFalse(self.rig.aborted)
