"""The index protocol's messages: framing, JSON payloads, and the checks every value passes.

Standard library only: ``mirror-where`` imports this and must start fast. A frame is the
content protocol's (``length:uint32be opcode:uint8 request_id:uint32be payload``); the payload
of every index message is one JSON object (UTF-8). Everything decoded here comes from a peer
we do not control: `decode` refuses a frame that is too long, not UTF-8, not strict JSON
(duplicate keys, NaN, floats where integers belong), a message with unknown or missing
fields, and every field outside its range, raising `BadMessage` with a short reason.
"""

from __future__ import annotations

import ipaddress
import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mirror import paths

# Opcodes, client -> index.
HELLO = 0x21
RENEW = 0x22
BEGIN = 0x23
FILES = 0x24
REMOVE = 0x25
END = 0x26
WITHDRAW = 0x27
WHERE = 0x28
# Opcodes, index -> client.
OK = 0xA0
HOLDERS = 0xA1
DONE = 0xA2
ERROR = 0xAF

REQUESTS = {HELLO, RENEW, BEGIN, FILES, REMOVE, END, WITHDRAW, WHERE}
ANSWERS = {OK, HOLDERS, DONE, ERROR}

#: The longest frame either side accepts (``length`` included). A client fills FILES and
#: REMOVE up to it, the index fills HOLDERS up to it.
MAX_FRAME = 256 * 1024
#: Longest node identity (a name today, a certificate fingerprint once access control lands).
MAX_NODE = 256
#: Longest advertised HOST:PORT.
MAX_ADDRESS = 300
#: Longest error message.
MAX_MESSAGE = 1024
MAX_SIZE = 2**63 - 1
#: Rows a client takes from one WHERE answer at most (a hostile index cannot make it hold more).
MAX_ROWS = 1_000_000
MIN_MTIME = -(2**63)
MAX_MTIME = 2**63 - 1
DIGEST_HEX = 64

# Error codes (as the content protocol's, plus index-specific ones).
E_BAD_REQUEST = 3
E_BUSY = 6
E_NOT_REGISTERED = 7
E_LIMIT = 8

