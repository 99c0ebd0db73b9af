"""Hostile clients against a real content server and the mirror server's control port.

Every test sends the bad input over loopback, asserts the clean outcome (an ERROR frame with
the right code, REFUSED, or the connection closed within its deadline), and then checks that
the daemon still serves a well-behaved client. Nothing outside the export root may ever be
listed or served: the files outside it hold a marker that must never appear on the wire.
"""

from __future__ import annotations

import os
import random
import resource
import stat
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import ILogObserver, globalLogPublisher
from zope.interface import provider

import mirror.limits
from mirror.hashing import digest_of
from mirror.wire import control, frames
from tests.integration.conftest import run_job, source
from tests.integration.waiting import wait_for

SECRET = b"OUTSIDE-THE-ROOT-" + os.urandom(8).hex().encode()
FINAL = {frames.ERROR, frames.LIST_END, frames.FILE_END}


# -- a raw client ---------------------------------------------------------------------------


class RawClient(Protocol):
    """Sends whatever it is told; records every byte and frame received and when it closed."""

    def __init__(self) -> None:
        self.raw = bytearray()
        self._unparsed = b""
        self.frames: list[tuple[int, int, bytes]] = []
        self.made: defer.Deferred[RawClient] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.closed_at: float | None = None
        self.bad_framing: str | None = None
        self._waiters: list[tuple[Callable[[], bool], defer.Deferred[None]]] = []

    def connectionMade(self) -> None:
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        buf = self._unparsed + data
        pos = 0
        while len(buf) - pos >= 4:
            (length,) = struct.unpack_from(">I", buf, pos)
            if length < 5:
                self.bad_framing = f"frame length {length}"
                break
            if len(buf) - pos - 4 < length:
                break
            body = buf[pos + 4 : pos + 4 + length]
            opcode, rid = struct.unpack_from(">BI", body)
            self.frames.append((opcode, rid, bytes(body[5:])))
            pos += 4 + length
        self._unparsed = buf[pos:]
        self._poke()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed_at = reactor.seconds()
        self.lost.callback(None)
        self._poke()

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    def _poke(self) -> None:
        for item in list(self._waiters):
            pred, d = item
            if pred():
                self._waiters.remove(item)
                d.callback(None)

    def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if pred():
            d.callback(None)
            return d
        self._waiters.append((pred, d))
        return d.addTimeout(timeout, reactor)

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def request(self, opcode: int, request_id: int, payload: bytes) -> None:
        self.send(frames.frame(opcode, request_id, payload))

    def frames_for(self, request_id: int) -> list[tuple[int, bytes]]:
        return [(op, p) for op, rid, p in self.frames if rid == request_id]

    def finished(self, request_id: int) -> bool:
        return self.closed or any(op in FINAL for op, _ in self.frames_for(request_id))

    async def answer(self, request_id: int, timeout: float = 10.0) -> list[tuple[int, bytes]]:
        await self.wait_for(lambda: self.finished(request_id), timeout)
        return self.frames_for(request_id)

    def stop_reading(self, rcvbuf: int = 4096) -> None:
        """Read nothing more (and keep the kernel's receive buffer small)."""
        import socket

        # A TCP transport: ITransport declares neither method.
        handle = self.transport.getHandle()  # type: ignore[attr-defined]
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.transport.pauseProducing()  # type: ignore[attr-defined]


class _Factory(ClientFactory):
    def __init__(self, proto: RawClient, failed: defer.Deferred[Any]) -> None:
        self.proto = proto
        self.failed = failed

    def buildProtocol(self, addr: Any) -> RawClient:
        return self.proto

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        if not self.proto.made.called:
            self.proto.made.errback(reason)


def connect_raw(port: int, bind: str | None = None, proto: Any = None) -> defer.Deferred[Any]:
    """Connect a `RawClient` (or ``proto``) to 127.0.0.1:``port``, optionally from ``bind``."""
    proto = proto or RawClient()
    reactor.connectTCP("127.0.0.1", port, _Factory(proto, proto.made), timeout=10,
                       bindAddress=(bind, 0) if bind else None)
    return proto.made


def sleep(seconds: float) -> defer.Deferred[None]:
    """The pace of a slow client (part of an attack), never a way to synchronise."""
    return task.deferLater(reactor, seconds, lambda: None)


