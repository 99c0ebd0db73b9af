"""The mirror server's status page (``/``), rendered on the server from the /api/jobs view.

Readable as it is (no JavaScript needed; it then reloads itself every few seconds); with
JavaScript, static/status.js polls /api/jobs and redraws the same markup in place.
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from mirror.initiator.report import (
    format_bytes,
    format_rate,
    format_seconds,
    table_header,
    table_row,
)
from mirror.initiator.spec import format_source
from mirror.mirror_server.service import MirrorService
from mirror.web import html
from mirror.web.mirror_views import jobs_view
from mirror.wire.control import SourceRequest

#: The throughput chart's drawing box (SVG user units); static/status.js draws the same.
CHART_WIDTH, CHART_HEIGHT = 300, 60
#: Milliseconds between two polls of the page's script.
POLL_MS = 1000


def chart_points(series: list[list[float]]) -> str:
    """The polyline of a throughput series: time across, bytes per second up."""
    if not series:
        return ""
    t_max = max(series[-1][0], 1e-9)
    r_max = max(max(r for _, r in series), 1.0)
    return " ".join(f"{CHART_WIDTH * t / t_max:.1f},"
                    f"{CHART_HEIGHT - 2 - (CHART_HEIGHT - 4) * r / r_max:.1f}"
                    for t, r in series)


def source_label(source: dict[str, Any]) -> str:
    return format_source(SourceRequest(source["host"], source["port"], source["path"],
                                       source["delay"]))


def _status(state: str) -> str:
    return {"ok": "ok", "failed": "FAILED"}.get(state, state)


def _chart(job: dict[str, Any]) -> str:
    series = job["throughput"]
    peak = max((r for _, r in series), default=0.0)
    if job["state"] == "running":
        caption = f"{format_rate(series[-1][1] if series else 0.0)} now, peak {format_rate(peak)}"
    else:
        caption = f"{format_rate(job['totals']['throughput'])} mean, peak {format_rate(peak)}"
    return (f'<figure class="chart"><svg viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" '
            f'role="img" aria-label="throughput over time"><polyline points="'
            f'{html.text(chart_points(series))}"></polyline></svg>'
            f"<figcaption>{html.text(caption)}</figcaption></figure>")


def _bar(what: str, done: int, total: int, shown: str) -> str:
    return (f'<div class="bar"><span class="what">{html.text(what)}</span>'
            f'<progress class="{html.text(what)}" max="{max(total, 1)}" value="{done}">'
            f'</progress><span class="figure">{html.text(shown)}</span></div>')


def job_html(job: dict[str, Any]) -> str:
    """One job's section (static/status.js `renderJob` makes the same)."""
    p = job["progress"]
    meta = f"started {html.utc(job['started'])}, {format_seconds(job['elapsed'])}"
    if job["state"] == "running" and not p["listing_done"]:
        meta += ", listing"
    rows = [("source", [html.text(c) for c in table_row(source_label(s), _status(s["state"]), s)])
            for s in job["sources"]]
    rows.append(("total", [html.text(c) for c in table_row("TOTAL", _status(job["state"]),
                                                            job["totals"])]))
    out = [
        f'<section class="job" id="job-{html.text(job["id"])}" data-state="{job["state"]}">',
        f'<h2>Job {html.text(job["id"])} <span class="state {job["state"]}">'
        f'{html.text(job["state"])}</span></h2>',
        f'<p class="meta">{html.text(meta)}</p>',
        _bar("files", p["files_done"], p["files_total"],
             f"{p['files_done']} / {p['files_total']}"),
        _bar("bytes", p["bytes_done"], p["bytes_total"],
             f"{format_bytes(p['bytes_done'])} / {format_bytes(p['bytes_total'])}"),
        _chart(job),
        html.table("stats", table_header, rows),
    ]
    if job["errors"]:
        out.append('<ul class="errors">')
        for e in job["errors"]:
            where = source_label(job["sources"][e["source"]]) if e["source"] < len(
                job["sources"]) else str(e["source"])
            path = e["path"] if e["path"] is not None else "(whole source)"
            out.append(f'<li><span class="where">{html.text(where)}</span> '
                       f'<code class="path">{html.text(path)}</code> '
                       f'<span class="message">{html.text(e["message"])}</span></li>')
        out.append("</ul>")
    more = job["errors_total"] - len(job["errors"])
    if more > 0:
        out.append(f'<p class="more">{more} more errors: <a href="/api/jobs/'
                   f'{html.text(job["id"])}">/api/jobs/{html.text(job["id"])}</a></p>')
    out.append("</section>")
    return "\n".join(out)


def summary(view: dict[str, Any]) -> str:
    q = view["queue"]
    return f"{view['running']} running, queue {q['depth']} / {q['capacity']}"


def status_page(view: dict[str, Any]) -> bytes:
    """The whole page for a /api/jobs view."""
    jobs = [job_html(j) for j in view["jobs"]] or ['<p class="none">No job yet.</p>']
    return html.page("mirror-server", [
        "<header><h1>mirror-server</h1>",
        f'<p id="summary">{html.text(summary(view))}</p>',
        f'<p id="updated">as of {html.text(html.utc(view["now"]))}</p></header>',
        f'<main id="jobs" data-api="/api/jobs" data-interval="{POLL_MS}">',
        *jobs,
        "</main>",
        '<footer><a href="/api/jobs">/api/jobs</a> <a href="/api/settings">/api/settings</a> '
        '<a href="/metrics">/metrics</a></footer>',
    ], script="status.js")


class StatusPage(Resource):
    """``/``: the status page of ``service``."""

    isLeaf = True

    def __init__(self, service: MirrorService) -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return status_page(jobs_view(self.service))
