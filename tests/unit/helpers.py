"""Shared helpers of the unit tests: reading frames back, building servers on fake transports."""

from __future__ import annotations

import contextlib
import os
import signal
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar, cast

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from mirror.content_server.factory import ContentServerFactory
from mirror.content_server.protocol import ContentServerProtocol, ContentSettings
from mirror.testing import InlineThreads
from mirror.wire import frames

T = TypeVar("T")
P = ParamSpec("P")


def parse_frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """Every complete frame in ``data`` as (opcode, request id, payload); strict about leftovers."""
    out = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 9:
            raise AssertionError(f"trailing partial frame head: {data[pos:]!r}")
        (length,) = struct.unpack_from(">I", data, pos)
        if length < 5 or len(data) - pos - 4 < length:
            raise AssertionError(f"bad or partial frame at {pos}: length {length}")
        opcode, request_id = struct.unpack_from(">BI", data, pos + 4)
        out.append((opcode, request_id, data[pos + 9 : pos + 4 + length]))
        pos += 4 + length
    return out


class FrameLog:
    """Reads what a protocol wrote to a StringTransport, frame by frame."""

    def __init__(self, transport: StringTransport) -> None:
        self.transport = transport

    def take(self) -> list[tuple[int, int, bytes]]:
        """The frames written since the last call (the transport is cleared)."""
        data = self.transport.value()
        self.transport.clear()
        return parse_frames(data)


@dataclass
class ListResult:
    entries: list[frames.Entry] = field(default_factory=list)
    end: tuple[int, int] | None = None
    error: tuple[int, str] | None = None

    @property
    def names(self) -> list[str]:
        return [e.name.decode("utf-8") for e in self.entries]


@dataclass
class FetchResult:
    header: frames.FileHeader | None = None
    data: bytes = b""
    digest: bytes | None = None
    error: tuple[int, str] | None = None
    data_frames: int = 0


def list_result(got: list[tuple[int, int, bytes]], request_id: int) -> ListResult:
    """Assemble the LIST answer for ``request_id``; asserts the response grammar."""
    r = ListResult()
    for opcode, rid, payload in got:
        if rid != request_id:
            continue
        assert r.end is None and r.error is None, "frame after the end of a LIST"
        if opcode == frames.ENTRIES:
            r.entries.extend(frames.decode_entries(payload))
        elif opcode == frames.LIST_END:
            r.end = frames.decode_list_end(payload)
        elif opcode == frames.ERROR:
            r.error = frames.decode_error(payload)
        else:
            raise AssertionError(f"unexpected opcode {opcode:#x} in a LIST answer")
    return r


def fetch_result(got: list[tuple[int, int, bytes]], request_id: int) -> FetchResult:
    """Assemble the FETCH answer for ``request_id``; asserts the response grammar."""
    r = FetchResult()
    chunks = []
    for opcode, rid, payload in got:
        if rid != request_id:
            continue
        assert r.digest is None and r.error is None, "frame after the end of a FETCH"
        if opcode == frames.FILE:
            assert r.header is None, "second FILE frame"
            r.header = frames.decode_file(payload)
        elif opcode == frames.DATA:
            assert r.header is not None, "DATA before FILE"
            chunks.append(payload)
            r.data_frames += 1
        elif opcode == frames.FILE_END:
            assert r.header is not None, "FILE_END before FILE"
            r.digest = payload
        elif opcode == frames.ERROR:
            r.error = frames.decode_error(payload)
        else:
            raise AssertionError(f"unexpected opcode {opcode:#x} in a FETCH answer")
    r.data = b"".join(chunks)
    return r


@dataclass
class BundleAnswer:
    """A FETCH_MANY answer: its items in the order sent, its BUNDLE frames, or its ERROR."""

    items: list[frames.BundleItem] = field(default_factory=list)
    frames: int = 0
    error: tuple[int, str] | None = None


