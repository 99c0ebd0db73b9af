"""The final statistics of a job: a text table, or one JSON object.

`build_report` turns a `JobResult` (or the reason no result could be had) into a plain dict,
which `format_json` serialises as is and `format_text` lays out as a table. JSON keys:

``ok``
    true only if every SPEC fully succeeded (DONE ok, and every SOURCE-DONE ok).
``error``
    null, or a one-line reason the job could not be run or followed to its end (mirror
    server unreachable, refused, connection lost, timeout).
``job_id``
    the mirror server's name for the job, or null.
``elapsed``
    seconds from connecting to the mirror server to the end, measured by mirror-init.
``resumed``
    how many times the mirror server resumed the job after a restart (files placed after
    its journal's last commit before a restart are then counted as ``skipped``).
``cancelled``
    true if this mirror-init cancelled the job (Ctrl-C, SIGTERM, ``--timeout``).
``sources``
    one object per SPEC, in order: ``index``, ``host`` (no brackets), ``port``, ``path``
    (``"."`` for the whole export), ``delay`` (seconds), ``ok``, ``reported`` (false when no
    SOURCE-DONE arrived: every figure below is then null), ``files`` and ``dirs``
    transferred, ``bytes`` transferred, ``sum_sq`` (sum of squared file sizes), ``mean_size``,
    ``variance`` (population, bytes squared), ``stddev`` (bytes), ``cv`` (stddev / mean),
    ``skipped``, ``not_exported``, ``failed``, ``elapsed`` (seconds, as measured by the
    mirror server),
    ``throughput`` (bytes per second over that time), and ``errors``: a list of
    ``{"path": wire path or null for the whole source, "message": text}``.
``dry_run``
    true for ``--dry-run``: nothing was changed, and ``files``, ``bytes``, ``replaced`` and
    ``deleted`` are what the job would have transferred, replaced and deleted.
``sources`` (sync figures)
    with ``--delete`` or ``--dry-run`` each source also has ``replaced`` (files that
    replaced an older version or an entry of another type), ``deleted`` (entries deleted:
    files, links and directories), ``deleted_bytes`` (sizes of the deleted files) and
    ``deletion`` (``"off"``, ``"done"``, ``"skipped"`` after a listing with errors,
    ``"refused"`` over ``--max-delete``); all null when the server did not report them.
``links``, ``links_skipped``, ``skipped_links`` (per SPEC)
    symbolic links placed (new or changed), links skipped (unsafe targets, or every link
    with ``--no-links``), both null if the mirror server did not say (an older one), and
    the skipped links reported one by one: ``{"path": wire path or null, "message": why}``.
``sources`` (holders)
    when files were fetched from several holders at once (multi-source download), each
    source also has ``holders``: a list of ``{"holder": "HOST:PORT", "bytes": n}``, the
    verified bytes of those files each holder served (the SPEC's own server included),
    most first; an empty list for a source without such files.
``totals``
    the same figures over all reported sources (``mean_size``, ``variance`` etc. over every
    transferred file), with ``elapsed`` = the job's ``elapsed`` and ``throughput`` = bytes
    per second over it; ``errors`` is a count here, ``errors_dropped`` the errors received
    but not kept (beyond the client's limit).

Figures count files transferred in this job; ``skipped`` counts files (and links) already
current (same size and mtime; the same target) and left alone, ``failed`` the files and
entries (unsafe names and malformed link targets included, and paths the content server
could not list) that could not be mirrored. ``not_exported`` counts what the content server
did not list: special files, names that are not valid wire paths, links whose target is not
valid UTF-8 text, and every link if the content server is too old to list links (a lower
bound when a paused listing was resumed: the
count of a listing closed before its end is lost).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mirror.initiator.client import JobResult
from mirror.initiator.spec import format_source
from mirror.stats import SizeStats
from mirror.text import printable
from mirror.wire.control import SourceRequest

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
#: Whole-source errors shown under the text table (per-file errors were shown live).
MAX_TEXT_ERRORS = 20


def format_bytes(n: float) -> str:
    """A byte count in binary units: ``512 B``, ``1.5 KiB``, ``12.0 MiB``."""
    if n < 1024:
        return f"{n:.0f} B"
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def format_rate(bytes_per_second: float) -> str:
    return format_bytes(bytes_per_second) + "/s"


#: Longest duration `format_clock` spells out; longer ones (an ETA at a crawl) are shown as
#: more than this.
MAX_CLOCK = 9999 * 3600 + 59 * 60 + 59


def format_clock(seconds: float) -> str:
    """A duration as ``m:ss`` or ``h:mm:ss``; beyond `MAX_CLOCK`, ``>9999:59:59``."""
    if not seconds < MAX_CLOCK + 0.5:  # also nan and inf
        return ">9999:59:59"
    total = int(round(max(seconds, 0.0)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_seconds(seconds: float) -> str:
    """A duration for the report: ``0.42 s``, ``12.3 s``, or ``1:02:03``."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return format_clock(seconds)


#: Shortest time a throughput is computed over: a server reporting 1e-300 s must not make it
#: infinite (which JSON cannot carry) or absurdly long to print.
MIN_ELAPSED = 1e-6


