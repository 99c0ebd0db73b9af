"""Frames of the content protocol (doc/protocol.md): opcodes, codecs and the receiver.

``FrameReceiver`` is an ``Int32StringReceiver`` whose ``dataReceived`` is replaced by a linear
parser: the stock one re-concatenates its buffer on every read (quadratic in a large frame
arriving in small reads), and would buffer a whole DATA frame. Here DATA bodies are handed on
piece by piece as they arrive (``dataFrameReceived``), so a file body is never held whole in
memory; every other frame is gathered without re-copying what is already buffered and goes
to ``stringReceived`` as usual.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from twisted.protocols.basic import Int32StringReceiver

from mirror import hashing
from mirror.limits import abort_connection
from mirror.text import printable

# requests
LIST = 0x01
FETCH = 0x02
FETCH_MANY = 0x03
#: Chunk hashes of a file, for multi-source download (codecs: mirror/wire/chunk_hashes.py).
HASHES = 0x04
#: An administrator's request: who is connected (doc/protocol.md, "Access rights").
WHO = 0x09
# responses
ENTRIES = 0x81
LIST_END = 0x82
FILE = 0x83
DATA = 0x84
FILE_END = 0x85
BUNDLE = 0x86
HASHES_HEAD = 0x87
HASH_LIST = 0x88
#: WHO's answer: one frame, a JSON object (`mirror.security.presence`).
WHO_LIST = 0x89
ERROR = 0x8F

REQUEST_OPCODES = frozenset({LIST, FETCH, FETCH_MANY, HASHES, WHO})
RESPONSE_OPCODES = frozenset({ENTRIES, LIST_END, FILE, DATA, FILE_END, BUNDLE, HASHES_HEAD,
                              HASH_LIST, ERROR})

#: Largest request frame (its ``length`` field) a content server reads: a path is at most
#: 4 KiB. Fixed by the protocol, so that a client can fill a FETCH_MANY up to it.
MAX_REQUEST = 8192
#: Largest file a FETCH_MANY may ask for (its listed size), and largest BUNDLE frame (its
#: ``length`` field): a bundle answer is gathered whole, never streamed.
BUNDLE_FILE_MAX = 64 * 1024
MAX_BUNDLE_FRAME = 256 * 1024

#: FETCH length meaning "to the end of the file".
TO_END = 2**64 - 1

KIND_DIR = 1
KIND_FILE = 2
#: An error entry: the path could not be listed (doc/protocol.md); the listing goes on.
KIND_ERROR = 3
#: A symbolic link and its target, sent only to a LIST that asked for links (`LIST_LINKS`).
KIND_LINK = 4
#: The LIST option asking for link entries (doc/protocol.md, "LIST options").
LIST_LINKS = b"links"
#: Longest link target a content server sends (PATH_MAX less its NUL); a receiver refuses
#: a longer one per entry (`mirror.link_targets`).
MAX_LINK_TARGET = 4095

# error codes
E_NOT_FOUND = 1
E_NOT_ALLOWED = 2
E_BAD_REQUEST = 3
E_CHANGED = 4
E_IO = 5
E_BUSY = 6

_HEAD = struct.Struct(">BI")  # opcode, request id
_LEN = struct.Struct(">I")
_FETCH = struct.Struct(">QQI")
_LIST_END = struct.Struct(">QI")
_FILE = struct.Struct(">QQqH")
_ERROR = struct.Struct(">H")
_ENTRY = struct.Struct(">BHQqH")
_MESSAGE_LEN = struct.Struct(">H")
_FETCH_MANY = struct.Struct(">IH")  # delay_ms, count
_WANT = struct.Struct(">QH")  # listed size, path length
_ITEM = struct.Struct(">HB")  # index, status
_ITEM_FILE = struct.Struct(">QqH")  # file_size, mtime_ns, mode; then digest and bytes
_ITEM_ERROR = struct.Struct(">HH")  # code, message length; then the message
ITEM_FILE = 0
ITEM_ERROR = 1
#: Longest error message kept (ERROR frames and error entries), in bytes.
MAX_MESSAGE = 1024
#: FILE_END's payload: a BLAKE3-256 digest of the bytes sent (`mirror.hashing`).
DIGEST_SIZE = hashing.DIGEST_SIZE


class ProtocolError(Exception):
    """The peer broke the framing or the grammar: the connection cannot be trusted further."""


class Entry(NamedTuple):
    """One LIST entry; ``name`` is the raw (still unvalidated) wire path.

    An error entry (``kind`` `KIND_ERROR`) carries its error code in ``mode`` and the reason
    in ``message``. (A named tuple: made per listed name, and a frozen dataclass costs
    several times as much to make.)"""

    kind: int
    mode: int
    size: int
    mtime_ns: int
    name: bytes
    message: str = ""
    #: A link entry's target, raw and unvalidated (`mirror.link_targets.parse_target`).
    target: bytes = b""

    @property
    def is_dir(self) -> bool:
        return self.kind == KIND_DIR

    @property
    def is_link(self) -> bool:
        return self.kind == KIND_LINK

    @property
    def is_error(self) -> bool:
        return self.kind == KIND_ERROR


@dataclass(frozen=True, slots=True)
class FileHeader:
    """The FILE frame: what follows, and the file's metadata when it was opened."""

    size: int
    file_size: int
    mtime_ns: int
    mode: int


