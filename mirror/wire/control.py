"""Codec of the control protocol (mirror-init <-> mirror-server), no I/O.

See doc/protocol.md, "Control protocol". Lines are handled without their terminator: the
receivers split on ``\\n`` and the parsers here drop one trailing ``\\r``, so ``\\r\\n`` and
``\\n`` are both accepted. Every parser raises `ControlError` (a `ValueError`) on anything
malformed and nothing else, whatever the bytes: the lines come from the network.

Encoding choices the protocol text leaves open, fixed here for both sides:

- a field is never empty. The whole export is sent as ``.`` in SOURCE; in ERROR the path
  ``-`` means "the whole source" (`SourceError.path` is ``None``), ``.`` means the request
  path ``""``, and a real path spelled ``-`` or ``.`` is sent percent-encoded (``%2D``,
  ``%2E``) so the three can never be confused;
- messages may be empty (an empty last field, as in ``REFUSED `` with a trailing space);
- paths and messages are percent-encoded UTF-8 with only ``A-Z a-z 0-9 _ . - ~ /`` left
  literal. The decoder accepts any visible ASCII literally except ``%``, which must start
  ``%XX``; the decoded bytes must be valid UTF-8;
- numbers are ASCII digits only (no sign, space, ``_`` or other Unicode digits), at most
  `MAX_DIGITS` of them; seconds are ``DIGITS[.DIGITS]``, never an exponent, nan or inf;
- every number is also held to a range that makes sense for it, whichever side sends it:
  counts and byte figures to `MAX_COUNT`, a sum of squares to ``MAX_COUNT**2`` (and to what
  its count and sum allow), elapsed times to `MAX_ELAPSED`, delays to `MAX_DELAY`. A server
  cannot make mirror-init print a number hundreds of digits long;
- the encoders never produce a line longer than ``MAX_LINE - 2`` bytes (room for ``\\r\\n``):
  an over-long message, or the path of an ERROR about a name too long to be valid, is
  shortened and ends with ``…``. Paths and numbers are validated, so a line that could not
  be parsed back is refused with `ControlError` rather than sent.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple
from urllib.parse import quote

from mirror.filters import Pattern, PatternError
from mirror.paths import UnsafePath, join_parts, parse_user_path
from mirror.stats import SizeStats
from mirror.text import printable

#: Longest line either side accepts, terminator excluded.
MAX_LINE = 16384
#: Most SOURCE lines in one job.
MAX_SOURCES = 64
#: Longest delay a SOURCE may ask for, in seconds.
MAX_DELAY = 86400.0
#: Most digits in an integer field: sums of squares of 64-bit totals need 39.
MAX_DIGITS = 64
#: Largest count or byte figure (files, dirs, bytes, ... in PROGRESS and SOURCE-DONE): what an
#: unsigned 64-bit integer holds, as the content protocol's sizes.
MAX_COUNT = 2**64 - 1
#: Largest elapsed time in SOURCE-DONE, in seconds (about 31 years).
MAX_ELAPSED = 1e9
#: Longest host name or address (DNS names are at most 253 bytes).
MAX_HOST_BYTES = 255
#: Longest job identifier.
MAX_JOB_ID = 128
#: Largest time stamp (seconds since the epoch) in JOB-STATE.
MAX_TIME = 1e11

# Room left for the terminator so a line plus "\r\n" never exceeds MAX_LINE.
_MAX_ENCODED = MAX_LINE - 2
_ELLIPSIS = "\u2026"

_DIGITS = re.compile(rb"[0-9]+")
_SECONDS = re.compile(rb"[0-9]+(?:\.[0-9]+)?")
_HEX = b"0123456789abcdefABCDEF"


class ControlError(ValueError):
    """A control line that is malformed or cannot be encoded; the message says what."""


# -- messages -------------------------------------------------------------------------------
# Named tuples, not dataclasses: mirror-init imports them, and making dataclasses (and
# importing their module) was half of its start-up, which every job pays (bench/NOTES.md).
# A field named ``index`` or ``count`` shadows the tuple method of that name.


class SourceRequest(NamedTuple):
    """One SPEC: mirror ``path`` (``""`` = the whole export) from ``host``:``port``."""

    host: str
    port: int
    path: str
    delay: float


class JobOption(NamedTuple):
    """OPTION: a job-wide option; ``value`` for those that take one (`OPTION_NAMES`)."""

    name: str
    value: int | None = None


class FilterRule(NamedTuple):
    """FILTER: one ``--include`` (``include``) or ``--exclude`` pattern, in order."""

    include: bool
    pattern: str


class BwLimit(NamedTuple):
    """BWLIMIT: the job's transfers share at most ``rate`` bytes per second (``--bwlimit``)."""

    rate: int