_HEAD = struct.Struct(">IBI")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
_NODE = re.compile(r"^[\x21-\x7e]+$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class BadMessage(ValueError):
    """A frame or message that breaks the protocol; the text says why (for an ERROR)."""


@dataclass(frozen=True)
class FileRecord:
    """One file a node holds: wire path, size, mtime (ns), digest (hex, or None: not yet)."""

    path: str
    size: int
    mtime_ns: int
    digest: str | None = None

    def to_wire(self) -> list[Any]:
        return [self.path, self.size, self.mtime_ns, self.digest]


@dataclass(frozen=True)
class Holder:
    """One answer row: which node holds a file, where it is reached, and its lease."""

    node: str
    address: str
    path: str
    size: int
    mtime_ns: int
    digest: str | None
    #: Seconds since the node last renewed its lease, and until the lease runs out.
    age: float
    expires_in: float

    def to_wire(self) -> dict[str, Any]:
        return {"node": self.node, "address": self.address, "path": self.path,
                "size": self.size, "mtime_ns": self.mtime_ns, "digest": self.digest,
                "age": round(self.age, 3), "expires_in": round(self.expires_in, 3)}


def frame(opcode: int, request_id: int, message: dict[str, Any]) -> bytes:
    """One frame carrying ``message``; raises `BadMessage` if it would exceed `MAX_FRAME`."""
    payload = json.dumps(message, separators=(",", ":"), ensure_ascii=False,
                         allow_nan=False).encode("utf-8")
    if 9 + len(payload) > MAX_FRAME:
        raise BadMessage(f"message of {len(payload)} bytes exceeds the frame limit")
    return _HEAD.pack(5 + len(payload), opcode, request_id) + payload


def split(frame_bytes: bytes) -> tuple[int, int, bytes]:
    """(opcode, request id, payload) of a frame without its length prefix."""
    if len(frame_bytes) < 5:
        raise BadMessage("frame too short")
    opcode, request_id = struct.unpack_from(">BI", frame_bytes)
    return opcode, request_id, frame_bytes[5:]


def read_frames(buffer: bytearray) -> Iterator[bytes]:
    """Complete frames (without length prefix) taken off the front of ``buffer``; for a
    blocking client (``mirror-where``). Raises `BadMessage` for an impossible length."""
    while len(buffer) >= 4:
        (length,) = struct.unpack_from(">I", buffer)
        if length < 5 or length + 4 > MAX_FRAME:
            raise BadMessage(f"frame length {length} out of range")
        if len(buffer) < 4 + length:
            return
        yield bytes(buffer[4 : 4 + length])
        del buffer[: 4 + length]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BadMessage(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise BadMessage(f"{name} is not allowed")


def _no_float(text: str) -> Any:
    # Floats are never needed from a client; refusing them also bounds the parsing cost.
    raise BadMessage("non-integer number")


def parse_payload(payload: bytes, allow_floats: bool = False) -> dict[str, Any]:
    """The JSON object a frame carries (strict: see the module docstring)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise BadMessage("payload is not UTF-8") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates,
                           parse_constant=_no_constant,
                           parse_float=float if allow_floats else _no_float)
    except BadMessage:
        raise
    except (ValueError, RecursionError) as e:
        raise BadMessage(f"payload is not JSON ({type(e).__name__})") from None
    if not isinstance(value, dict):
        raise BadMessage("payload is not a JSON object")
    return value


def _fields(message: dict[str, Any], required: set[str], optional: frozenset[str] = frozenset()
            ) -> None:
    missing = required - message.keys()
    if missing:
        raise BadMessage(f"missing field {sorted(missing)[0]!r}")
    extra = message.keys() - required - optional
    if extra:
        raise BadMessage(f"unknown field {_short(sorted(extra)[0])!r}")


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:40] + "\u2026"


def integer(value: Any, name: str, low: int, high: int) -> int:
    """``value`` if it is a JSON integer (never a bool) in ``[low, high]``."""
    if type(value) is not int or not low <= value <= high:
        raise BadMessage(f"{name} must be an integer from {low} to {high}")
    return value


def wire_path(value: Any, empty_ok: bool = False) -> str:
    """A valid wire path (see doc/protocol.md, "Names on the wire")."""
    if not isinstance(value, str):
        raise BadMessage("path must be a string")
    if empty_ok and value == "":
        return value
    try:
        paths.parse_wire_path(value)
    except paths.UnsafePath as e:
        raise BadMessage(f"bad path: {e}") from None
    return value


def digest(value: Any) -> str:
    """A BLAKE3 digest as 64 lowercase hex digits."""
    if not isinstance(value, str) or not _DIGEST.match(value):
        raise BadMessage(f"digest must be {DIGEST_HEX} lowercase hex digits")
    return value


def node_name(value: Any) -> str:
    """A node identity: 1 to `MAX_NODE` printable ASCII characters, no space."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NODE or not _NODE.match(value):
        raise BadMessage(f"node must be 1 to {MAX_NODE} printable ASCII characters, no space")
    return value


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (``[v6]:PORT`` for IPv6) as (host, port); raises `BadMessage`."""
    if not isinstance(text, str) or not 3 <= len(text) <= MAX_ADDRESS:
        raise BadMessage("address must be HOST:PORT")
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not port_text.isascii() or len(port_text) > 5:
        raise BadMessage("address must be HOST:PORT")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise BadMessage("address port must be from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise BadMessage("address has a bad IPv6 host") from None
        return host[1:-1], port
    if not _HOSTNAME.match(host):
        raise BadMessage("address has a bad host name (IPv6 goes in brackets)")
    return host, port


def format_address(host: str, port: int) -> str:
    """The HOST:PORT form of (host, port), IPv6 in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def address(value: Any) -> str:
    parse_address(value)
    return str(value)


def file_record(value: Any) -> FileRecord:
    if not isinstance(value, list) or len(value) != 4:
        raise BadMessage("a file is [path, size, mtime_ns, digest]")
    path, size, mtime_ns, file_digest = value
    return FileRecord(wire_path(path), integer(size, "size", 0, MAX_SIZE),
                      integer(mtime_ns, "mtime_ns", MIN_MTIME, MAX_MTIME),
                      None if file_digest is None else digest(file_digest))


def _list(message: dict[str, Any], name: str) -> list[Any]:
    value = message[name]
    if not isinstance(value, list) or not value:
        raise BadMessage(f"{name} must be a non-empty list")
    return value


@dataclass(frozen=True)
class Request:
    """A decoded client request: its opcode, id, and the checked fields it carries."""

    opcode: int
    request_id: int
    node: str = ""
    address: str = ""
    files: tuple[FileRecord, ...] = ()
    paths: tuple[str, ...] = ()
    #: WHERE: a path (``""``: the whole index) or a digest, exactly one of them.
    path: str | None = None
    digest: str | None = None


def decode_request(frame_bytes: bytes) -> Request:
    """A client's request frame (without length prefix), every field checked."""
    opcode, request_id, payload = split(frame_bytes)
    if opcode not in REQUESTS:
        raise BadMessage(f"unknown opcode 0x{opcode:02x}")
    if request_id == 0:
        raise BadMessage("request id 0 is reserved")
    message = parse_payload(payload)
    if opcode == HELLO:
        _fields(message, {"node", "address"})
        return Request(opcode, request_id, node=node_name(message["node"]),
                       address=address(message["address"]))
    if opcode == FILES:
        _fields(message, {"files"})
        files = tuple(file_record(f) for f in _list(message, "files"))
        if len({f.path for f in files}) != len(files):
            raise BadMessage("a path is listed twice")
        return Request(opcode, request_id, files=files)
    if opcode == REMOVE:
        _fields(message, {"paths"})
        return Request(opcode, request_id,
                       paths=tuple(wire_path(p) for p in _list(message, "paths")))
    if opcode == WHERE:
        _fields(message, set(), frozenset({"path", "digest"}))
        if ("path" in message) == ("digest" in message):
            raise BadMessage("WHERE takes a path or a digest")
        if "path" in message:
            return Request(opcode, request_id, path=wire_path(message["path"], empty_ok=True))
        return Request(opcode, request_id, digest=digest(message["digest"]))
    _fields(message, set())
    return Request(opcode, request_id)


def holder(value: Any) -> Holder:
    """A HOLDERS row, checked (``mirror-where`` shows it to a user)."""
    if not isinstance(value, dict):
        raise BadMessage("a holder is an object")
    _fields(value, {"node", "address", "path", "size", "mtime_ns", "digest", "age",
                    "expires_in"})
    age, expires_in = value["age"], value["expires_in"]
    for name, number in (("age", age), ("expires_in", expires_in)):
        if type(number) not in (int, float) or not 0 <= number <= 10**9:
            raise BadMessage(f"{name} out of range")
    return Holder(node_name(value["node"]), address(value["address"]), wire_path(value["path"]),
                  integer(value["size"], "size", 0, MAX_SIZE),
                  integer(value["mtime_ns"], "mtime_ns", MIN_MTIME, MAX_MTIME),
                  None if value["digest"] is None else digest(value["digest"]),
                  float(age), float(expires_in))


def decode_answer(frame_bytes: bytes) -> tuple[int, int, dict[str, Any]]:
    """An index's answer frame: (opcode, request id, message); HOLDERS rows are checked
    by `holders_of`, ERROR fields here."""
    opcode, request_id, payload = split(frame_bytes)
    if opcode not in ANSWERS:
        raise BadMessage(f"unknown opcode 0x{opcode:02x}")
    message = parse_payload(payload, allow_floats=True)
    if opcode == ERROR:
        _fields(message, {"code", "message"})
        integer(message["code"], "code", 0, 65535)
        if not isinstance(message["message"], str):
            raise BadMessage("message must be a string")
    return opcode, request_id, message


def holders_of(message: dict[str, Any]) -> list[Holder]:
    _fields(message, {"holders"})
    rows = message["holders"]
    if not isinstance(rows, list):
        raise BadMessage("holders must be a list")
    return [holder(row) for row in rows]


def error_message(code: int, text: str) -> dict[str, Any]:
    return {"code": code, "message": text[:MAX_MESSAGE]}


def batches(items: list[Any], key: str, limit: int = MAX_FRAME) -> Iterator[list[Any]]:
    """``items`` cut into runs whose frame ``{key: run}`` stays within ``limit`` bytes."""
    run: list[Any] = []
    size = len(json.dumps({key: []})) + 9
    for item in items:
        item_size = len(json.dumps(item, separators=(",", ":"), ensure_ascii=False)
                        .encode("utf-8")) + 1
        if run and size + item_size > limit:
            yield run
            run, size = [], len(json.dumps({key: []})) + 9
        run.append(item)
        size += item_size
    if run:
        yield run