def frame(opcode: int, request_id: int, payload: bytes = b"") -> bytes:
    """A complete frame, length prefix included."""
    return _LEN.pack(5 + len(payload)) + _HEAD.pack(opcode, request_id) + payload


def frame_head(opcode: int, request_id: int, payload_len: int) -> bytes:
    """The prefix of a frame whose payload (``payload_len`` bytes) is written separately."""
    return _LEN.pack(5 + payload_len) + _HEAD.pack(opcode, request_id)


def data_header(request_id: int, body_len: int) -> bytes:
    """The prefix of a DATA frame whose body (``body_len`` bytes) is written separately."""
    return _LEN.pack(5 + body_len) + _HEAD.pack(DATA, request_id)


def encode_list(path: str, cursor: str | None = None) -> bytes:
    """A LIST payload: ``path``, and after a NUL the cursor to resume after, if any."""
    if cursor is None:
        return path.encode("utf-8")
    return path.encode("utf-8") + b"\0" + cursor.encode("utf-8")


def decode_list(payload: bytes) -> tuple[bytes, bytes | None]:
    """(raw path, raw cursor or None); both still to be validated."""
    path, sep, cursor = payload.partition(b"\0")
    return path, (cursor if sep else None)


def encode_list_options(payload: bytes, links: bool) -> bytes:
    """``payload`` (an `encode_list` one) with the options of the third LIST form:
    ``path NUL cursor NUL options``, the cursor possibly empty. Unchanged without options,
    so that a content server that knows none of them is asked the old way."""
    if not links:
        return payload
    path, _sep, cursor = payload.partition(b"\0")
    return path + b"\0" + cursor + b"\0" + LIST_LINKS


def split_list_options(payload: bytes) -> tuple[bytes, bool]:
    """(the payload `decode_list` takes, whether links were asked for); raises
    `ProtocolError` for an unknown option (so that a client asking for something this
    server does not do hears so, ERROR 3, rather than get a listing without it)."""
    pieces = payload.split(b"\0", 2)
    if len(pieces) < 3:
        return payload, False
    path, cursor, options = pieces
    if options != LIST_LINKS:
        # A NUL inside a cursor lands here too: both are bad requests.
        raise ProtocolError(f"unknown LIST option '{printable(options, 40)}' after the "
                            "cursor")
    return (path + b"\0" + cursor if cursor else path), True