class Go(NamedTuple):
    """The job is complete: start it."""


class LinksOption(NamedTuple):
    """LINKS: what the job does with symbolic links: ``safe`` (place those whose target
    stays inside the tree, rsync --links --safe-links) or ``skip`` (none, --no-links). It
    also asks the server for LINK-SKIPPED and LINKS-DONE, which an older client would not
    understand and so never gets."""

    mode: str


#: The modes of LINKS.
LINKS_MODES = ("safe", "skip")


class JobAccepted(NamedTuple):
    """JOB: the server took the job and named it."""

    job_id: str


class Progress(NamedTuple):
    """PROGRESS over the whole job; the totals grow until ``listing_done``."""

    files_done: int
    bytes_done: int
    files_total: int
    bytes_total: int
    listing_done: bool


class SourceError(NamedTuple):
    """ERROR concerning source ``index``: at ``path``, or the whole source if ``path`` is None."""

    index: int  # type: ignore[assignment]  # (tuple.index)
    path: str | None
    message: str


class SourceDone(NamedTuple):
    """SOURCE-DONE: the figures of one source.

    ``files``, ``bytes`` and ``sum_sq`` cover the files transferred in this job, so they obey
    ``bytes**2 <= files * sum_sq`` and ``sum_sq <= bytes**2`` (and are all 0 together); the
    parser refuses figures that no set of file sizes can produce. ``not_exported`` is what
    the content server counted and did not list (links, special files, names that are not
    valid wire paths).
    """

    index: int  # type: ignore[assignment]  # (tuple.index)
    ok: bool
    files: int
    dirs: int
    bytes: int
    sum_sq: int
    skipped: int
    failed: int
    elapsed: float
    not_exported: int = 0


#: Deletion outcome of a SPEC in SOURCE-SYNC.
DELETION_STATES = ("off", "done", "skipped", "refused")


class SourceSync(NamedTuple):
    """SOURCE-SYNC: what a SPEC replaced and deleted (or, in a dry run, would have).

    ``deletion`` is one of `DELETION_STATES`: ``off`` without --delete, ``done`` when the
    deletion ran, ``skipped`` when the listing had errors, ``refused`` when --max-delete was
    exceeded (nothing deleted in the job).
    """

    index: int  # type: ignore[assignment]  # (tuple.index)
    replaced: int
    deleted: int
    deleted_bytes: int
    deletion: str


#: SOURCE-HOLDER lines a server sends per SPEC at most (the holders that served most).
MAX_HOLDER_LINES = 64
#: Longest holder address (``host:port``, an IPv6 host in brackets) in a SOURCE-HOLDER.
MAX_HOLDER = 300


class SourceHolder(NamedTuple):
    """SOURCE-HOLDER: bytes of the SPEC's multi-source files that came from one holder."""

    index: int  # type: ignore[assignment]  # (tuple.index)
    holder: str
    bytes: int


class LinkSkipped(NamedTuple):
    """LINK-SKIPPED: a link of source ``index`` at ``path`` was not placed, and why (it is
    not a failure); ``path`` None: a notice about the source's links."""

    index: int  # type: ignore[assignment]  # (tuple.index)
    path: str | None
    message: str


class LinksDone(NamedTuple):
    """LINKS-DONE: the links of source ``index``: ``placed`` (new or changed) and
    ``skipped`` (unsafe, or all with ``LINKS skip``); sent just before its SOURCE-DONE."""

    index: int  # type: ignore[assignment]  # (tuple.index)
    placed: int
    skipped: int


class Done(NamedTuple):
    """DONE: the job is over; ``ok`` if every source fully succeeded."""

    ok: bool


class Refused(NamedTuple):
    """REFUSED: the server would not run the job (or the client's line was malformed)."""

    message: str


class Attach(NamedTuple):
    """ATTACH: follow the job ``job_id`` (running or finished) instead of submitting one."""

    job_id: str