def bundle_result(got: list[tuple[int, int, bytes]], request_id: int) -> BundleAnswer:
    """Assemble the FETCH_MANY answer for ``request_id``; asserts the response grammar."""
    r = BundleAnswer()
    for opcode, rid, payload in got:
        if rid != request_id:
            continue
        assert r.error is None, "frame after an ERROR"
        if opcode == frames.BUNDLE:
            assert len(payload) + 5 <= frames.MAX_BUNDLE_FRAME, "BUNDLE frame over the limit"
            r.items.extend(frames.decode_bundle(payload))
            r.frames += 1
        elif opcode == frames.ERROR:
            r.error = frames.decode_error(payload)
        else:
            raise AssertionError(f"unexpected opcode {opcode:#x} in a FETCH_MANY answer")
    assert [i.index for i in r.items] == list(range(len(r.items))), "items out of order"
    return r


PEER = IPv4Address("TCP", "127.0.0.1", 1234)


@dataclass
class ServerRig:
    """A content server protocol on a StringTransport, with its fake clock."""

    factory: ContentServerFactory
    proto: ContentServerProtocol
    transport: StringTransport
    clock: MemoryReactorClock
    log: FrameLog

    def send(self, opcode: int, request_id: int, payload: bytes) -> None:
        self.proto.dataReceived(frames.frame(opcode, request_id, payload))

    def list(self, request_id: int, path: str | bytes) -> None:
        raw = path if isinstance(path, bytes) else path.encode("utf-8")
        self.send(frames.LIST, request_id, raw)

    def fetch(self, request_id: int, path: str | bytes, offset: int = 0,
              length: int = frames.TO_END, delay_ms: int = 0) -> None:
        raw = path if isinstance(path, bytes) else path.encode("utf-8")
        self.send(frames.FETCH, request_id, struct.pack(">QQI", offset, length, delay_ms) + raw)

    def fetch_many(self, request_id: int, wants: Sequence[tuple[str | bytes, int]],
                   delay_ms: int = 0) -> None:
        """A FETCH_MANY of ``(path, listed size)`` pairs."""
        raw = [(p if isinstance(p, bytes) else p.encode("utf-8"), size) for p, size in wants]
        self.send(frames.FETCH_MANY, request_id, frames.encode_fetch_many(delay_ms, raw))

    @property
    def aborted(self) -> bool:
        return bool(self.transport.disconnected)

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting)


def make_factory(root: str, clock: MemoryReactorClock | None = None,
                 **settings: Any) -> ContentServerFactory:
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return ContentServerFactory(root_fd, InlineThreads(), ContentSettings(**settings),
                                clock=clock or MemoryReactorClock())


def connect_server(factory: ContentServerFactory, peer: IPv4Address = PEER) -> ServerRig:
    proto = factory.buildProtocol(peer)
    assert isinstance(proto, ContentServerProtocol), "connection refused by the limiter"
    transport = StringTransport(peerAddress=peer)
    proto.makeConnection(transport)
    # The unit tests' factories (make_factory) run on a MemoryReactorClock.
    clock = cast(MemoryReactorClock, factory.clock)
    return ServerRig(factory, proto, transport, clock, FrameLog(transport))


class RecordingSink:
    """A FetchSink that keeps what it is given."""

    def __init__(self) -> None:
        self.header: frames.FileHeader | None = None
        self.flow: Any = None
        self.pieces: list[bytes] = []

    def head(self, header: frames.FileHeader, flow: Any) -> None:
        self.header = header
        self.flow = flow

    def data(self, piece: memoryview) -> None:
        self.pieces.append(bytes(piece))

    @property
    def received(self) -> bytes:
        return b"".join(self.pieces)


@contextlib.contextmanager
def must_not_block(seconds: int = 5) -> Iterator[None]:
    """Fail (instead of hanging the suite) if the body blocks, e.g. opening a FIFO."""

    class Blocked(Exception):
        pass

    def on_alarm(signum: int, frame: Any) -> None:
        raise Blocked(f"blocked for {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)

