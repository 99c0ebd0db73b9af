"""Resources both daemons' sites use: JSON views, /healthz, /metrics, the static files."""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources as package_files
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

#: The files under mirror/web/static/ the pages use (package data), with their types.
STATIC_TYPES = {".css": b"text/css; charset=utf-8", ".js": b"text/javascript; charset=utf-8"}


def to_json(value: Any) -> bytes:
    """``value`` as JSON in ASCII: names from the network keep every character, but DEL, C1
    controls and bidi overrides arrive as ``\\uXXXX``, never raw."""
    return json.dumps(value, allow_nan=False, ensure_ascii=True, indent=1).encode("ascii") + b"\n"


class JsonResource(Resource):
    """A JSON document made by ``view()`` at each request."""

    isLeaf = True

    def __init__(self, view: Callable[[], Any]) -> None:
        super().__init__()
        self.view = view

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        return to_json(self.view())


class Healthz(Resource):
    """200 ``ok`` while the daemon serves (a load balancer's or a supervisor's probe)."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"ok\n"


def labeled_counter(name: str, documentation: str, label: str, counts: dict[str, int]
                    ) -> CounterMetricFamily:
    """A counter with one sample per ``counts`` entry, labelled ``label`` (a fixed, small set
    of values: never names from the network)."""
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, n in counts.items():
        family.add_metric([value], n)
    return family


class Metrics(Resource):
    """``registry`` in Prometheus' text format.

    Collected here, in the reactor thread: prometheus_client.twisted's resource runs the
    collection in the reactor's thread pool, where reading the daemon's live state (changed
    by the reactor thread meanwhile) would race.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)


class _Bytes(Resource):
    isLeaf = True

    def __init__(self, content_type: bytes, body: bytes) -> None:
        super().__init__()
        self.content_type = content_type
        self.body = body

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", self.content_type)
        return self.body


class Tree(Resource):
    """A directory of resources; any other name is a plain 404 page."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()


class StaticFiles(Resource):
    """The files of mirror/web/static/, read once; nothing else (no directory listing, no
    path that could leave the directory)."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[bytes, IResource] = {}
        for entry in package_files.files("mirror.web").joinpath("static").iterdir():
            suffix = "." + entry.name.rpartition(".")[2]
            if entry.is_file() and suffix in STATIC_TYPES:
                self.files[entry.name.encode("utf-8")] = _Bytes(STATIC_TYPES[suffix],
                                                                entry.read_bytes())

    def getChild(self, path: bytes, request: Request) -> IResource:
        return self.files.get(path) or notFound()


def site_root(page: IResource, apis: dict[bytes, IResource],
              registry: CollectorRegistry) -> Resource:
    """``/`` is ``page``; ``/api/NAME`` each of ``apis``; then /healthz, /metrics, /static/."""
    root = Tree()
    root.putChild(b"", page)
    api = Tree()
    for name, resource in apis.items():
        api.putChild(name, resource)
    root.putChild(b"api", api)
    root.putChild(b"healthz", Healthz())
    root.putChild(b"metrics", Metrics(registry))
    root.putChild(b"static", StaticFiles())
    return root