class ServerSide:
    """The content server's connections as it sees them, and when each one ended.

    A client that has stopped reading cannot notice that the server dropped it, so tests of
    such clients look from this side.
    """

    def __init__(self, factory: Any) -> None:
        self.protos: list[Any] = []
        self.closed_at: dict[int, float] = {}
        build, closed = factory.buildProtocol, factory.unregisterProtocol

        def keep(addr: Any) -> Any:
            proto = build(addr)
            if proto is not None:
                self.protos.append(proto)
            return proto

        def note(proto: Any) -> None:
            self.closed_at[id(proto)] = reactor.seconds()
            closed(proto)

        factory.buildProtocol = keep
        factory.unregisterProtocol = note

    def ended(self, index: int) -> float | None:
        return self.closed_at.get(id(self.protos[index])) if index < len(self.protos) else None


def error_of(answer: list[tuple[int, bytes]]) -> tuple[int, str]:
    assert answer and answer[-1][0] == frames.ERROR, answer
    assert len(answer) == 1, "ERROR must be the only frame of a refused request"
    return frames.decode_error(answer[-1][1])


def file_of(answer: list[tuple[int, bytes]]) -> bytes:
    """The body of a successful FETCH, its digest checked."""
    assert answer[0][0] == frames.FILE and answer[-1][0] == frames.FILE_END, answer[:1]
    body = b"".join(p for op, p in answer if op == frames.DATA)
    assert frames.decode_file(answer[0][1]).size == len(body)
    assert digest_of(body) == answer[-1][1]
    return body


def names_of(answer: list[tuple[int, bytes]]) -> tuple[list[str], int]:
    """(names, skipped) of a successful LIST."""
    assert answer[-1][0] == frames.LIST_END, answer[-1:]
    names = [e.name.decode() for op, p in answer if op == frames.ENTRIES
             for e in frames.decode_entries(p)]
    return names, frames.decode_list_end(answer[-1][1])[1]