class ListJobs(NamedTuple):
    """JOBS: list the jobs the server knows (running, and finished ones it still keeps)."""


class Cancel(NamedTuple):
    """CANCEL: cancel the job ``job_id``."""

    job_id: str


class Spec(NamedTuple):
    """SPEC: source ``index`` of an attached job (its SOURCE, as submitted)."""

    index: int  # type: ignore[assignment]  # (tuple.index)
    source: SourceRequest


class Resumed(NamedTuple):
    """RESUMED: the job was resumed ``count`` times after a restart of the mirror server
    (files placed after the journal's last commit before it count as skipped)."""

    count: int  # type: ignore[assignment]  # (tuple.count)


#: States of a job in JOB-STATE.
JOB_STATES = ("running", "ok", "failed", "cancelled")


class JobState(NamedTuple):
    """JOB-STATE: one line of the answer to JOBS."""

    job_id: str
    state: str
    submitted: float
    files_done: int
    bytes_done: int
    #: The SPECs, as ``HOST:PORT:PATH`` joined by ``,`` (shortened with an ellipsis if long).
    specs: str


class Cancelled(NamedTuple):
    """CANCELLED: the answer to CANCEL, the job is being cancelled."""

    job_id: str


ClientMessage = (SourceRequest | JobOption | FilterRule | BwLimit | LinksOption | Go | Attach
                 | ListJobs | Cancel)
ServerEvent = (JobAccepted | Progress | SourceError | SourceSync | SourceHolder | SourceDone
               | Done | Refused | LinkSkipped | LinksDone | Spec | Resumed | JobState | Cancelled)

#: The OPTION names and whether each takes a value (an integer up to `MAX_COUNT`).
OPTION_NAMES = {"delete": False, "dry-run": False, "max-delete": True,
                "no-multi-source": False}


# -- field codecs ---------------------------------------------------------------------------


def _show(raw: bytes | str) -> str:
    """Untrusted bytes or text in an error message: quoted, short, `mirror.text.printable`."""
    return f"'{printable(raw, 40)}'"


def _quote(text: str) -> str:
    # backslashreplace: a name that reached the server as undecodable bytes (surrogate
    # escapes) must still produce a line, never an exception in the server.
    return quote(text, safe="/", errors="backslashreplace")


def _unquote(raw: bytes, what: str) -> str:
    """Strictly decode a percent-encoded field."""
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        b = raw[i]
        if b == 0x25:  # '%'
            hexits = raw[i + 1 : i + 3]
            if len(hexits) != 2 or hexits[0] not in _HEX or hexits[1] not in _HEX:
                raise ControlError(f"bad percent-encoding in {what}: {_show(raw)}")
            out.append(int(hexits, 16))
            i += 3
        elif 0x21 <= b <= 0x7E:
            out.append(b)
            i += 1
        else:
            raise ControlError(f"{what} has a byte that must be percent-encoded: {_show(raw)}")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise ControlError(f"{what} is not valid UTF-8 once decoded: {_show(raw)}") from None


def _encode_int(value: int, what: str, maximum: int = MAX_COUNT) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ControlError(f"{what} must be an integer, not {value!r}")
    if value < 0:
        raise ControlError(f"{what} must not be negative: {value}")
    if value > maximum:
        raise ControlError(f"{what} out of range (at most {maximum}): {_show_int(value)}")
    return str(value)


def _parse_int(raw: bytes, what: str, maximum: int = MAX_COUNT) -> int:
    # fullmatch on bytes: int() alone would take '+1', ' 1', '1_000' and '١'.
    if len(raw) > MAX_DIGITS or not _DIGITS.fullmatch(raw):
        raise ControlError(f"{what} is not a decimal number: {_show(raw)}")
    value = int(raw)
    if value > maximum:
        raise ControlError(f"{what} out of range (at most {maximum}): {_show(raw)}")
    return value


def _show_int(value: int) -> str:
    """An integer for an error message, shortened if long."""
    text = str(value) if value.bit_length() < 1000 else "a huge number"
    return text if len(text) <= 40 else text[:40] + "..."


