"""The mirror server's jobs and settings as JSON-ready dicts (doc/api.md describes them).

The same figures as mirror-init's report (`mirror.initiator.report.figures`), read from the
service's `JobHistory`; the status page renders exactly these dicts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mirror.initiator.report import figures
from mirror.mirror_server.history import JobHistory, JobRecord, SourceState
from mirror.mirror_server.service import MirrorService
from mirror.stats import SizeStats

#: Errors of each job in /api/jobs (all those kept are in /api/jobs/ID).
LIST_ERRORS = 10


def job_state(record: JobRecord) -> str:
    if record.running:
        return "running"
    return "ok" if record.ok else "failed"


def _source_view(state: SourceState) -> dict[str, Any]:
    view: dict[str, Any] = {
        "index": state.index, "host": state.host, "port": state.port, "path": state.path,
        "delay": state.delay,
        "state": ("ok" if state.ok else "failed") if state.done else "running",
        "ok": state.ok,
    }
    view.update(figures(state.stats, state.dirs, state.skipped, state.failed, state.elapsed,
                        state.not_exported))
    view["listing_elapsed"] = state.listing_elapsed
    return view


def throughput(samples: list[tuple[float, int, int]]) -> list[list[float]]:
    """``[seconds since start, bytes per second over the interval ending then]`` per sample."""
    out = []
    for (t0, b0, _), (t1, b1, _) in zip(samples, samples[1:], strict=False):
        if t1 > t0:
            out.append([round(t1, 3), max(b1 - b0, 0) / (t1 - t0)])
    return out


def job_view(record: JobRecord, now: float, max_errors: int | None = None) -> dict[str, Any]:
    """One job: its state, progress, throughput, per-SPEC figures and totals, its errors."""
    sources = record.source_states(now)
    totals = SizeStats()
    dirs = skipped = failed = not_exported = 0
    for s in sources:
        totals.merge(s.stats)
        dirs += s.dirs
        skipped += s.skipped
        failed += s.failed
        not_exported += s.not_exported
    elapsed = (record.ended if record.ended is not None else now) - record.started
    errors = record.errors if max_errors is None else record.errors[:max_errors]
    return {
        "id": record.id,
        "state": job_state(record),
        "started": record.started,
        "ended": record.ended,
        "elapsed": max(elapsed, 0.0),
        "progress": dataclasses.asdict(record.progress()),
        "throughput": throughput(record.samples),
        "sources": [_source_view(s) for s in sources],
        "totals": figures(totals, dirs, skipped, failed, max(elapsed, 0.0), not_exported),
        "errors": [{"source": i, "path": p, "message": m} for i, p, m in errors],
        "errors_total": len(record.errors) + record.errors_dropped,
    }


def jobs_view(service: MirrorService) -> dict[str, Any]:
    """/api/jobs: the running jobs and the recent ones, newest first."""
    history: JobHistory = service.history
    now = history.clock.seconds()
    return {
        "now": now,
        "running": len(history.running()),
        "queue": {"depth": len(service.queue), "capacity": service.queue.size},
        "jobs": [job_view(r, now, LIST_ERRORS) for r in history.recent()],
    }


def settings_view(service: MirrorService, web_endpoints: list[str]) -> dict[str, Any]:
    """/api/settings: the daemon's settings and limits (no secrets: it has none)."""
    return {
        "daemon": "mirror-server",
        "mirror_dir": service.mirror_dir,
        "settings": dataclasses.asdict(service.settings),
        "web": web_endpoints,
    }