async def good_fetch(port: int, bind: str | None = None, name: str = "ok.txt",
                     expect: bytes = b"fine\n") -> None:
    """A well-behaved client is served: the daemon is alive and not wedged."""
    c = await connect_raw(port, bind)
    c.request(frames.FETCH, 7, frames.encode_fetch(name))
    assert file_of(await c.answer(7)) == expect
    c.transport.loseConnection()
    await c.lost


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_logged_failures() -> Any:
    """No daemon code may log an unexpected exception (a bug caught by a catch-all)."""
    failures: list[dict[str, Any]] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    yield failures
    globalLogPublisher.removeObserver(observe)
    assert not failures, [f["log_failure"].getTraceback() for f in failures]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/ (exported) beside outside/ (never to be served); links and special files inside."""
    outside = tmp_path / "outside"
    (outside / "deeper").mkdir(parents=True)
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "deeper" / "secret.txt").write_bytes(SECRET)
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "ok.txt").write_bytes(b"fine\n")
    (root / "sub" / "inner.txt").write_bytes(b"inner\n")
    os.symlink("../outside/secret.txt", root / "link_out")
    os.symlink(str(outside / "secret.txt"), root / "abs_link")
    os.symlink("../outside", root / "linkdir")
    os.symlink("../../outside", root / "sub" / "linkdir")
    os.symlink("ok.txt", root / "link_in")  # even a link that stays inside is refused
    os.mkfifo(root / "fifo")
    return root


def _has_device(root: Path) -> bool:
    if os.geteuid() != 0:
        return False
    try:
        os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except OSError:
        return False
    return True


def _no_secret(*clients: RawClient) -> None:
    for c in clients:
        assert SECRET not in bytes(c.raw)
        assert c.bad_framing is None, c.bad_framing


# -- content server: names ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_paths_outside_the_root_are_refused(tree: Path, start_content_server):
    port, _ = start_content_server(str(tree))
    outside = str(tree.parent / "outside")
    refused = [
        # (opcode, path, expected code)
        (frames.FETCH, "..", frames.E_NOT_ALLOWED),
        (frames.FETCH, "../outside/secret.txt", frames.E_NOT_ALLOWED),
        (frames.FETCH, "sub/../../outside/secret.txt", frames.E_NOT_ALLOWED),
        (frames.FETCH, "sub/..", frames.E_NOT_ALLOWED),
        (frames.FETCH, outside + "/secret.txt", frames.E_NOT_ALLOWED),
        (frames.FETCH, "/" + outside + "/secret.txt", frames.E_NOT_ALLOWED),
        (frames.FETCH, "/etc/passwd", frames.E_NOT_ALLOWED),
        (frames.FETCH, "..\\outside\\secret.txt", frames.E_NOT_ALLOWED),
        (frames.FETCH, "ok.txt\x00/../../outside/secret.txt", frames.E_NOT_ALLOWED),
        (frames.FETCH, "link_out", frames.E_NOT_ALLOWED),
        (frames.FETCH, "abs_link", frames.E_NOT_ALLOWED),
        (frames.FETCH, "link_in", frames.E_NOT_ALLOWED),
        (frames.FETCH, "linkdir/secret.txt", frames.E_NOT_ALLOWED),
        (frames.FETCH, "linkdir/deeper/secret.txt", frames.E_NOT_ALLOWED),
        (frames.FETCH, "sub/linkdir/secret.txt", frames.E_NOT_ALLOWED),
        (frames.FETCH, "fifo", frames.E_NOT_ALLOWED),
        (frames.FETCH, "sub", frames.E_NOT_ALLOWED),
        (frames.FETCH, "", frames.E_BAD_REQUEST),
        (frames.FETCH, "no-such-file", frames.E_NOT_FOUND),
        (frames.FETCH, "ok.txt/below", (frames.E_NOT_FOUND, frames.E_NOT_ALLOWED)),
        (frames.LIST, "..", frames.E_NOT_ALLOWED),
        (frames.LIST, "../outside", frames.E_NOT_ALLOWED),
        (frames.LIST, outside, frames.E_NOT_ALLOWED),
        (frames.LIST, "/" + outside, frames.E_NOT_ALLOWED),
        (frames.LIST, "linkdir", frames.E_NOT_ALLOWED),
        (frames.LIST, "linkdir/", frames.E_NOT_ALLOWED),
        (frames.LIST, "linkdir/deeper", frames.E_NOT_ALLOWED),
        (frames.LIST, "sub/linkdir", frames.E_NOT_ALLOWED),
        (frames.LIST, "link_out", frames.E_NOT_ALLOWED),
        (frames.LIST, "fifo", frames.E_NOT_ALLOWED),
        (frames.LIST, "no-such-dir", frames.E_NOT_FOUND),
    ]
    if _has_device(tree):
        refused += [(frames.FETCH, "null", frames.E_NOT_ALLOWED),
                    (frames.LIST, "null", frames.E_NOT_ALLOWED)]
    c = await connect_raw(port)
    # All at once on one connection: pipelined, answered independently.
    for i, (opcode, path, _) in enumerate(refused, 1):
        payload = frames.encode_fetch(path) if opcode == frames.FETCH else path.encode()
        c.request(opcode, i, payload)
    for i, (_, path, code) in enumerate(refused, 1):
        got, message = error_of(await c.answer(i))
        assert got in (code if isinstance(code, tuple) else (code,)), (path, message)
    # Raw bytes that are not UTF-8 at all.
    c.request(frames.FETCH, 500, frames.encode_fetch("x")[:-1] + b"\xff\xfe/../..")
    assert error_of(await c.answer(500))[0] == frames.E_NOT_ALLOWED
    # The connection is still good, and so is a new one.
    c.request(frames.FETCH, 501, frames.encode_fetch("sub/inner.txt"))
    assert file_of(await c.answer(501)) == b"inner\n"
    assert not c.closed
    await good_fetch(port)
    _no_secret(c)


@pytest_twisted.ensureDeferred
async def test_listing_never_shows_links_or_special_files(tree: Path, start_content_server):
    port, _ = start_content_server(str(tree))
    device = _has_device(tree)
    c = await connect_raw(port)
    c.request(frames.LIST, 1, b"")
    names, skipped = names_of(await c.answer(1))
    assert sorted(names) == ["ok.txt", "sub", "sub/inner.txt"]
    # link_out, abs_link, linkdir, link_in, fifo, sub/linkdir (and the device node)
    assert skipped == 6 + device
    c.request(frames.LIST, 2, b"sub")
    names, skipped = names_of(await c.answer(2))
    assert names == ["sub", "sub/inner.txt"] and skipped == 1
    _no_secret(c)


@pytest_twisted.ensureDeferred
async def test_symlink_swapped_in_during_requests_never_leaks(tree: Path, start_content_server):
    """A directory flipped between a real one and a link out of the root while requests run
    (the rsync CVE-2024-12747 race): answers come from the real directory or are refused."""
    port, _ = start_content_server(str(tree))
    flip = tree / "flip"
    outside = tree.parent / "outside"
    stop = threading.Event()

    def flipper() -> None:
        """'flip' alternates between a real directory and a link to outside the root."""
        (tree / "flip.dir" / "deeper").mkdir(parents=True)
        (tree / "flip.dir" / "secret.txt").write_bytes(b"inside\n")
        (tree / "flip.dir" / "deeper" / "secret.txt").write_bytes(b"inside\n")
        os.symlink(outside, tree / "flip.link")
        while not stop.is_set():
            os.rename(tree / "flip.dir", flip)
            os.rename(flip, tree / "flip.dir")
            os.rename(tree / "flip.link", flip)
            os.rename(flip, tree / "flip.link")

    t = threading.Thread(target=flipper, daemon=True)
    t.start()
    try:
        c = await connect_raw(port)
        rid = 0
        outcomes: set[str] = set()
        for _ in range(150):
            batch = []
            for opcode, path in ((frames.FETCH, "flip/secret.txt"),
                                 (frames.FETCH, "flip/deeper/secret.txt"),
                                 (frames.LIST, "flip"), (frames.LIST, "flip/deeper")):
                rid += 1
                payload = frames.encode_fetch(path) if opcode == frames.FETCH else path.encode()
                c.request(opcode, rid, payload)
                batch.append((opcode, rid))
            for opcode, r in batch:
                answer = await c.answer(r)
                last = answer[-1][0]
                if last == frames.ERROR:
                    code, _ = frames.decode_error(answer[-1][1])
                    assert code in (frames.E_NOT_FOUND, frames.E_NOT_ALLOWED), answer
                    outcomes.add(f"error{code}")
                elif opcode == frames.FETCH:
                    assert file_of(answer) == b"inside\n"
                    outcomes.add("file")
                else:
                    names_of(answer)
                    outcomes.add("list")
        _no_secret(c)
    finally:
        stop.set()
        t.join()
    # The race was really exercised: both real answers and refusals happened.
    assert "error2" in outcomes or "error1" in outcomes
    await good_fetch(port)


# -- content server: framing ----------------------------------------------------------------


async def _expect_closed(c: RawClient, within: float) -> float:
    """Wait until the server closes ``c``; return how long after now that was."""
    start = reactor.seconds()
    await c.wait_for(lambda: c.closed, within)
    return c.closed_at - start


@pytest_twisted.ensureDeferred
async def test_endless_line_and_huge_length_prefix_are_dropped(tree: Path,
                                                               start_content_server):
    port, _ = start_content_server(str(tree), frame_timeout=5.0, idle_timeout=30.0)
    attacks = [
        b"GET / HTTP/1.1" + b"A" * 100_000,            # an endless line, no newline
        struct.pack(">I", 0xFFFFFFFF) + b"\x01" + b"\x00" * 4,
        struct.pack(">I", 8192 + 1) + b"\x01" + b"\x00" * 4 + b"a" * 100,
        struct.pack(">I", 2**31) + b"\x02" + b"\x00" * 4,
        struct.pack(">I", 4) + b"\x01" + b"\x00" * 4,  # length below the minimum
        struct.pack(">I", 0) + b"\x00" * 10,
        frames.frame(0x84, 1, b"data from a client"),  # a response opcode
        frames.frame(0x7F, 1, b""),                      # an unknown one
        frames.frame(frames.LIST, 1, b"sub") * 2,        # the same id twice in flight
    ]
    for attack in attacks:
        c = await connect_raw(port)
        c.send(attack)
        assert await _expect_closed(c, 3.0) < 3.0, attack[:20]
        # At most clean answers (the LIST of the duplicate-id case) came back.
        assert all(op in (frames.ENTRIES, frames.LIST_END, frames.ERROR)
                   for op, _, _ in c.frames), attack[:20]
        _no_secret(c)
    # Exactly at the 8 KiB limit the frame is read and answered (a path too long).
    c = await connect_raw(port)
    c.request(frames.LIST, 3, b"a" * (8192 - 5))
    assert error_of(await c.answer(3))[0] == frames.E_NOT_ALLOWED
    assert not c.closed
    await good_fetch(port)


@pytest_twisted.ensureDeferred
async def test_random_garbage_is_dropped(tree: Path, start_content_server):
    port, _ = start_content_server(str(tree), frame_timeout=0.5, idle_timeout=30.0)
    clients = []
    for seed in range(30):
        rnd = random.Random(seed)
        c = await connect_raw(port)
        garbage = rnd.randbytes(rnd.choice([3, 9, 100, 5000, 70_000]))
        if seed % 3 == 0:
            # A plausible head, so that the garbage gets past the length check.
            garbage = struct.pack(">IB", rnd.randrange(5, 200), rnd.choice([1, 2])) + garbage
        c.send(garbage)
        clients.append(c)
    for c in clients:
        # Closed by a framing error, or by the frame deadline if the garbage left a partial
        # frame; garbage that happens to be whole requests is answered cleanly.
        await c.wait_for(lambda c=c: c.closed, 5.0)
        for op, _, payload in c.frames:
            assert op in (frames.ERROR, frames.ENTRIES, frames.LIST_END, frames.FILE,
                          frames.DATA, frames.FILE_END)
            if op == frames.ERROR:
                assert 1 <= frames.decode_error(payload)[0] <= 6
        _no_secret(c)
    await good_fetch(port)


@pytest_twisted.ensureDeferred
async def test_valid_prefix_then_silence_is_closed_by_frame_timeout(tree: Path,
                                                                     start_content_server):
    port, _ = start_content_server(str(tree), frame_timeout=0.5, idle_timeout=30.0)
    heads = [struct.pack(">I", 100) + b"\x01\x00\x00\x00\x01",   # head, then no payload
             struct.pack(">I", 100)[:2],                          # half a length field
             frames.frame(frames.LIST, 1, b"sub")[:-1]]           # one byte short
    clients = []
    for head in heads:
        c = await connect_raw(port)
        c.send(head)
        clients.append(c)
    start = reactor.seconds()
    for c in clients:
        await c.wait_for(lambda c=c: c.closed, 5.0)
        assert 0.4 <= c.closed_at - start < 2.0
        assert c.frames == []
    await good_fetch(port)


@pytest_twisted.ensureDeferred
async def test_slowloris_is_closed_by_the_absolute_frame_deadline(tree: Path,
                                                                  start_content_server):
    """One byte every 0.2 s keeps an idle timer alive forever; the frame deadline does not
    move, so the connection is closed about 1 s after the frame's first byte."""
    port, _ = start_content_server(str(tree), frame_timeout=1.0, idle_timeout=30.0)
    c = await connect_raw(port)
    request = frames.frame(frames.LIST, 1, b"sub/" + b"x" * 200)
    start = reactor.seconds()
    sent = 0
    while not c.closed and sent < len(request):
        c.send(request[sent : sent + 1])
        sent += 1
        await sleep(0.2)
    assert c.closed, "the trickling client was never closed"
    assert c.closed_at - start < 1.0 + 0.5
    assert sent < 10
    # A slow but honest client: whole frames with pauses in between are all answered.
    c = await connect_raw(port)
    for rid in range(1, 4):
        c.request(frames.LIST, rid, b"sub")
        names_of(await c.answer(rid))
        await sleep(0.4)
    assert not c.closed
    await good_fetch(port)