def _check_seconds(value: float, what: str, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ControlError(f"{what} must be a number of seconds, not {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ControlError(f"{what} must be finite: {value}")
    if value < 0:
        raise ControlError(f"{what} must not be negative: {value}")
    if maximum is not None and value > maximum:
        raise ControlError(f"{what} must be at most {maximum:g} seconds: {value}")
    return value + 0.0  # turns -0.0 into 0.0


def _encode_seconds(value: float, what: str, maximum: float) -> str:
    value = _check_seconds(value, what, maximum)
    # repr() is the shortest text that reads back as the same float, but it may use an
    # exponent (1e-05), which the wire does not allow: re-spell it in fixed notation.
    text = repr(value)
    if "e" not in text:
        return text
    from decimal import Decimal  # only for such floats: mirror-init's start-up counts

    return format(Decimal(text), "f")


def _parse_seconds(raw: bytes, what: str, maximum: float) -> float:
    if len(raw) > 400 or not _SECONDS.fullmatch(raw):
        raise ControlError(f"{what} is not a decimal number of seconds: {_show(raw)}")
    return _check_seconds(float(raw), what, maximum)


def _encode_flag(value: bool, yes: str, no: str) -> str:
    return yes if value else no


def _parse_flag(raw: bytes, yes: bytes, no: bytes, what: str) -> bool:
    if raw == yes:
        return True
    if raw == no:
        return False
    raise ControlError(f"{what} must be {yes.decode()!r} or {no.decode()!r}: {_show(raw)}")


def check_host(host: str) -> str:
    """Validate a host name or address as sent in SOURCE (no brackets); return it.

    Refuses the empty string, spaces, control and other non-printable characters, ``/`` and
    brackets, and names longer than `MAX_HOST_BYTES`.
    """
    if not isinstance(host, str) or not host:
        raise ControlError("empty host")
    for ch in host:
        if ch == " " or not ch.isprintable():
            raise ControlError(f"host has a space or control character: {_show(host)}")
        if ch in "/[]":
            raise ControlError(f"host must not contain {ch!r}: {_show(host)}")
    try:
        size = len(host.encode("utf-8"))
    except UnicodeEncodeError:
        raise ControlError(f"host is not valid UTF-8: {_show(host)}") from None
    if size > MAX_HOST_BYTES:
        raise ControlError(f"host longer than {MAX_HOST_BYTES} bytes")
    return host


def check_port(port: int) -> int:
    """Validate a TCP port number (1..65535); return it."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ControlError(f"port must be 1..65535, not {port!r}")
    return port


def check_request_path(path: str) -> str:
    """Validate a request path with `mirror.paths` and return its canonical form.

    ``.``, ``/`` and ``""`` become ``""`` (the whole export); one leading or trailing ``/``
    is dropped.
    """
    try:
        return join_parts(parse_user_path(path))
    except UnsafePath as e:
        raise ControlError(f"bad path {_show(path)}: {e}") from None


def check_delay(delay: float) -> float:
    """Validate a delay in seconds: finite, 0 <= delay <= `MAX_DELAY`; return it as a float."""
    return _check_seconds(delay, "delay", MAX_DELAY)


def _fit(text: str, room: int) -> str:
    """Percent-encode ``text``, shortened with an ellipsis to at most ``room`` bytes."""
    encoded = _quote(text)
    if len(encoded) <= room:
        return encoded
    # Cut on a character boundary so the result still decodes as UTF-8.
    tail = _quote(_ELLIPSIS)
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(_quote(text[:mid])) + len(tail) <= room:
            lo = mid
        else:
            hi = mid - 1
    return _quote(text[:lo]) + tail


def _join(*fields: str) -> bytes:
    return " ".join(fields).encode("utf-8")  # only a host can be non-ASCII


# -- client -> server -----------------------------------------------------------------------


def encode_source(req: SourceRequest) -> bytes:
    """The SOURCE line for ``req``, without terminator. Raises `ControlError` if invalid."""
    path = check_request_path(req.path)
    wire_path = _quote(path) if path else "."
    line = _join(
        "SOURCE",
        check_host(req.host),
        str(check_port(req.port)),
        wire_path,
        _encode_seconds(req.delay, "delay", MAX_DELAY),
    )
    if len(line) > _MAX_ENCODED:
        raise ControlError("SOURCE line too long")
    return line


def encode_option(option: JobOption) -> bytes:
    """The OPTION line for ``option``, without terminator. Raises `ControlError` if invalid."""
    takes_value = OPTION_NAMES.get(option.name)
    if takes_value is None:
        raise ControlError(f"unknown option {_show(option.name)}")
    if not takes_value:
        if option.value is not None:
            raise ControlError(f"option {option.name} takes no value")
        return _join("OPTION", option.name)
    if option.value is None:
        raise ControlError(f"option {option.name} needs a value")
    return _join("OPTION", option.name, _encode_int(option.value, option.name))


def check_pattern(pattern: str) -> str:
    """Validate an include/exclude pattern (`mirror.filters`); return it."""
    try:
        Pattern(pattern)
    except PatternError as e:
        raise ControlError(str(e)) from None
    return pattern


def encode_filter(rule: FilterRule) -> bytes:
    """The FILTER line for ``rule``, without terminator. Raises `ControlError` if invalid."""
    line = _join("FILTER", "include" if rule.include else "exclude",
                 _quote(check_pattern(rule.pattern)))
    if len(line) > _MAX_ENCODED:
        raise ControlError("FILTER line too long")
    return line


def encode_bwlimit(limit: BwLimit) -> bytes:
    """The BWLIMIT line, without terminator (a rate of at least 1 byte per second)."""
    if limit.rate == 0:
        raise ControlError("a BWLIMIT rate must be at least 1 (no line means no limit)")
    return _join("BWLIMIT", _encode_int(limit.rate, "rate"))


def encode_links(option: LinksOption) -> bytes:
    """The LINKS line, without terminator."""
    if option.mode not in LINKS_MODES:
        raise ControlError(f"LINKS mode must be one of {', '.join(LINKS_MODES)}")
    return _join("LINKS", option.mode)


def encode_go() -> bytes:
    """The GO line, without terminator."""
    return b"GO"


def _split(line: bytes) -> tuple[bytes, list[bytes]]:
    if not isinstance(line, bytes):
        raise ControlError("a control line must be bytes")
    if line.endswith(b"\r"):
        line = line[:-1]
    if len(line) > MAX_LINE:
        raise ControlError(f"line longer than {MAX_LINE} bytes")
    if not line:
        raise ControlError("empty line")
    words = line.split(b" ")
    return words[0], words[1:]


def _expect(command: bytes, args: list[bytes], count: int) -> None:
    if len(args) != count:
        fields = "field" if count == 1 else "fields"
        raise ControlError(f"{command.decode('ascii')} takes {count} {fields}, got {len(args)}")


def encode_request(message: Attach | ListJobs | Cancel) -> bytes:
    """The line of an ATTACH, JOBS or CANCEL request, without terminator."""
    if isinstance(message, Attach):
        return _join("ATTACH", _check_job_id(message.job_id))
    if isinstance(message, Cancel):
        return _join("CANCEL", _check_job_id(message.job_id))
    if isinstance(message, ListJobs):
        return b"JOBS"
    raise ControlError(f"not a request: {message!r}")


def _parse_job_id(raw: bytes) -> str:
    try:
        return _check_job_id(raw.decode("ascii"))
    except UnicodeDecodeError:
        raise ControlError(f"job id is not ASCII: {_show(raw)}") from None


def _parse_source_fields(host_raw: bytes, port_raw: bytes, path_raw: bytes,
                         delay_raw: bytes) -> SourceRequest:
    try:
        host = host_raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ControlError(f"host is not valid UTF-8: {_show(host_raw)}") from None
    port = _parse_int(port_raw, "port")
    if not path_raw:
        raise ControlError("empty path field ('.' is the whole export)")
    return SourceRequest(
        host=check_host(host),
        port=check_port(port),
        path=check_request_path(_unquote(path_raw, "path")),
        delay=_parse_seconds(delay_raw, "delay", MAX_DELAY),
    )


def parse_client_line(line: bytes) -> ClientMessage:
    """Parse a line from mirror-init. Raises `ControlError` with the reason."""
    command, args = _split(line)
    if command in (b"ATTACH", b"CANCEL"):
        _expect(command, args, 1)
        job_id = _parse_job_id(args[0])
        return Attach(job_id) if command == b"ATTACH" else Cancel(job_id)
    if command == b"JOBS":
        _expect(command, args, 0)
        return ListJobs()
    if command == b"SOURCE":
        _expect(command, args, 4)
        return _parse_source_fields(*args)
    if command == b"BWLIMIT":
        _expect(command, args, 1)
        rate = _parse_int(args[0], "rate")
        if rate == 0:
            raise ControlError("a BWLIMIT rate must be at least 1 byte per second")
        return BwLimit(rate)
    if command == b"GO":
        _expect(command, args, 0)
        return Go()
    if command == b"OPTION":
        if not args:
            raise ControlError("OPTION takes a name")
        name = args[0].decode("ascii", "replace")
        takes_value = OPTION_NAMES.get(name)
        if takes_value is None:
            raise ControlError(f"unknown option {_show(args[0])}")
        _expect(command, args, 2 if takes_value else 1)
        return JobOption(name, _parse_int(args[1], name) if takes_value else None)
    if command == b"FILTER":
        _expect(command, args, 2)
        include = _parse_flag(args[0], b"include", b"exclude", "filter kind")
        return FilterRule(include, check_pattern(_unquote(args[1], "pattern")))
    if command == b"LINKS":
        _expect(command, args, 1)
        for mode in LINKS_MODES:
            if args[0] == mode.encode("ascii"):
                return LinksOption(mode)
        raise ControlError(f"LINKS mode must be one of {', '.join(LINKS_MODES)}: "
                           f"{_show(args[0])}")
    raise ControlError(f"unknown command {_show(command)}")


# -- server -> client -----------------------------------------------------------------------


def _check_index(index: int) -> str:
    text = _encode_int(index, "source index")
    if index >= MAX_SOURCES:
        raise ControlError(f"source index {index} out of range (at most {MAX_SOURCES} sources)")
    return text


def _parse_index(raw: bytes) -> int:
    index = _parse_int(raw, "source index")
    if index >= MAX_SOURCES:
        raise ControlError(f"source index {index} out of range (at most {MAX_SOURCES} sources)")
    return index


def _check_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not job_id:
        raise ControlError("empty job id")
    if len(job_id) > MAX_JOB_ID or not all("!" <= ch <= "~" for ch in job_id):
        raise ControlError(f"job id must be 1..{MAX_JOB_ID} visible ASCII characters")
    return job_id


def check_job_id(job_id: str) -> str:
    """Validate a job id (1 to `MAX_JOB_ID` visible ASCII characters); return it."""
    return _check_job_id(job_id)


def check_size_sums(files: int, total: int, sum_sq: int) -> None:
    """Refuse ``(files, total, sum_sq)`` that no list of ``files`` non-negative integer sizes has.

    Without this, a confused peer could make the reported variance negative.
    """
    try:
        SizeStats.from_sums(files, total, sum_sq)
    except ValueError as e:
        raise ControlError(str(e)) from None


def _encode_path_field(path: str | None, room: int) -> str:
    if path is None:
        return "-"
    if path == "":
        return "."
    if path == "-":
        return "%2D"
    if path == ".":
        return "%2E"
    return _fit(path, room)


def _parse_path_field(raw: bytes) -> str | None:
    if raw == b"-":
        return None
    if raw == b".":
        return ""
    if not raw:
        raise ControlError("empty path field")
    return _unquote(raw, "path")


def _check_holder(holder: str) -> str:
    if not isinstance(holder, str) or not 0 < len(holder) <= MAX_HOLDER:
        raise ControlError(f"holder must be 1 to {MAX_HOLDER} characters")
    return holder


def _encode_holder(holder: str) -> str:
    return _quote(_check_holder(holder))


def encode_event(ev: ServerEvent) -> bytes:
    """The line for a server event, without terminator. Raises `ControlError` if invalid."""
    if isinstance(ev, JobAccepted):
        return _join("JOB", _check_job_id(ev.job_id))
    if isinstance(ev, Progress):
        return _join(
            "PROGRESS",
            _encode_int(ev.files_done, "files done"),
            _encode_int(ev.bytes_done, "bytes done"),
            _encode_int(ev.files_total, "files total"),
            _encode_int(ev.bytes_total, "bytes total"),
            _encode_flag(ev.listing_done, "1", "0"),
        )
    if isinstance(ev, (SourceError, LinkSkipped)):
        head = ("ERROR " if isinstance(ev, SourceError) else "LINK-SKIPPED ")
        head += _check_index(ev.index) + " "
        if not isinstance(ev.message, str):
            raise ControlError("error message must be text")
        if ev.path is not None and not isinstance(ev.path, str):
            raise ControlError("error path must be text or None")
        # The path gets what it needs first (it identifies the file); a long message is cut.
        path = _encode_path_field(ev.path, _MAX_ENCODED - len(head) - 1 - len(_quote(_ELLIPSIS)))
        message = _fit(ev.message, _MAX_ENCODED - len(head) - len(path) - 1)
        return (head + path + " " + message).encode("ascii")
    if isinstance(ev, LinksDone):
        return _join("LINKS-DONE", _check_index(ev.index), _encode_int(ev.placed, "placed"),
                     _encode_int(ev.skipped, "skipped"))
    if isinstance(ev, SourceDone):
        check_size_sums(ev.files, ev.bytes, ev.sum_sq)
        return _join(
            "SOURCE-DONE",
            _check_index(ev.index),
            _encode_flag(ev.ok, "ok", "failed"),
            _encode_int(ev.files, "files"),
            _encode_int(ev.dirs, "dirs"),
            _encode_int(ev.bytes, "bytes"),
            _encode_int(ev.sum_sq, "sum of squares", MAX_COUNT**2),
            _encode_int(ev.skipped, "skipped"),
            _encode_int(ev.failed, "failed"),
            _encode_seconds(ev.elapsed, "elapsed", MAX_ELAPSED),
            _encode_int(ev.not_exported, "not exported"),
        )
    if isinstance(ev, SourceSync):
        if ev.deletion not in DELETION_STATES:
            raise ControlError(f"deletion state must be one of {', '.join(DELETION_STATES)}")
        return _join(
            "SOURCE-SYNC",
            _check_index(ev.index),
            _encode_int(ev.replaced, "replaced"),
            _encode_int(ev.deleted, "deleted"),
            _encode_int(ev.deleted_bytes, "deleted bytes"),
            ev.deletion,
        )
    if isinstance(ev, SourceHolder):
        return _join("SOURCE-HOLDER", _check_index(ev.index), _encode_holder(ev.holder),
                     _encode_int(ev.bytes, "bytes"))
    if isinstance(ev, Done):
        return _join("DONE", _encode_flag(ev.ok, "ok", "failed"))
    if isinstance(ev, Spec):
        return _join("SPEC", _check_index(ev.index),
                     encode_source(ev.source)[len(b"SOURCE "):].decode("utf-8"))
    if isinstance(ev, Resumed):
        return _join("RESUMED", _encode_int(ev.count, "resumed count"))
    if isinstance(ev, JobState):
        if ev.state not in JOB_STATES:
            raise ControlError(f"unknown job state {ev.state!r}")
        fields = _join("JOB-STATE", _check_job_id(ev.job_id), ev.state,
                     _encode_seconds(ev.submitted, "submitted", MAX_TIME),
                     _encode_int(ev.files_done, "files done"),
                     _encode_int(ev.bytes_done, "bytes done"))
        return fields + b" " + _fit(ev.specs or "-", _MAX_ENCODED - len(fields) - 1).encode()
    if isinstance(ev, Cancelled):
        return _join("CANCELLED", _check_job_id(ev.job_id))
    if isinstance(ev, Refused):
        if not isinstance(ev.message, str):
            raise ControlError("refusal message must be text")
        return _join("REFUSED", _fit(ev.message, _MAX_ENCODED - len("REFUSED ")))
    raise ControlError(f"not a server event: {ev!r}")


def parse_server_line(line: bytes) -> ServerEvent:
    """Parse a line from the mirror server. Raises `ControlError` with the reason."""
    command, args = _split(line)
    if command == b"JOB":
        _expect(command, args, 1)
        try:
            job_id = args[0].decode("ascii")
        except UnicodeDecodeError:
            raise ControlError(f"job id is not ASCII: {_show(args[0])}") from None
        return JobAccepted(_check_job_id(job_id))
    if command == b"PROGRESS":
        _expect(command, args, 5)
        return Progress(
            files_done=_parse_int(args[0], "files done"),
            bytes_done=_parse_int(args[1], "bytes done"),
            files_total=_parse_int(args[2], "files total"),
            bytes_total=_parse_int(args[3], "bytes total"),
            listing_done=_parse_flag(args[4], b"1", b"0", "listing-done"),
        )
    if command in (b"ERROR", b"LINK-SKIPPED"):
        _expect(command, args, 3)
        kind = SourceError if command == b"ERROR" else LinkSkipped
        return kind(
            index=_parse_index(args[0]),
            path=_parse_path_field(args[1]),
            message=_unquote(args[2], "message"),
        )
    if command == b"LINKS-DONE":
        _expect(command, args, 3)
        return LinksDone(_parse_index(args[0]), _parse_int(args[1], "placed"),
                         _parse_int(args[2], "skipped"))
    if command == b"SOURCE-DONE":
        _expect(command, args, 10)
        done = SourceDone(
            index=_parse_index(args[0]),
            ok=_parse_flag(args[1], b"ok", b"failed", "status"),
            files=_parse_int(args[2], "files"),
            dirs=_parse_int(args[3], "dirs"),
            bytes=_parse_int(args[4], "bytes"),
            sum_sq=_parse_int(args[5], "sum of squares", MAX_COUNT**2),
            skipped=_parse_int(args[6], "skipped"),
            failed=_parse_int(args[7], "failed"),
            elapsed=_parse_seconds(args[8], "elapsed", MAX_ELAPSED),
            not_exported=_parse_int(args[9], "not exported"),
        )
        check_size_sums(done.files, done.bytes, done.sum_sq)
        return done
    if command == b"SOURCE-SYNC":
        _expect(command, args, 5)
        state = args[4].decode("ascii", "replace")
        if state not in DELETION_STATES:
            raise ControlError(f"deletion state must be one of {', '.join(DELETION_STATES)}: "
                               f"{_show(args[4])}")
        return SourceSync(
            index=_parse_index(args[0]),
            replaced=_parse_int(args[1], "replaced"),
            deleted=_parse_int(args[2], "deleted"),
            deleted_bytes=_parse_int(args[3], "deleted bytes"),
            deletion=state,
        )
    if command == b"SOURCE-HOLDER":
        _expect(command, args, 3)
        return SourceHolder(_parse_index(args[0]), _check_holder(_unquote(args[1], "holder")),
                            _parse_int(args[2], "bytes"))
    if command == b"DONE":
        _expect(command, args, 1)
        return Done(_parse_flag(args[0], b"ok", b"failed", "status"))
    if command == b"REFUSED":
        _expect(command, args, 1)
        return Refused(_unquote(args[0], "message"))
    if command == b"SPEC":
        _expect(command, args, 5)
        return Spec(_parse_index(args[0]), _parse_source_fields(*args[1:]))
    if command == b"RESUMED":
        _expect(command, args, 1)
        return Resumed(_parse_int(args[0], "resumed count"))
    if command == b"JOB-STATE":
        _expect(command, args, 6)
        state = args[1].decode("ascii", "replace")
        if state not in JOB_STATES:
            raise ControlError(f"unknown job state {_show(args[1])}")
        return JobState(_parse_job_id(args[0]), state,
                        _parse_seconds(args[2], "submitted", MAX_TIME),
                        _parse_int(args[3], "files done"), _parse_int(args[4], "bytes done"),
                        _unquote(args[5], "specs"))
    if command == b"CANCELLED":
        _expect(command, args, 1)
        return Cancelled(_parse_job_id(args[0]))
    raise ControlError(f"unknown command {_show(command)}")


__all__ = [
    "MAX_COUNT",
    "MAX_DELAY",
    "MAX_ELAPSED",
    "MAX_LINE",
    "MAX_SOURCES",
    "JOB_STATES",
    "MAX_HOLDER_LINES",
    "DELETION_STATES",
    "OPTION_NAMES",
    "Attach",
    "BwLimit",
    "Cancel",
    "Cancelled",
    "ClientMessage",
    "ControlError",
    "Done",
    "FilterRule",
    "JobOption",
    "Go",
    "JobAccepted",
    "JobState",
    "LinkSkipped",
    "LinksDone",
    "LinksOption",
    "ListJobs",
    "Progress",
    "Refused",
    "Resumed",
    "ServerEvent",
    "SourceDone",
    "SourceError",
    "SourceRequest",
    "SourceHolder",
    "SourceSync",
    "Spec",
    "check_delay",
    "check_host",
    "check_job_id",
    "check_pattern",
    "check_port",
    "check_request_path",
    "check_size_sums",
    "encode_bwlimit",
    "encode_event",
    "encode_filter",
    "encode_go",
    "encode_links",
    "encode_option",
    "encode_request",
    "encode_source",
    "parse_client_line",
    "parse_server_line",
]
