"""The mirror server's web site: the status page, /api/jobs, /api/settings, /healthz and
/metrics (doc/api.md), all read from the service's `JobHistory` and never changing it."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from mirror.limits import ConnectionLimiter
from mirror.mirror_server.history import OUTCOMES, SourceState
from mirror.mirror_server.service import MirrorService
from mirror.web.mirror_page import StatusPage
from mirror.web.mirror_views import job_view, jobs_view, settings_view
from mirror.web.resources import JsonResource, site_root, to_json

#: Histogram buckets of the durations (seconds): a small SPEC to a day-long one.
DURATION_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


class JobsApi(Resource):
    """``/api/jobs`` (every job kept) and ``/api/jobs/ID`` (one, with all its errors kept)."""

    def __init__(self, service: MirrorService) -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        return to_json(jobs_view(self.service))

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"":
            return self
        history = self.service.history
        record = history.get(path.decode("utf-8", "replace"))
        if record is None:
            return notFound("No Such Job", "Only the last jobs are kept.")
        return JsonResource(lambda: job_view(record, history.clock.seconds()))


class MirrorCollector(Collector):
    """The mirror server's counters and gauges, read from the service at each scrape."""

    def __init__(self, service: MirrorService, control: ConnectionLimiter | None) -> None:
        self.service = service
        self.control = control

    def collect(self) -> Iterator[Metric]:
        history = self.service.history
        per_outcome = (
            ("mirror_jobs", "Jobs ended, by outcome.", "jobs"),
            ("mirror_transferred_bytes", "Bytes of the files placed, by job outcome.", "bytes"),
            ("mirror_transferred_files", "Files placed, by job outcome.", "files"),
            ("mirror_skipped_files", "Files left alone as already current (size and mtime), "
                                     "by job outcome.", "skipped"),
            ("mirror_failed_files", "Files and entries that could not be mirrored, by job "
                                    "outcome.", "failed"),
        )
        for name, doc, attr in per_outcome:
            counter = CounterMetricFamily(name, doc, labels=["outcome"])
            for outcome in OUTCOMES:
                counter.add_metric([outcome], getattr(history.outcomes[outcome], attr))
            yield counter
        errors = CounterMetricFamily("mirror_errors", "Errors reported to clients, by scope "
                                     "(a whole SPEC, or one path).", labels=["scope"])
        for scope, n in history.errors.items():
            errors.add_metric([scope], n)
        yield errors
        running = history.running()
        yield GaugeMetricFamily("mirror_jobs_running", "Jobs running now.", value=len(running))
        progress = [r.progress() for r in running]
        yield GaugeMetricFamily("mirror_running_transferred_bytes",
                                "Bytes placed so far by the running jobs.",
                                value=sum(p.bytes_done for p in progress))
        yield GaugeMetricFamily("mirror_running_planned_bytes",
                                "Bytes the running jobs have queued so far.",
                                value=sum(p.bytes_total for p in progress))
        yield GaugeMetricFamily("mirror_queue_depth", "Files in the work queue.",
                                value=len(self.service.queue))
        yield GaugeMetricFamily("mirror_queue_capacity", "Capacity of the work queue.",
                                value=self.service.queue.size)
        if self.control is not None:
            yield GaugeMetricFamily("mirror_control_connections",
                                    "Control connections open.", value=self.control.total)
            yield CounterMetricFamily("mirror_control_connections_refused",
                                      "Control connections refused by a cap.",
                                      value=self.control.refused)
        last = GaugeMetricFamily(
            "mirror_source_last_success_timestamp_seconds",
            "Unix time a job last mirrored the source (host:port:path) with no error.",
            labels=["source"])
        for source, when in history.last_success.items():
            last.add_metric([source], when)
        yield last


def metrics_registry(service: MirrorService, control: ConnectionLimiter | None
                     ) -> CollectorRegistry:
    """A registry of its own (never the library's global one) for ``service``."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(MirrorCollector(service, control))
    listing = Histogram("mirror_listing_duration_seconds",
                        "Time from a job's start to the end of a SPEC's listing.",
                        buckets=DURATION_BUCKETS, registry=registry)
    source = Histogram("mirror_source_duration_seconds",
                       "Time to mirror one SPEC: listing and transfers.",
                       buckets=DURATION_BUCKETS, registry=registry)

    def observe(state: SourceState) -> None:
        if state.listing_elapsed is not None:
            listing.observe(state.listing_elapsed)
        source.observe(state.elapsed)

    service.history.source_listeners.append(observe)
    return registry


def mirror_site_root(service: MirrorService, control: ConnectionLimiter | None = None,
                     web_endpoints: list[str] | None = None) -> Resource:
    """The resource tree of the mirror server's site."""
    endpoints = list(web_endpoints or [])
    return site_root(StatusPage(service), {
        b"jobs": JobsApi(service),
        b"settings": JsonResource(lambda: settings_view(service, endpoints)),
    }, metrics_registry(service, control))