@pytest_twisted.ensureDeferred
async def test_idle_connection_is_closed(tree: Path, start_content_server):
    port, factory = start_content_server(str(tree), idle_timeout=0.5)
    c = await connect_raw(port)
    start = reactor.seconds()
    await c.wait_for(lambda: c.closed, 5.0)
    assert 0.4 <= c.closed_at - start < 2.0
    # The idle timer restarts after each answered request.
    c = await connect_raw(port)
    c.request(frames.LIST, 1, b"")
    names_of(await c.answer(1))
    answered = reactor.seconds()
    await c.wait_for(lambda: c.closed, 5.0)
    assert 0.4 <= c.closed_at - answered < 2.0
    assert factory.limiter.total == 0


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def _open_many(port: int, count: int, binds: list[str], factory: Any = None,
                     batch: int = 40) -> list[RawClient]:
    """Open ``count`` connections, ``batch`` at a time; with ``factory``, each batch is
    waited for until the server has admitted or refused every one of its connections (a
    listen backlog of 50 cannot take 1,000 SYNs in the same millisecond)."""
    clients: list[RawClient] = []
    base = factory.limiter.total if factory is not None else 0
    while len(clients) < count:
        new = [RawClient() for _ in range(min(batch, count - len(clients)))]
        for c in new:
            connect_raw(port, binds[len(clients) % len(binds)], c)
            clients.append(c)
        await defer.DeferredList([c.made for c in new], fireOnOneErrback=True,
                                 consumeErrors=True).addTimeout(30, reactor)
        if factory is not None:
            await wait_for(lambda: factory.limiter.total - base
                           + sum(c.closed for c in clients) == len(clients),
                           10.0, "connections accepted")
    return clients