def encode_fetch(path: str, offset: int = 0, length: int = TO_END, delay_ms: int = 0) -> bytes:
    return _FETCH.pack(offset, length, delay_ms) + path.encode("utf-8")


def decode_fetch(payload: bytes) -> tuple[int, int, int, bytes]:
    """(offset, length, delay_ms, raw path)"""
    if len(payload) < _FETCH.size:
        raise ProtocolError("FETCH frame too short")
    offset, length, delay_ms = _FETCH.unpack_from(payload)
    return offset, length, delay_ms, payload[_FETCH.size :]


def fetch_many_room() -> int:
    """Bytes a FETCH_MANY's files may take (see `want_size`) within `MAX_REQUEST`."""
    return MAX_REQUEST - _HEAD.size - _FETCH_MANY.size


def want_size(path: bytes) -> int:
    """Bytes one file (its encoded wire path) takes in a FETCH_MANY."""
    return _WANT.size + len(path)


def encode_fetch_many(delay_ms: int, wants: Sequence[tuple[bytes, int]]) -> bytes:
    """A FETCH_MANY payload: the files ``(encoded wire path, listed size)``, in order."""
    return _FETCH_MANY.pack(delay_ms, len(wants)) + b"".join(
        _WANT.pack(size, len(path)) + path for path, size in wants)


def split_fetch_many(wants: Sequence[tuple[bytes, int]]) -> list[tuple[int, int]]:
    """The ranges ``[start, end)`` of ``wants`` (encoded path, listed size) that each fill
    one FETCH_MANY within `MAX_REQUEST`, in order."""
    ranges = []
    room = fetch_many_room()
    start, used = 0, 0
    for i, (path, _size) in enumerate(wants):
        need = want_size(path)
        if i > start and used + need > room:
            ranges.append((start, i))
            start, used = i, 0
        used += need
    if start < len(wants):
        ranges.append((start, len(wants)))
    return ranges


def decode_fetch_many(payload: bytes) -> tuple[int, list[tuple[int, bytes]]]:
    """(delay_ms, [(listed size, raw path)]); raises `ProtocolError` if malformed."""
    if len(payload) < _FETCH_MANY.size:
        raise ProtocolError("FETCH_MANY frame too short")
    delay_ms, count = _FETCH_MANY.unpack_from(payload)
    if not count:
        raise ProtocolError("FETCH_MANY of no file")
    wants = []
    pos, end = _FETCH_MANY.size, len(payload)
    for _ in range(count):
        if end - pos < _WANT.size:
            raise ProtocolError("truncated FETCH_MANY")
        size, path_len = _WANT.unpack_from(payload, pos)
        pos += _WANT.size
        if end - pos < path_len:
            raise ProtocolError("truncated FETCH_MANY path")
        wants.append((size, payload[pos : pos + path_len]))
        pos += path_len
    if pos != end:
        raise ProtocolError("FETCH_MANY longer than its files")
    return delay_ms, wants


#: Bytes a BUNDLE file item takes besides the file's bytes.
BUNDLE_ITEM_OVERHEAD = _ITEM.size + _ITEM_FILE.size + DIGEST_SIZE


def encode_bundle_file(index: int, header: FileHeader, digest: bytes, data: bytes) -> bytes:
    """A BUNDLE item: file ``index`` of the request, whole (``header.size`` bytes)."""
    return (_ITEM.pack(index, ITEM_FILE)
            + _ITEM_FILE.pack(header.file_size, header.mtime_ns, header.mode & 0o7777)
            + digest + data)


def encode_bundle_error(index: int, code: int, message: str) -> bytes:
    """A BUNDLE item: file ``index`` of the request failed (as an ERROR frame says)."""
    text = encode_error(code, message)[_ERROR.size :]
    return _ITEM.pack(index, ITEM_ERROR) + _ITEM_ERROR.pack(code, len(text)) + text


