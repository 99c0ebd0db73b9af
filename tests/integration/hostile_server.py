"""A scriptable content server that speaks our protocol and lies on request (a test double).

Each test says what LIST answers (any raw names, kinds, sizes, modes, even unsafe ones) and, per
wire path, how FETCH behaves: honestly, or sending fewer or more bytes than announced, a wrong
digest, an absurd size, a frame with a huge length prefix, a header followed by silence, an
ERROR half way, or a dropped connection. Frames are built with `mirror.wire.frames`, so the
double is byte-compatible with the real content server. It listens on 127.0.0.1:0.

    server = HostileServer([d("docs"), f("docs/a", b"hi")],
                           fetch={"docs/a": short(b"hi")})
    port = start_hostile_server(server)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from mirror.hashing import digest_of
from mirror.limits import abort_connection
from mirror.wire import frames

#: An old, fixed mtime, so that a file written by a test afterwards always differs.
MTIME_NS = 1_600_000_000_123_456_789


# -- what LIST says ------------------------------------------------------------------------


@dataclass
class ListEntry:
    """One LIST entry as sent: ``name`` raw (bytes or str, never checked here)."""

    kind: int
    name: bytes
    size: int = 0
    mode: int = 0o644
    mtime_ns: int = MTIME_NS
    #: For files: what an honest FETCH sends when the script has no `Fetch` for the name.
    content: bytes | None = None

    def encode(self) -> bytes:
        return struct.pack(">BHQqH", self.kind, self.mode & 0xFFFF, self.size, self.mtime_ns,
                           len(self.name)) + self.name


def _raw(name: bytes | str) -> bytes:
    return name.encode("utf-8", "surrogatepass") if isinstance(name, str) else name


def d(name: bytes | str, mode: int = 0o755, mtime_ns: int = MTIME_NS) -> ListEntry:
    """A directory entry."""
    return ListEntry(frames.KIND_DIR, _raw(name), 0, mode, mtime_ns)


def canonical(*entries: ListEntry) -> list[ListEntry]:
    """``entries`` in the order an honest server lists them (doc/protocol.md): each directory
    before its contents, names sorted within a directory by their UTF-8 bytes."""
    return sorted(entries, key=lambda e: e.name.split(b"/"))


def f(name: bytes | str, content: bytes = b"", mode: int = 0o644, mtime_ns: int = MTIME_NS,
      size: int | None = None) -> ListEntry:
    """A file entry; an honest FETCH of it sends ``content`` (``size`` may lie)."""
    return ListEntry(frames.KIND_FILE, _raw(name), len(content) if size is None else size,
                     mode, mtime_ns, content)


# -- what FETCH does -----------------------------------------------------------------------


@dataclass
class Fetch:
    """How one FETCH is answered.

    A FILE frame announcing ``size`` (default ``len(content)``), then ``body`` (default
    ``content``) in DATA frames of ``chunk`` bytes, ``interval`` seconds apart, then the
    ``ending``: ``"end"`` (FILE_END with ``digest``, default the digest of ``content``),
    ``"silence"`` (nothing more, connection kept open), ``"drop"`` (connection closed),
    ``"abort"`` (connection reset), ``"error"`` (ERROR ``error_code``), ``"huge-frame"``
    (the prefix of a frame of ``huge_length`` bytes with opcode ``huge_opcode``, and nothing
    of its body), ``"foreign-id"`` or ``"id-zero"`` (FILE_END for a request never sent),
    ``"short-error"`` (an ERROR frame too short for its code) or ``"entries"`` (an ENTRIES
    frame, a LIST answer). With ``stop_after`` set, only that many body bytes are sent before the
    ending.
    """

    content: bytes = b""
    size: int | None = None
    body: bytes | None = None
    digest: bytes | None = None
    ending: str = "end"
    stop_after: int | None = None
    chunk: int = 64 * 1024
    interval: float = 0.0
    error_code: int = frames.E_CHANGED
    error_message: str = "file changed while being sent"
    huge_length: int = 0xFFFFFFFF
    huge_opcode: int = frames.DATA
    #: Seconds to wait before answering at all (FILE included).
    wait: float = 0.0
    #: Send the FILE header at all (False: go straight to the body and the ending).
    header: bool = True
    #: Hold the answer at this `Gate` until the test opens it: before anything is sent
    #: (``hold_at`` 0) or once ``hold_at`` body bytes are sent. A transfer kept waiting for
    #: exactly as long as a test needs, not for a time.
    hold: Gate | None = None
    hold_at: int = 0


class Gate:
    """Closed until the test calls `open`; FETCH answers held at it go on then."""

    def __init__(self) -> None:
        self.opened = False
        self._waiting: list[defer.Deferred[None]] = []

    def open(self) -> None:
        self.opened = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if not d.called:  # cancelled when its connection was lost
                d.callback(None)

    def wait(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if self.opened:
            d.callback(None)
        else:
            self._waiting.append(d)
        return d


def normal(content: bytes, **kw: Any) -> Fetch:
    return Fetch(content, **kw)


def short(content: bytes, missing: int = 1) -> Fetch:
    """Announces ``len(content)`` but sends ``missing`` bytes fewer, then FILE_END."""
    return Fetch(content, body=content[: len(content) - missing])


def long(content: bytes, extra: bytes = b"EXTRA") -> Fetch:
    """Announces ``len(content)`` but sends ``extra`` bytes more, then FILE_END."""
    return Fetch(content, body=content + extra)


def wrong_digest(content: bytes) -> Fetch:
    return Fetch(content, digest=digest_of(content + b"x"))


def absurd_size(content: bytes, size: int = 2**62) -> Fetch:
    """A FILE header announcing ``size`` bytes (and file size), then the real content."""
    return Fetch(content, size=size)


def huge_frame(content: bytes, opcode: int = frames.DATA, length: int = 0xFFFFFFFF,
               after: int = 0) -> Fetch:
    """FILE, ``after`` honest bytes, then the head of a frame whose length prefix is huge."""
    return Fetch(content, ending="huge-frame", stop_after=after, huge_opcode=opcode,
                 huge_length=length)


def stall(content: bytes, after: int = 0) -> Fetch:
    """FILE header (and ``after`` bytes), then silence."""
    return Fetch(content, ending="silence", stop_after=after)


def drop(content: bytes, after: int = 0, abort: bool = False) -> Fetch:
    """FILE header and ``after`` bytes, then the connection is closed (or reset)."""
    return Fetch(content, ending="abort" if abort else "drop", stop_after=after)


def changed(content: bytes, after: int = 0) -> Fetch:
    """What the real server does when the file changes under it: ERROR E_CHANGED mid-file."""
    return Fetch(content, ending="error", stop_after=after)


def slow(content: bytes, chunk: int = 64 * 1024, interval: float = 0.1) -> Fetch:
    """An honest but slow answer: ``chunk`` bytes every ``interval`` seconds."""
    return Fetch(content, chunk=chunk, interval=interval)


# -- the server ----------------------------------------------------------------------------


@dataclass
class HostileServer:
    """The script: LIST entries, FETCH behaviours, and what the mirror server asked."""

    entries: list[ListEntry] = field(default_factory=list)
    fetch: dict[str, Fetch] = field(default_factory=dict)
    #: LIST answer: "entries" (ENTRIES then LIST_END), "silence" (nothing at all),
    #: "entries-then-silence" (ENTRIES, no LIST_END), or "error".
    list_mode: str = "entries"
    #: Entries per ENTRIES frame.
    batch: int = 50
    #: (opcode, raw path) of every request received, in order (one per file of a
    #: FETCH_MANY).
    requests: list[tuple[int, bytes]] = field(default_factory=list)
    connections: int = 0
    #: How the answer to a FETCH_MANY lies about a file (`BUNDLE_LIES`), by wire path. A
    #: file with no lie is answered honestly, unless it has a `Fetch` in ``fetch``: that
    #: one gets an error item, so that its script plays on the FETCH that retries it.
    bundle_lies: dict[str, str] = field(default_factory=dict)

    def fetch_for(self, path: bytes) -> tuple[Fetch | None, ListEntry | None]:
        """How to answer a FETCH of ``path``, and its (first) LIST entry if any."""
        entry = next((e for e in self.entries
                      if e.name == path and e.kind == frames.KIND_FILE), None)
        name = path.decode("utf-8", "surrogateescape")
        if name in self.fetch:
            return self.fetch[name], entry
        if entry is not None:
            return Fetch(entry.content if entry.content is not None else b""), entry
        return None, None

    def fetched(self) -> list[str]:
        """Every file asked for, by FETCH or in a FETCH_MANY, in order."""
        return [p.decode("utf-8", "replace") for op, p in self.requests
                if op in (frames.FETCH, frames.FETCH_MANY)]

    def bundled(self) -> list[str]:
        """Every file asked for in a FETCH_MANY, in order."""
        return [p.decode("utf-8", "replace") for op, p in self.requests
                if op == frames.FETCH_MANY]


#: What `HostileServer.bundle_lies` may say of a file in a FETCH_MANY's answer. Told in
#: the BUNDLE frame of the honest answers: ``digest`` (a wrong digest), ``size`` (one byte
#: more than listed), ``twice`` (its item sent twice), ``missing`` (its item left out),
#: ``error`` (an error item), ``foreign`` (honest, and an item for a file not asked for
#: after the last). Told once the files before it are sent, ending the answer:
#: ``truncated`` (an item announcing more bytes than its frame holds), ``unknown-status``,
#: ``huge`` (the head of a frame of 4 GiB), ``oversized`` (a BUNDLE frame one byte over
#: the mirror server's limit), ``request-error`` (ERROR for the whole request),
#: ``file-frame`` (a FETCH's FILE frame), ``stall`` (nothing more), ``drop``
#: (connection closed).
BUNDLE_LIES = ("digest", "size", "twice", "missing", "error", "foreign", "truncated",
               "unknown-status", "huge", "oversized", "request-error", "file-frame", "stall",
               "drop")


class HostileProtocol(frames.FrameReceiver):
    log = Logger()
    MAX_LENGTH = 8192

    def __init__(self, script: HostileServer, tracker: set[HostileProtocol]) -> None:
        self.script = script
        self.tracker = tracker
        self.calls: list[Any] = []
        self.lost = False

    def connectionMade(self) -> None:
        self.script.connections += 1
        self.tracker.add(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True
        self.tracker.discard(self)
        self.cancel_all()

    def cancel_all(self) -> None:
        for call in self.calls:
            if not call.called:
                call.cancel()
        self.calls = []

    def send(self, *chunks: bytes) -> None:
        if not self.lost and self.transport is not None:
            self.transport.writeSequence(list(chunks))

    async def sleep(self, seconds: float) -> None:
        await self.held(task.deferLater(reactor, seconds, lambda: None))

    async def held(self, d: defer.Deferred[None]) -> None:
        """Wait for ``d``; cancelled when the connection is lost."""
        self.calls.append(d)
        await d

    def stringReceived(self, frame: bytes) -> None:
        opcode, request_id, payload = frames.split_frame(frame)
        if opcode == frames.LIST:
            self.script.requests.append((opcode, payload))
            self.go(self.answer_list(request_id))
        elif opcode == frames.FETCH:
            _offset, _length, _delay, path = frames.decode_fetch(payload)
            self.script.requests.append((opcode, path))
            self.go(self.answer_fetch(request_id, path))
        elif opcode == frames.FETCH_MANY:
            _delay, wants = frames.decode_fetch_many(payload)
            self.script.requests += [(opcode, path) for _size, path in wants]
            self.answer_bundle(request_id, [path for _size, path in wants])
        else:
            abort_connection(self.transport)

    def go(self, coro: Any) -> None:
        d = defer.Deferred.fromCoroutine(coro)
        d.addErrback(lambda f: f.trap(defer.CancelledError))

    async def answer_list(self, rid: int) -> None:
        mode = self.script.list_mode
        if mode == "silence":
            return
        if mode == "error":
            self.send(frames.frame(frames.ERROR, rid,
                                   frames.encode_error(frames.E_IO, "listing failed")))
            return
        entries = self.script.entries
        for i in range(0, len(entries), self.script.batch):
            payload = b"".join(e.encode() for e in entries[i:i + self.script.batch])
            self.send(frames.frame(frames.ENTRIES, rid, payload))
        if mode == "entries":
            self.send(frames.frame(frames.LIST_END, rid,
                                   frames.encode_list_end(len(entries), 0)))

    def bundle_file(self, index: int, path: bytes, content: bytes,
                    digest: bytes | None = None) -> bytes:
        _how, entry = self.script.fetch_for(path)
        mode, mtime_ns = (entry.mode, entry.mtime_ns) if entry else (0o644, MTIME_NS)
        header = frames.FileHeader(len(content), len(content), mtime_ns, mode)
        return frames.encode_bundle_file(
            index, header, digest_of(content) if digest is None else digest,
            content)

    def answer_bundle(self, rid: int, paths: list[bytes]) -> None:
        """Answer a FETCH_MANY in one BUNDLE frame, with the `BUNDLE_LIES` scripted."""
        items: list[bytes] = []
        foreign = False
        for index, path in enumerate(paths):
            name = path.decode("utf-8", "surrogateescape")
            how, _entry = self.script.fetch_for(path)
            lie = self.script.bundle_lies.get(name)
            if how is None or (lie is None and name in self.script.fetch):
                items.append(frames.encode_bundle_error(
                    index, frames.E_NOT_FOUND if how is None else frames.E_IO,
                    f"{name}: " + ("no such file" if how is None else "scripted for FETCH")))
                continue
            content = how.content
            honest = self.bundle_file(index, path, content)
            if lie is None:
                items.append(honest)
            elif lie == "digest":
                items.append(self.bundle_file(index, path, content,
                                              digest_of(content + b"x")))
            elif lie == "size":
                items.append(self.bundle_file(index, path, content + b"x"))
            elif lie == "twice":
                items += [honest, honest]
            elif lie == "missing":
                pass
            elif lie == "error":
                items.append(frames.encode_bundle_error(index, frames.E_IO, f"{name}: I/O"))
            elif lie == "foreign":
                items.append(honest)
                foreign = True
            else:
                if items:
                    self.send(frames.frame(frames.BUNDLE, rid, b"".join(items)))
                self.bundle_ending(rid, index, lie, honest)
                return
        if foreign:
            items.append(self.bundle_file(len(paths), b"foreign", b"not asked for"))
        if items:
            self.send(frames.frame(frames.BUNDLE, rid, b"".join(items)))

    def bundle_ending(self, rid: int, index: int, lie: str, honest: bytes) -> None:
        if lie == "truncated":
            self.send(frames.frame(frames.BUNDLE, rid, honest[:-1]))
        elif lie == "unknown-status":
            self.send(frames.frame(frames.BUNDLE, rid, struct.pack(">HB", index, 9) + honest))
        elif lie == "huge":
            self.send(struct.pack(">IBI", 0xFFFFFFFF, frames.BUNDLE, rid), b"x" * 100)
        elif lie == "oversized":
            body = honest + b"\0" * (frames.MAX_BUNDLE_FRAME - 5 + 1 - len(honest))
            self.send(frames.frame(frames.BUNDLE, rid, body))
        elif lie == "request-error":
            self.send(frames.frame(frames.ERROR, rid,
                                   frames.encode_error(frames.E_IO, "bundle failed")))
        elif lie == "file-frame":
            header = frames.FileHeader(1, 1, MTIME_NS, 0o644)
            self.send(frames.frame(frames.FILE, rid, frames.encode_file(header)))
        elif lie == "drop":
            self.transport.loseConnection()
        elif lie != "stall":
            raise ValueError(lie)

    async def answer_fetch(self, rid: int, path: bytes) -> None:
        how, entry = self.script.fetch_for(path)
        if how is None:
            self.send(frames.frame(frames.ERROR, rid, frames.encode_error(
                frames.E_NOT_FOUND, f"{path.decode('utf-8', 'replace')}: no such file")))
            return
        if how.wait:
            await self.sleep(how.wait)
        if how.hold is not None and how.hold_at == 0:
            await self.held(how.hold.wait())
        content = how.content
        if how.header:
            size = len(content) if how.size is None else how.size
            mode, mtime_ns = (entry.mode, entry.mtime_ns) if entry else (0o644, MTIME_NS)
            header = frames.FileHeader(size, size, mtime_ns, mode)
            self.send(frames.frame(frames.FILE, rid, frames.encode_file(header)))
        body = content if how.body is None else how.body
        if how.stop_after is not None:
            body = body[: how.stop_after]
        i = 0
        while i < len(body):
            if how.hold is not None and i == how.hold_at > 0:
                await self.held(how.hold.wait())
            if how.interval and i:
                await self.sleep(how.interval)
            end = i + how.chunk
            if how.hold is not None and i < how.hold_at:
                end = min(end, how.hold_at)
            piece = body[i:end]
            self.send(frames.data_header(rid, len(piece)), piece)
            i = end
        if how.ending == "end":
            digest = how.digest if how.digest is not None else digest_of(content)
            self.send(frames.frame(frames.FILE_END, rid, digest))
        elif how.ending == "error":
            self.send(frames.frame(frames.ERROR, rid,
                                   frames.encode_error(how.error_code, how.error_message)))
        elif how.ending == "drop":
            self.transport.loseConnection()
        elif how.ending == "abort":
            abort_connection(self.transport)
        elif how.ending == "huge-frame":
            # Only the head: a receiver that trusts the prefix would wait for (or allocate)
            # gigabytes; the few bytes after it are the start of a "body".
            self.send(struct.pack(">IBI", how.huge_length, how.huge_opcode, rid), b"x" * 100)
        elif how.ending == "foreign-id":
            # FILE_END for a request that was never sent.
            self.send(frames.frame(frames.FILE_END, rid + 1000, digest_of(content)))
        elif how.ending == "id-zero":
            # FILE_END for request id 0, which no client ever sends.
            self.send(frames.frame(frames.FILE_END, 0, digest_of(content)))
        elif how.ending == "short-error":
            # An ERROR frame too short to hold its code.
            self.send(frames.frame(frames.ERROR, rid, b"\x00"))
        elif how.ending == "entries":
            # A LIST answer to a FETCH.
            self.send(frames.frame(frames.ENTRIES, rid, f("x", b"").encode()))
        elif how.ending == "silence":
            pass
        else:
            raise ValueError(how.ending)


class HostileFactory(ServerFactory):
    def __init__(self, script: HostileServer) -> None:
        self.script = script
        self.protocols: set[HostileProtocol] = set()

    def buildProtocol(self, addr: Any) -> HostileProtocol:
        return HostileProtocol(self.script, self.protocols)


@pytest.fixture
def start_hostile_server() -> Any:
    """``start(script) -> port``: a `HostileServer` listening on 127.0.0.1."""
    started: list[tuple[Any, HostileFactory]] = []

    def start(script: HostileServer) -> int:
        factory = HostileFactory(script)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        started.append((port, factory))
        return port.getHost().port  # type: ignore[attr-defined]  # a TCP port: IPv4Address

    yield start
    for port, factory in started:
        for proto in list(factory.protocols):
            proto.cancel_all()
            if proto.transport is not None:
                abort_connection(proto.transport)
        pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))