@pytest_twisted.ensureDeferred
async def test_idle_connections_beyond_the_cap_from_one_peer(tree: Path,
                                                             start_content_server):
    """300 idle connections from one address: the per-peer cap (256) holds 256, each
    newcomer taking the slot of the oldest idle one, which is told why and closed at once;
    another address is still served; idle ones are closed later.

    The server's deadlines run on a clock of the test's own (the sockets are real): the idle
    timeout comes when the test has seen everything it checks before it, however long
    opening 300 connections takes on a loaded machine, and costs no waiting."""
    _raise_fd_limit(4096)
    clock = task.Clock()
    port, factory = start_content_server(str(tree), clock=clock, idle_timeout=3.0)
    clients = await _open_many(port, 300, ["127.0.0.1"], factory)
    held = [c for c in clients if not c.closed]
    assert len(held) == 256 == factory.limiter.total
    for c in clients:
        if c.closed:
            ((opcode, rid, payload),) = c.frames
            assert (opcode, rid) == (frames.ERROR, 0)
            assert frames.decode_error(payload)[0] == frames.E_BUSY
    # A client from another loopback address is served meanwhile.
    await good_fetch(port, bind="127.0.0.2")
    clock.advance(2.9)
    assert not any(c.closed for c in held)
    # The held ones are closed by the idle timeout, without any answer.
    clock.advance(0.1)
    await defer.gatherResults([c.lost for c in held]).addTimeout(10, reactor)
    assert all(not c.raw for c in held)
    assert factory.limiter.total == 0
    await good_fetch(port)