@dataclass(slots=True)
class BundleItem:
    """One answer of a BUNDLE frame: file ``index`` of the request, whole (``size`` bytes,
    ``data`` a view of the frame, ``digest``), or, if ``error`` is set, why it failed.

    Made per file on the reactor thread: neither frozen nor holding a `FileHeader`
    (`header` makes one when asked, in the thread that writes the file)."""

    index: int
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0
    digest: bytes = b""
    data: memoryview | bytes = b""
    #: The error item's message (printable); None for a file.
    error: str | None = None
    code: int = 0

    @property
    def header(self) -> FileHeader | None:
        if self.error is not None:
            return None
        return FileHeader(self.size, self.size, self.mtime_ns, self.mode)


def decode_bundle(payload: bytes) -> list[BundleItem]:
    """Split a BUNDLE payload; raises `ProtocolError` on truncation or an unknown status."""
    items = []
    view = memoryview(payload)
    pos, end = 0, len(payload)
    while pos < end:
        if end - pos < _ITEM.size:
            raise ProtocolError("truncated BUNDLE item")
        index, status = _ITEM.unpack_from(payload, pos)
        pos += _ITEM.size
        if status == ITEM_FILE:
            if end - pos < _ITEM_FILE.size + DIGEST_SIZE:
                raise ProtocolError("truncated BUNDLE file header")
            size, mtime_ns, mode = _ITEM_FILE.unpack_from(payload, pos)
            pos += _ITEM_FILE.size
            digest = payload[pos : pos + DIGEST_SIZE]
            pos += DIGEST_SIZE
            if end - pos < size:
                raise ProtocolError("truncated BUNDLE file")
            items.append(BundleItem(index, size, mtime_ns, mode & 0o7777, digest,
                                    view[pos : pos + size]))
            pos += size
        elif status == ITEM_ERROR:
            if end - pos < _ITEM_ERROR.size:
                raise ProtocolError("truncated BUNDLE error")
            code, text_len = _ITEM_ERROR.unpack_from(payload, pos)
            pos += _ITEM_ERROR.size
            if end - pos < text_len:
                raise ProtocolError("truncated BUNDLE error message")
            message = printable(payload[pos : pos + text_len], MAX_ERROR_MESSAGE)
            items.append(BundleItem(index, error=message, code=code))
            pos += text_len
        else:
            raise ProtocolError(f"unknown BUNDLE item status {status}")
    if not items:
        raise ProtocolError("empty BUNDLE frame")
    return items


def encode_entry(kind: int, mode: int, size: int, mtime_ns: int, name: bytes) -> bytes:
    return _ENTRY.pack(kind, mode & 0o7777, size, mtime_ns, len(name)) + name


def encode_error_entry(code: int, name: bytes, message: str) -> bytes:
    """An error entry: ``name`` could not be listed, for ``message``."""
    text = message.encode("utf-8")[:MAX_MESSAGE]
    return (_ENTRY.pack(KIND_ERROR, code, 0, 0, len(name)) + name
            + _MESSAGE_LEN.pack(len(text)) + text)


def encode_link_entry(name: bytes, target: bytes, mtime_ns: int) -> bytes:
    """A link entry: ``name`` is a symbolic link to ``target`` (its bytes as read, never
    followed); mode and size are 0."""
    return (_ENTRY.pack(KIND_LINK, 0, 0, mtime_ns, len(name)) + name
            + _MESSAGE_LEN.pack(len(target)) + target)