def _throughput(nbytes: int, seconds: float) -> float:
    return nbytes / max(seconds, MIN_ELAPSED) if seconds > 0 else 0.0


def _figures(stats: SizeStats, dirs: int, skipped: int, failed: int, elapsed: float,
             not_exported: int = 0) -> dict[str, Any]:
    return {
        "files": stats.count,
        "dirs": dirs,
        "bytes": stats.total,
        "sum_sq": stats.sum_sq,
        "mean_size": stats.mean,
        "variance": stats.variance,
        "stddev": stats.stddev,
        "cv": stats.cv,
        "skipped": skipped,
        "not_exported": not_exported,
        "failed": failed,
        "elapsed": elapsed,
        "throughput": _throughput(stats.total, elapsed),
    }


_NULL_FIGURES = dict.fromkeys(_figures(SizeStats(), 0, 0, 0, 0.0))
#: Public: the mirror server's web API reports the same figures under the same keys.
figures = _figures


_SYNC_KEYS = ("replaced", "deleted", "deleted_bytes", "deletion")


def build_report(
    sources: Sequence[SourceRequest],
    result: JobResult | None,
    elapsed: float,
    error: str | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (see the module docstring for its keys).

    ``result`` is None when the job could not be followed to DONE; ``error`` then says why.
    """
    per_source = []
    totals = SizeStats()
    dirs = skipped = failed = not_exported = 0
    for index, source in enumerate(sources):
        done = result.source_done[index] if result is not None else None
        entry: dict[str, Any] = {
            "index": index,
            "host": source.host,
            "port": source.port,
            "path": source.path or ".",
            "delay": source.delay,
            "ok": result.source_ok(index) if result is not None else False,
            "reported": done is not None,
        }
        if done is not None:
            stats = SizeStats.from_sums(done.files, done.bytes, done.sum_sq)
            entry.update(_figures(stats, done.dirs, done.skipped, done.failed, done.elapsed,
                                  done.not_exported))
            totals.merge(stats)
            dirs += done.dirs
            skipped += done.skipped
            not_exported += done.not_exported
            failed += done.failed
        else:
            entry.update(_NULL_FIGURES)
        sync = result.source_sync[index] if result is not None else None
        if sync is not None:
            entry.update(replaced=sync.replaced, deleted=sync.deleted,
                         deleted_bytes=sync.deleted_bytes, deletion=sync.deletion)
        elif result is not None and any(result.source_sync):
            entry.update(dict.fromkeys(_SYNC_KEYS))
        if result is not None and any(result.source_holders):
            entry["holders"] = [{"holder": h, "bytes": n} for h, n in sorted(
                result.source_holders[index].items(), key=lambda kv: (-kv[1], kv[0]))]
        entry["errors"] = [
            {"path": e.path, "message": e.message}
            for e in (result.errors if result is not None else ())
            if e.index == index
        ]
        per_source.append(entry)
    _add_links(per_source, result)
    total_figures = _figures(totals, dirs, skipped, failed, elapsed, not_exported)
    for key in ("links", "links_skipped"):
        total_figures[key] = sum(entry[key] or 0 for entry in per_source)
    total_figures["errors"] = len(result.errors) if result is not None else 0
    total_figures["errors_dropped"] = result.errors_dropped if result is not None else 0
    if result is not None and any(result.source_sync):
        for key in _SYNC_KEYS[:3]:
            total_figures[key] = sum(e[key] or 0 for e in per_source)
    return {
        "ok": result is not None and error is None and result.ok,
        "error": error,
        "job_id": result.job_id if result is not None else None,
        "elapsed": elapsed,
        "resumed": result.resumed if result is not None else 0,
        "cancelled": result.cancelled if result is not None else False,
        "dry_run": dry_run,
        "sources": per_source,
        "totals": total_figures,
    }


def _add_links(per_source: list[dict[str, Any]], result: JobResult | None) -> None:
    """The link figures of each SPEC (`build_report`'s ``links`` keys)."""
    for index, entry in enumerate(per_source):
        done = result.links_done[index] if result is not None else None
        entry["links"] = done.placed if done is not None else None
        entry["links_skipped"] = done.skipped if done is not None else None
        entry["skipped_links"] = [
            {"path": e.path, "message": e.message}
            for e in (result.links_skipped if result is not None else ())
            if e.index == index
        ]


def _links_text(report: dict[str, Any]) -> list[str]:
    """Lines about links under the table: per SPEC with any, its counts and (up to
    `MAX_TEXT_ERRORS` in all) the skipped links with the reason."""
    lines = []
    shown = 0
    for entry in report["sources"]:
        if not entry["links"] and not entry["links_skipped"] and not entry["skipped_links"]:
            continue
        lines.append(f"links of {_source_label(entry)}: {entry['links'] or 0} placed, "
                     f"{entry['links_skipped'] or 0} skipped")
        for item in entry["skipped_links"]:
            if shown == MAX_TEXT_ERRORS:
                lines.append("  ... more skipped links in --json")
                return lines
            shown += 1
            where = printable(item["path"]) if item["path"] is not None else "-"
            lines.append(f"  {where}: {printable(item['message'])}")
    return lines


def format_json(report: dict[str, Any]) -> str:
    """One JSON object on one line, newline-terminated, in ASCII.

    Names and messages are kept exactly (a JSON parser gets them back), but every non-ASCII
    character is written ``\\uXXXX``: JSON itself escapes only U+0000-U+001F, and DEL, the
    C1 controls (U+009B is a CSI) and bidi overrides must not reach a terminal raw either.
    """
    import json  # here, not at the top: mirror-init's start-up is part of every job's time

    return json.dumps(report, allow_nan=False, ensure_ascii=True) + "\n"


def _source_label(entry: dict[str, Any]) -> str:
    source = SourceRequest(entry["host"], entry["port"], entry["path"], entry["delay"])
    return printable(format_source(source))


def _row(label: str, status: str, fig: dict[str, Any]) -> list[str]:
    if fig["files"] is None:
        return [label, status] + ["-"] * 12
    return [
        label,
        status,
        str(fig["files"]),
        str(fig["dirs"]),
        format_bytes(fig["bytes"]),
        format_bytes(fig["mean_size"]),
        f"{fig['variance']:.4g}",
        format_bytes(fig["stddev"]),
        f"{fig['cv']:.2f}",
        str(fig["skipped"]),
        str(fig["not_exported"]),
        str(fig["failed"]),
        format_seconds(fig["elapsed"]),
        format_rate(fig["throughput"]),
    ]


_HEADER = [
    "SOURCE", "STATUS", "FILES", "DIRS", "BYTES", "MEAN", "VARIANCE(B^2)", "STDDEV", "CV",
    "SKIPPED", "NOT-EXPORTED", "FAILED", "TIME", "THROUGHPUT",
]  # fmt: skip
#: Public: the mirror server's status page shows the same table.
table_header = _HEADER
table_row = _row


def _sync_table(report: dict[str, Any]) -> list[str]:
    """Replaced and deleted figures per SPEC and in total, when the server sent them."""
    totals = report["totals"]
    if "deleted" not in totals:
        return []
    rows = [["SOURCE", "REPLACED", "DELETED", "DELETED-BYTES", "DELETION"]]
    for entry in report["sources"]:
        if entry.get("deletion") is None:
            rows.append([_source_label(entry), "-", "-", "-", "-"])
        else:
            rows.append([_source_label(entry), str(entry["replaced"]), str(entry["deleted"]),
                         format_bytes(entry["deleted_bytes"]), entry["deletion"]])
    rows.append(["TOTAL", str(totals["replaced"]), str(totals["deleted"]),
                 format_bytes(totals["deleted_bytes"]), ""])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join([row[0].ljust(widths[0])]
                      + [c.rjust(w) for c, w in zip(row[1:4], widths[1:4], strict=True)]
                      + [row[4]]).rstrip()
            for row in rows]


def _holders_lines(report: dict[str, Any]) -> list[str]:
    """Bytes per holder of each SPEC's multi-source files, when there were any."""
    lines = []
    for entry in report["sources"]:
        if entry.get("holders"):
            lines.append(f"from several holders ({_source_label(entry)}): " + ", ".join(
                f"{printable(h['holder'])} {format_bytes(h['bytes'])}"
                for h in entry["holders"]))
    return lines


def format_text(report: dict[str, Any]) -> str:
    """The report as a table, one row per SPEC and a TOTAL row, then whole-source errors."""
    rows = [_HEADER]
    for entry in report["sources"]:
        status = "ok" if entry["ok"] else ("FAILED" if entry["reported"] else "NO RESULT")
        rows.append(_row(_source_label(entry), status, entry))
    rows.append(_row("TOTAL", "ok" if report["ok"] else "FAILED", report["totals"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    lines = []
    if report["job_id"] is not None:
        lines.append(f"job {printable(report['job_id'])}")
    if report.get("dry_run"):
        lines.append("dry run: nothing was changed; the figures are what the job would do")
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines += _sync_table(report)
    lines.extend(_links_text(report))
    lines += _holders_lines(report)
    notes = []
    for entry in report["sources"]:
        for err in entry["errors"]:
            if err["path"] is None:
                notes.append(f"  {_source_label(entry)}: {printable(err['message'])}")
    if notes:
        lines.append("errors concerning whole sources:")
        lines.extend(notes[:MAX_TEXT_ERRORS])
        if len(notes) > MAX_TEXT_ERRORS:
            lines.append(f"  ... and {len(notes) - MAX_TEXT_ERRORS} more")
    file_errors = report["totals"]["errors"] + report["totals"]["errors_dropped"] - len(notes)
    if file_errors > 0:
        lines.append(f"{file_errors} error(s) on individual paths, shown as they happened")
    if report["error"] is not None:
        lines.append(f"job not completed: {printable(report['error'])}")
    lines.append(f"elapsed {format_seconds(report['elapsed'])}; " + (
        "every source mirrored" if report["ok"] else "some sources FAILED"
    ))
    return "\n".join(lines) + "\n"
