"""The content server's web site: its page (connections, requests in flight, bytes served per
client, errors, the digest cache), /api/status, /api/settings, /healthz and /metrics."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.web.resource import Resource
from twisted.web.server import Request

from mirror.content_server.factory import ContentServerFactory
from mirror.content_server.observed import ERROR_NAMES
from mirror.initiator.report import format_bytes
from mirror.web import html
from mirror.web.resources import JsonResource, labeled_counter, site_root

#: Clients listed on the page and in /api/status (those that were sent the most first).
MAX_LISTED_CLIENTS = 100


def _in_flight(factory: ContentServerFactory, host: str) -> int:
    return sum(getattr(c, "in_flight", 0) for c in factory.limiter.connections(host))


def status_view(factory: ContentServerFactory) -> dict[str, Any]:
    """/api/status: what the content server is doing and has done."""
    limiter = factory.limiter
    serving = factory.serving
    hosts = set(limiter.hosts()) | set(serving.bytes_by_client)
    clients: list[dict[str, Any]] = [{"address": h, "connections": limiter.count(h),
                "requests_in_flight": _in_flight(factory, h),
                "bytes_served": serving.bytes_by_client.get(h, 0)} for h in hosts]
    clients.sort(key=lambda c: (-c["connections"], -c["bytes_served"], c["address"]))
    cache = factory.digests
    return {
        "connections": limiter.total,
        "connections_refused": limiter.refused,
        "requests_in_flight": sum(c["requests_in_flight"] for c in clients),
        "lists_walking": factory.lists,
        "bytes_served": serving.bytes_total,
        "clients": clients[:MAX_LISTED_CLIENTS],
        "errors": {name: serving.errors.get(name, 0) for name in ERROR_NAMES.values()},
        "digest_cache": {"entries": len(cache), "capacity": cache.max_entries,
                         "hits": cache.hits, "misses": cache.misses},
    }


def settings_view(factory: ContentServerFactory, web_endpoints: list[str]) -> dict[str, Any]:
    return {"daemon": "content-server", "settings": dataclasses.asdict(factory.settings),
            "web": web_endpoints}


def content_page(view: dict[str, Any]) -> bytes:
    cache = view["digest_cache"]
    lookups = cache["hits"] + cache["misses"]
    rate = f"{100 * cache['hits'] / lookups:.0f}% hits" if lookups else "no lookup yet"
    summary = [
        ("connections open", str(view["connections"])),
        ("connections refused by a cap", str(view["connections_refused"])),
        ("requests in flight", str(view["requests_in_flight"])),
        ("listings walking", str(view["lists_walking"])),
        ("bytes served", format_bytes(view["bytes_served"])),
        ("digest cache", f"{cache['entries']} / {cache['capacity']} digests, {rate}"),
    ]
    clients = [("client", [html.text(c["address"]), str(c["connections"]),
                           str(c["requests_in_flight"]), html.text(format_bytes(
                               c["bytes_served"]))]) for c in view["clients"]]
    errors = [("error", [html.text(name), str(n)]) for name, n in view["errors"].items()]
    return html.page("content-server", [
        "<header><h1>content-server</h1></header>",
        '<main id="content">',
        html.table("summary", ["figure", "value"], [("figure", [html.text(k), html.text(v)])
                                         for k, v in summary]),
        "<h2>Clients</h2>",
        html.table("clients", ["address", "connections", "requests in flight",
                               "bytes served"], clients) if clients
        else '<p class="none">No client yet.</p>',
        "<h2>Errors sent, by code</h2>",
        html.table("errors", ["code", "count"], errors),
        "</main>",
        '<footer><a href="/api/status">/api/status</a> <a href="/api/settings">'
        '/api/settings</a> <a href="/metrics">/metrics</a></footer>',
    ])


class ContentPage(Resource):
    isLeaf = True

    def __init__(self, factory: ContentServerFactory) -> None:
        super().__init__()
        self.factory = factory

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return content_page(status_view(self.factory))


class ContentCollector(Collector):
    """The content server's figures, read at each scrape."""

    def __init__(self, factory: ContentServerFactory) -> None:
        self.factory = factory

    def collect(self) -> Iterator[Metric]:
        view = status_view(self.factory)
        cache = view["digest_cache"]
        yield CounterMetricFamily("mirror_served_bytes", "Bytes sent to clients (all frames).",
                                  value=view["bytes_served"])
        yield GaugeMetricFamily("mirror_content_connections", "Client connections open.",
                                value=view["connections"])
        yield CounterMetricFamily("mirror_content_connections_refused",
                                  "Client connections refused by a cap.",
                                  value=view["connections_refused"])
        yield GaugeMetricFamily("mirror_content_requests_in_flight", "Requests in flight.",
                                value=view["requests_in_flight"])
        yield GaugeMetricFamily("mirror_content_lists_walking", "LISTs walking the tree now.",
                                value=view["lists_walking"])
        yield labeled_counter("mirror_content_errors", "ERROR answers sent, by code.", "code",
                              view["errors"])
        yield CounterMetricFamily("mirror_digest_cache_hits", "Digest cache lookups that hit.",
                                  value=cache["hits"])
        yield CounterMetricFamily("mirror_digest_cache_misses",
                                  "Digest cache lookups that missed.", value=cache["misses"])
        yield GaugeMetricFamily("mirror_digest_cache_entries", "Digests in the cache.",
                                value=cache["entries"])


def content_site_root(factory: ContentServerFactory, web_endpoints: list[str] | None = None
                      ) -> Resource:
    endpoints = list(web_endpoints or [])
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ContentCollector(factory))
    return site_root(ContentPage(factory), {
        b"status": JsonResource(lambda: status_view(factory)),
        b"settings": JsonResource(lambda: settings_view(factory, endpoints)),
    }, registry)