@pytest_twisted.ensureDeferred
async def test_idle_connections_from_many_peers_up_to_the_total_cap(tree: Path,
                                                                    start_content_server):
    """300 idle connections under both caps are all held; the 301st client is still served;
    beyond the total cap a new address takes an idle slot of a peer holding more; all idle
    ones are closed by the idle timeout (on the test's clock, as above)."""
    _raise_fd_limit(4096)
    clock = task.Clock()
    port, factory = start_content_server(str(tree), clock=clock, idle_timeout=5.0,
                                         max_connections=302)
    clients = await _open_many(port, 300, [f"127.0.0.{i}" for i in range(1, 5)], factory)
    assert factory.limiter.total == 300 and not any(c.closed for c in clients)
    await good_fetch(port, bind="127.0.0.9")
    await wait_for(lambda: factory.limiter.total == 300, 5.0, "the good client's slot freed")
    # Fill the total cap: beyond it a new address takes the oldest idle slot of a peer.
    extra = await _open_many(port, 3, ["127.0.0.10"])  # no count check: one evicts
    await wait_for(lambda: sum(c.closed for c in clients) == 1, 10.0, "one slot taken")
    assert factory.limiter.total == 302 and not any(c.closed for c in extra)
    clock.advance(5.0)
    await defer.gatherResults([c.lost for c in clients]).addTimeout(12, reactor)
    for c in extra:
        c.transport.loseConnection()
    await wait_for(lambda: factory.limiter.total == 0, 5.0)
    await good_fetch(port)


# -- content server: a client that does not read --------------------------------------------


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRSS:
    def __init__(self) -> None:
        self.base = _rss()
        self.peak = self.base
        self._loop = task.LoopingCall(self._sample)
        self._loop.start(0.02)

    def _sample(self) -> None:
        self.peak = max(self.peak, _rss())

    def stop(self) -> int:
        self._loop.stop()
        self._sample()
        return self.peak - self.base