def decode_entries(payload: bytes) -> list[Entry]:
    """Split an ENTRIES payload; raises `ProtocolError` on truncation or an unknown kind."""
    entries = []
    pos, end = 0, len(payload)
    unpack = _ENTRY.unpack_from
    size = _ENTRY.size
    while pos < end:
        if end - pos < size:
            raise ProtocolError("truncated LIST entry")
        kind, mode, fsize, mtime_ns, name_len = unpack(payload, pos)
        pos += size
        if end - pos < name_len:
            raise ProtocolError("truncated LIST entry name")
        name = payload[pos : pos + name_len]
        pos += name_len
        if kind == KIND_ERROR:
            if end - pos < _MESSAGE_LEN.size:
                raise ProtocolError("truncated LIST error entry")
            (text_len,) = _MESSAGE_LEN.unpack_from(payload, pos)
            pos += _MESSAGE_LEN.size
            if end - pos < text_len:
                raise ProtocolError("truncated LIST error entry message")
            message = printable(payload[pos : pos + text_len], MAX_MESSAGE)
            entries.append(Entry(kind, mode, 0, 0, name, message))
            pos += text_len
            continue
        if kind == KIND_LINK:
            if end - pos < _MESSAGE_LEN.size:
                raise ProtocolError("truncated LIST link entry")
            (target_len,) = _MESSAGE_LEN.unpack_from(payload, pos)
            pos += _MESSAGE_LEN.size
            if end - pos < target_len:
                raise ProtocolError("truncated LIST link entry target")
            # Raw: the receiver validates it (empty, NUL, too long: refused per entry).
            entries.append(Entry(kind, 0, 0, mtime_ns, name,
                                 target=payload[pos : pos + target_len]))
            pos += target_len
            continue
        if kind not in (KIND_DIR, KIND_FILE):
            raise ProtocolError(f"unknown LIST entry kind {kind}")
        entries.append(Entry(kind, mode & 0o7777, fsize, mtime_ns, name))
    if not entries:
        raise ProtocolError("empty ENTRIES frame")
    return entries


def encode_list_end(count: int, skipped: int) -> bytes:
    return _LIST_END.pack(count, min(skipped, 2**32 - 1))


def decode_list_end(payload: bytes) -> tuple[int, int]:
    if len(payload) != _LIST_END.size:
        raise ProtocolError("bad LIST_END frame")
    return _LIST_END.unpack(payload)


def encode_file(header: FileHeader) -> bytes:
    return _FILE.pack(header.size, header.file_size, header.mtime_ns, header.mode & 0o7777)


def decode_file(payload: bytes) -> FileHeader:
    if len(payload) != _FILE.size:
        raise ProtocolError("bad FILE frame")
    size, file_size, mtime_ns, mode = _FILE.unpack(payload)
    return FileHeader(size, file_size, mtime_ns, mode & 0o7777)


#: An ERROR frame's message is cut to this many bytes by the sender, and shown in at most
#: this many characters by the receiver.
MAX_ERROR_MESSAGE = 1024


def encode_error(code: int, message: str) -> bytes:
    data = message.encode("utf-8")
    if len(data) > MAX_ERROR_MESSAGE:
        # Cut on a character boundary: a split character would be shown as stray bytes.
        data = data[:MAX_ERROR_MESSAGE].decode("utf-8", "ignore").encode("utf-8")
    return _ERROR.pack(code) + data


def decode_error(payload: bytes) -> tuple[int, str]:
    if len(payload) < _ERROR.size:
        raise ProtocolError("bad ERROR frame")
    (code,) = _ERROR.unpack_from(payload)
    # The message is shown to users and logged: untrusted text, made printable and short.
    return code, printable(payload[_ERROR.size :], MAX_ERROR_MESSAGE)


