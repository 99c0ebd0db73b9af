"""The index's web site (``twistd mirror-index --web``): its page (nodes and their leases,
files, queries), /api/status, /api/settings, /healthz and /metrics.

The registry's figures come from `mirror.index.overview.OverviewService` (refreshed on the
clock, never a database query per web request); the protocol's from the factory
(`IndexActivity`, the connection limiter). Node names and addresses come from the network:
escaped on the page (`html.text`), ASCII-escaped in JSON, never metric labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.web.resource import Resource
from twisted.web.server import Request

from mirror.index.activity import QUERY_KINDS, REQUEST_KINDS
from mirror.index.factory import IndexFactory
from mirror.index.overview import OverviewService
from mirror.web import html
from mirror.web.resources import JsonResource, labeled_counter, site_root


def status_view(factory: IndexFactory, overview: OverviewService) -> dict[str, Any]:
    """/api/status: the registry at a glance and what the index answered."""
    now = factory.clock.seconds()
    seen = overview.overview
    activity = factory.activity
    return {
        "registry_read_seconds_ago": (None if overview.read_at is None
                                      else round(now - overview.read_at, 3)),
        "nodes": None if seen is None else seen.nodes,
        "files": None if seen is None else seen.files,
        "files_with_digest": None if seen is None else seen.files_with_digest,
        "leases": [] if seen is None else [
            {"node": n.node, "address": n.address, "files": n.files,
             "renewed_seconds_ago": round(n.age, 3), "expires_in_seconds": round(n.expires_in, 3)}
            for n in seen.leases],
        "connections": factory.limiter.total,
        "connections_refused": factory.limiter.refused,
        "queries": {kind: activity.queries[kind] for kind in QUERY_KINDS},
        "rows_answered": activity.rows_answered,
        "answers_truncated": activity.truncated,
        "requests": {kind: activity.requests[kind] for kind in REQUEST_KINDS},
        "errors": {str(code): n for code, n in sorted(activity.errors.items())},
    }


def settings_view(factory: IndexFactory, web_endpoints: list[str]) -> dict[str, Any]:
    return {"daemon": "mirror-index", "settings": dataclasses.asdict(factory.settings),
            "web": web_endpoints}


def _figure(value: object) -> str:
    return "-" if value is None else str(value)


def index_page(view: dict[str, Any]) -> bytes:
    queries = view["queries"]
    summary = [
        ("live nodes", _figure(view["nodes"])),
        ("files registered", _figure(view["files"])),
        ("files with a digest", _figure(view["files_with_digest"])),
        ("queries (by path / by digest)", f"{queries['path']} / {queries['digest']}"),
        ("rows answered", str(view["rows_answered"])),
        ("connections open", str(view["connections"])),
        ("connections refused by a cap", str(view["connections_refused"])),
        ("registry read", "not yet" if view["registry_read_seconds_ago"] is None
         else f"{view['registry_read_seconds_ago']:.0f} s ago"),
    ]
    leases = [("lease", [html.text(n["node"]), html.text(n["address"]), str(n["files"]),
                         f"{n['renewed_seconds_ago']:.0f} s ago",
                         f"in {n['expires_in_seconds']:.0f} s"]) for n in view["leases"]]
    return html.page("mirror-index", [
        "<header><h1>mirror-index</h1></header>",
        '<main id="content">',
        html.table("summary", ["figure", "value"],
                   [("figure", [html.text(k), html.text(v)]) for k, v in summary]),
        "<h2>Nodes and their leases</h2>",
        html.table("leases", ["node", "address", "files", "renewed", "expires"], leases)
        if leases else '<p class="none">No node registered.</p>',
        "</main>",
        '<footer><a href="/api/status">/api/status</a> <a href="/api/settings">'
        '/api/settings</a> <a href="/metrics">/metrics</a></footer>',
    ])


class IndexPage(Resource):
    isLeaf = True

    def __init__(self, factory: IndexFactory, overview: OverviewService) -> None:
        super().__init__()
        self.factory = factory
        self.overview = overview

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return index_page(status_view(self.factory, self.overview))


class IndexCollector(Collector):
    """The index's figures, read at each scrape (the registry's as last refreshed)."""

    def __init__(self, factory: IndexFactory, overview: OverviewService) -> None:
        self.factory = factory
        self.overview = overview

    def collect(self) -> Iterator[Metric]:
        view = status_view(self.factory, self.overview)
        if view["nodes"] is not None:
            yield GaugeMetricFamily("mirror_index_nodes", "Nodes with a live lease.",
                                    value=view["nodes"])
            yield GaugeMetricFamily("mirror_index_files", "Files registered by live nodes.",
                                    value=view["files"])
            yield GaugeMetricFamily("mirror_index_files_with_digest",
                                    "Files registered with their digest.",
                                    value=view["files_with_digest"])
        yield labeled_counter("mirror_index_queries", "WHERE requests, by kind.", "kind",
                              view["queries"])
        yield CounterMetricFamily("mirror_index_answered_rows", "Holder rows answered.",
                                  value=view["rows_answered"])
        yield labeled_counter("mirror_index_requests", "Registration requests from nodes, "
                              "by kind.", "kind", view["requests"])
        yield labeled_counter("mirror_index_errors", "ERROR answers sent, by code.", "code",
                              view["errors"])
        yield GaugeMetricFamily("mirror_index_connections", "Connections open.",
                                value=view["connections"])
        yield CounterMetricFamily("mirror_index_connections_refused",
                                  "Connections refused by a cap.",
                                  value=view["connections_refused"])


def index_site_root(factory: IndexFactory, overview: OverviewService,
                    web_endpoints: list[str] | None = None) -> Resource:
    endpoints = list(web_endpoints or [])
    registry = CollectorRegistry(auto_describe=True)
    registry.register(IndexCollector(factory, overview))
    return site_root(IndexPage(factory, overview), {
        b"status": JsonResource(lambda: status_view(factory, overview)),
        b"settings": JsonResource(lambda: settings_view(factory, endpoints)),
    }, registry)