@pytest_twisted.ensureDeferred
async def test_client_that_never_reads_a_large_file_is_aborted(tree: Path,
                                                              start_content_server):
    size = 256 * 1024 * 1024
    with open(tree / "big.bin", "wb") as f:
        f.truncate(size)  # sparse: costs no disk
    port, factory = start_content_server(str(tree), write_timeout=1.0, idle_timeout=30.0)
    server = ServerSide(factory)
    rss = _PeakRSS()
    c = await connect_raw(port)
    c.stop_reading()
    start = reactor.seconds()
    c.request(frames.FETCH, 1, frames.encode_fetch("big.bin"))
    await wait_for(lambda: server.ended(0) is not None, 10.0, "aborted")
    growth = rss.stop()
    assert server.ended(0) - start < 1.0 + 3.0
    assert growth < 24 * 1024 * 1024, f"server memory grew by {growth} bytes"
    await good_fetch(port)


@pytest_twisted.ensureDeferred
async def test_client_pipelining_fetches_without_reading_is_bounded(tree: Path,
                                                                   start_content_server):
    """Small files are answered in one piece: a client that keeps asking for them without
    reading must not make the server buffer every answer."""
    (tree / "small.bin").write_bytes(os.urandom(200 * 1024))
    port, factory = start_content_server(str(tree), write_timeout=1.5, idle_timeout=30.0)
    server = ServerSide(factory)
    rss = _PeakRSS()
    c = await connect_raw(port)
    c.stop_reading()
    request = frames.encode_fetch("small.bin")
    rid = 0
    while server.ended(0) is None and rid < 2000:  # 2000 answers would be 400 MiB
        for _ in range(20):
            rid += 1
            c.request(frames.FETCH, rid, request)
        await sleep(0.01)
    await wait_for(lambda: server.ended(0) is not None, 10.0, "aborted")
    growth = rss.stop()
    assert growth < 48 * 1024 * 1024, f"server memory grew by {growth} bytes"
    c.transport.abortConnection()
    await good_fetch(port)


def _write_stuck(transport: Any) -> bool:
    """True once ``transport`` cannot send what it holds: the kernel's send buffer is full
    (the socket is not writable) and the transport still holds data of its own (it pauses
    its producer until its buffer has drained)."""
    import select

    _, writable, _ = select.select([], [transport.getHandle()], [], 0)
    return bool(transport.producerPaused) and not writable


@pytest_twisted.ensureDeferred
async def test_graceful_close_that_cannot_complete_is_aborted(tree: Path, start_content_server,
                                                             monkeypatch):
    """``close()`` waits for the write buffer to drain; against a client that never reads it
    escalates to abortConnection after CLOSE_GRACE."""
    monkeypatch.setattr(mirror.limits, "CLOSE_GRACE", 0.5)
    with open(tree / "big.bin", "wb") as f:
        f.truncate(64 * 1024 * 1024)
    port, factory = start_content_server(str(tree), write_timeout=60.0, idle_timeout=60.0)
    server = ServerSide(factory)
    c = await connect_raw(port)
    c.stop_reading()
    c.request(frames.FETCH, 1, frames.encode_fetch("big.bin"))
    await wait_for(lambda: server.protos and _write_stuck(server.protos[0].transport),
                   10.0, "the server's buffers to fill up")
    assert server.ended(0) is None
    start = reactor.seconds()
    server.protos[0].close("test")
    await wait_for(lambda: server.ended(0) is not None, 5.0, "aborted")
    assert 0.4 <= server.ended(0) - start < 2.0
    c.transport.abortConnection()
    await good_fetch(port)


# -- the mirror server's control port -------------------------------------------------------


class LineClient(RawClient):
    """A raw client of the control port: records the lines it gets."""

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        self._poke()

    @property
    def lines(self) -> list[bytes]:
        """Complete lines; the protocol ends every line with CRLF."""
        return bytes(self.raw).split(b"\r\n")[:-1]


async def _good_job(mport: int, cport: int, mirror_dir: Path) -> None:
    result = await run_job(mport, [source(cport, "ok.txt")])
    assert result.ok, result.errors
    assert (mirror_dir / f"127.0.0.1_{cport}" / "ok.txt").read_bytes() == b"fine\n"