class FrameReceiver(Int32StringReceiver):
    """Linear-time frame parser; DATA bodies are streamed, never buffered whole.

    Subclasses implement ``stringReceived(frame)`` for non-DATA frames (``frame`` still starts
    with opcode and request id; see `split_frame`) and, if they accept DATA,
    ``dataFrameReceived(request_id, piece)``. ``MAX_LENGTH`` bounds non-DATA frames,
    ``MAX_DATA_LENGTH`` DATA frames (0: DATA not accepted).
    """

    MAX_LENGTH = 256 * 1024
    MAX_DATA_LENGTH = 0

    #: Input read but not parsed yet: a partial frame (a bytearray that later reads are
    #: appended to) or, while paused, the rest of a read (kept as it came, a view of it).
    _buffer: bytes | bytearray | memoryview = b""
    #: Bytes `_buffer` must hold before parsing it again can make progress (0: at once).
    _need = 0
    _data_id: int = 0
    _data_left = 0
    #: Set by `frameError`: nothing more is parsed or delivered on this connection (a real
    #: transport's abort takes effect only after the current read has been handled).
    _broken = False

    def dataReceived(self, data: bytes) -> None:
        if self._broken:
            return
        source: bytes | memoryview = data
        if self._buffer:
            # Linear whatever the read sizes: a read that cannot complete what is buffered
            # is appended (amortised O(its length)) and not parsed; the buffer is joined
            # into one piece only once it holds the whole frame (or frame head) it waits for.
            if data:
                if not isinstance(self._buffer, bytearray):
                    self._buffer = bytearray(self._buffer)
                self._buffer += data
            if self.paused or len(self._buffer) < self._need:
                return
            held, self._buffer = self._buffer, b""
            # Parsed from an immutable copy: DATA pieces are views that sinks may keep.
            source = bytes(held) if isinstance(held, bytearray) else held
        view = memoryview(source)
        pos, end = 0, len(view)
        need = 0
        while pos < end and not self.paused and not self._broken and self.transport is not None:
            if self._data_left:
                take = min(self._data_left, end - pos)
                self._data_left -= take
                self.dataFrameReceived(self._data_id, view[pos : pos + take])
                pos += take
                continue
            if end - pos < 4:
                need = 4
                break
            (length,) = _LEN.unpack_from(view, pos)
            # Refuse a bad length prefix as soon as it is seen, not once more bytes came.
            if length < 5:
                self.frameError(f"frame length {length} too short")
                return
            if length > max(self.MAX_LENGTH, self.MAX_DATA_LENGTH + 5):
                self.lengthLimitExceeded(length)
                return
            if end - pos < 9:
                need = 9
                break
            opcode = view[pos + 4]
            if opcode == DATA and self.MAX_DATA_LENGTH:
                if length > self.MAX_DATA_LENGTH + 5:
                    self.lengthLimitExceeded(length)
                    return
                (self._data_id,) = struct.unpack_from(">I", view, pos + 5)
                self._data_left = length - 5
                pos += 9
                if not self._data_left:
                    self.dataFrameReceived(self._data_id, view[pos:pos])
                continue
            if length > self.MAX_LENGTH:
                self.lengthLimitExceeded(length)
                return
            if end - pos < 4 + length:
                need = 4 + length
                break
            self.stringReceived(bytes(view[pos + 4 : pos + 4 + length]))
            pos += 4 + length
        if pos < end and not self._broken:
            if need:
                # A partial frame head or non-DATA frame (bounded by MAX_LENGTH): copied, so
                # as not to pin the whole read, and completed by the reads that follow.
                self._buffer = bytearray(view[pos:])
            else:
                # Paused (or disconnected): the rest waits as it is, parsed on resume; not
                # copied again at every pause, and pinning no more than this one read.
                self._buffer = view[pos:]
            self._need = need

    def dataFrameReceived(self, request_id: int, piece: memoryview) -> None:
        self.frameError("unexpected DATA frame")

    def lengthLimitExceeded(self, length: int) -> None:
        self.frameError(f"frame of {length} bytes exceeds the limit")

    def frameError(self, reason: str) -> None:
        """The peer broke the framing: drop the connection without reading further."""
        self._broken = True
        self._buffer = b""
        self._data_left = 0
        if self.transport is not None:
            abort_connection(self.transport)


def split_frame(frame_bytes: bytes) -> tuple[int, int, bytes]:
    """(opcode, request id, payload) of a frame as passed to ``stringReceived``."""
    opcode, request_id = _HEAD.unpack_from(frame_bytes)
    return opcode, request_id, frame_bytes[5:]