def _source_line(cport: int, path: str = "ok.txt") -> bytes:
    return f"SOURCE 127.0.0.1 {cport} {path} 0\r\n".encode()


@pytest.fixture
def control_port(tree: Path, tmp_path: Path, start_content_server, start_mirror_server) -> Any:
    cport, _ = start_content_server(str(tree))
    mirror_dir = tmp_path / "mirror"
    mport, service = start_mirror_server(str(mirror_dir), submit_timeout=1.0)
    return mport, cport, mirror_dir, service


def _refusal(c: LineClient) -> str:
    """The message of the one REFUSED line ``c`` got, and nothing else."""
    assert len(c.lines) == 1 and bytes(c.raw).endswith(b"\r\n"), c.raw[:300]
    event = control.parse_server_line(c.lines[0])
    assert isinstance(event, control.Refused), event
    return event.message


async def _refused(mport: int, data: bytes, within: float = 3.0) -> str:
    c = await connect_raw(mport, proto=LineClient())
    c.send(data)
    await c.wait_for(lambda: c.closed, within)
    return _refusal(c)


@pytest_twisted.ensureDeferred
async def test_control_port_refuses_bad_submissions(control_port):
    mport, cport, mirror_dir, _ = control_port
    # An endless line without a newline.
    line = await _refused(mport, b"SOURCE " + b"x" * (20 * 1024))
    assert "line longer than" in line
    # Garbage, binary and text.
    await _refused(mport, os.urandom(300).replace(b"\n", b"") + b"\n")
    await _refused(mport, b"\x00\xff\xfe\r\n")
    await _refused(mport, b"HELLO there\r\n")
    await _refused(mport, b"SOURCE 127.0.0.1 99999 . 0\r\n")
    await _refused(mport, b"SOURCE 127.0.0.1 1 ../../etc 0\r\nGO\r\n")
    # GO without SOURCE.
    line = await _refused(mport, b"GO\r\n")
    assert "GO without" in line
    # More than 64 sources.
    line = await _refused(mport, _source_line(cport) * 65 + b"GO\r\n")
    assert "more than 64" in line
    # Nothing was mirrored by any of them, and a good job still runs.
    assert not (mirror_dir / f"127.0.0.1_{cport}").exists()
    await _good_job(mport, cport, mirror_dir)


@pytest_twisted.ensureDeferred
async def test_control_port_silent_and_trickling_clients_are_closed(control_port):
    mport, cport, mirror_dir, _ = control_port
    silent = await connect_raw(mport, proto=LineClient())
    start = reactor.seconds()
    trickler = await connect_raw(mport, proto=LineClient())
    line = _source_line(cport) * 3 + b"GO\r\n"
    sent = 0
    while not trickler.closed and sent < len(line):
        trickler.send(line[sent : sent + 1])
        sent += 1
        await sleep(0.2)
    assert trickler.closed and sent < 10
    await silent.wait_for(lambda: silent.closed, 3.0)
    for c in (silent, trickler):
        assert c.closed_at - start < 1.0 + 0.6
        assert "not submitted in time" in _refusal(c)
    await _good_job(mport, cport, mirror_dir)


@pytest_twisted.ensureDeferred
async def test_control_input_after_go_is_ignored(control_port):
    """Once the job runs nothing more is read: even a long junk line after GO does not turn
    into a REFUSED in the middle of the job's report."""
    mport, cport, mirror_dir, _ = control_port
    c = await connect_raw(mport, proto=LineClient())
    # Junk in the same read as GO, and more once the job has started.
    c.send(_source_line(cport) + b"GO\r\n" + b"junk " * 8000)
    await c.wait_for(lambda: c.lines != [] or c.closed, 10.0)
    if not c.closed:
        c.send(b"GO\r\n" + b"junk " * 8000)
    await c.wait_for(lambda: c.closed, 10.0)
    assert c.lines[0].startswith(b"JOB ")
    assert c.lines[-1] == b"DONE ok", c.lines
    assert not any(line.startswith(b"REFUSED") for line in c.lines)
    assert (mirror_dir / f"127.0.0.1_{cport}" / "ok.txt").read_bytes() == b"fine\n"

