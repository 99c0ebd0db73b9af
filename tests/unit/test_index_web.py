"""The index's web site (issue 13 for ``twistd mirror-index --web``): nodes and leases,
files, queries, on a protocol and an inline registry; names from the network escaped;
/metrics parsed with the Prometheus parser."""

from __future__ import annotations

import io
import json
import sys

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mirror.index import codec, tap as index_tap
from mirror.index.factory import IndexFactory
from mirror.index.overview import OverviewService
from mirror.index.settings import IndexSettings
from mirror.web.index_site import index_site_root
from tests.unit.index_helpers import inline_registry
from tests.unit.test_index_protocol import Peer
from tests.unit.test_web import http_get

D = "d" * 64
HOSTILE = "<script>alert(1)</script>"


class IndexSiteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        registry, _ = inline_registry()
        self.factory = IndexFactory(registry, self.clock, IndexSettings(lease=60))
        self.overview = OverviewService(registry, self.clock, interval=2.0)
        self.overview.startService()
        self.addCleanup(self.overview.stopService)
        self.root = index_site_root(self.factory, self.overview, ["tcp:0:interface=127.0.0.1"])

    def register(self, node: str, address: str, files: list[list[object]]) -> Peer:
        peer = Peer(self.factory)
        peer.ask(codec.HELLO, {"node": node, "address": address})
        peer.ask(codec.BEGIN, {})
        peer.ask(codec.FILES, {"files": files})
        peer.ask(codec.END, {})
        return peer

    def get_json(self, path: str) -> dict:
        status, headers, body = http_get(self.root, path)
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "application/json")
        return json.loads(body)

    def test_nodes_files_leases_and_queries(self) -> None:
        self.assertEqual(self.get_json("/api/status")["nodes"], 0)  # read at start
        self.register(HOSTILE, "10.0.0.1:9000", [["a", 1, 0, D], ["b", 2, 0, None]])
        asker = self.register("n2", "10.0.0.2:9000", [["a", 1, 0, D]])
        asker.where(digest=D)
        asker.where(path="a")
        self.clock.advance(10)  # the overview is read again; the leases are 10 s old
        view = self.get_json("/api/status")
        self.assertEqual((view["nodes"], view["files"], view["files_with_digest"]), (2, 3, 2))
        self.assertEqual(view["leases"], [
            {"node": HOSTILE, "address": "10.0.0.1:9000", "files": 2,
             "renewed_seconds_ago": 10.0, "expires_in_seconds": 50.0},
            {"node": "n2", "address": "10.0.0.2:9000", "files": 1,
             "renewed_seconds_ago": 10.0, "expires_in_seconds": 50.0}])
        self.assertEqual(view["queries"], {"path": 1, "digest": 1})
        self.assertEqual(view["rows_answered"], 4)
        self.assertEqual(view["requests"]["hello"], 2)
        self.assertEqual(view["requests"]["files"], 2)
        status, headers, page = http_get(self.root, "/")
        self.assertEqual(status, 200)
        self.assertNotIn(HOSTILE.encode(), page)
        self.assertIn(b"&lt;script&gt;alert(1)&lt;/script&gt;", page)
        self.assertIn(b"10.0.0.2:9000", page)
        self.assertIn("content-security-policy", headers)

    def test_metrics(self) -> None:
        peer = self.register("n1", "10.0.0.1:9000", [["a", 1, 0, D]])
        peer.where(digest=D)
        peer.send(codec.RENEW, {})
        peer.answers()
        self.clock.advance(2)
        status, _, body = http_get(self.root, "/metrics")
        self.assertEqual(status, 200)
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(body.decode())
                   for s in family.samples}
        self.assertTrue(all(name.startswith("mirror_") for name, _ in samples))
        self.assertEqual(samples[("mirror_index_nodes", ())], 1)
        self.assertEqual(samples[("mirror_index_files", ())], 1)
        self.assertEqual(samples[("mirror_index_queries_total", (("kind", "digest"),))], 1)
        self.assertEqual(samples[("mirror_index_queries_total", (("kind", "path"),))], 0)
        self.assertEqual(samples[("mirror_index_requests_total", (("kind", "renew"),))], 1)
        self.assertEqual(samples[("mirror_index_answered_rows_total", ())], 1)
        self.assertEqual(samples[("mirror_index_connections", ())], 1)

    def test_settings_and_health(self) -> None:
        settings = self.get_json("/api/settings")
        self.assertEqual(settings["daemon"], "mirror-index")
        self.assertEqual(settings["settings"]["lease"], 60)
        self.assertEqual(http_get(self.root, "/healthz")[2], b"ok\n")


class IndexWebOptionsTests(SynchronousTestCase):
    def test_public_web_needs_insecure(self) -> None:
        self.patch(sys, "stderr", io.StringIO())
        options = index_tap.Options()
        with self.assertRaises(SystemExit):
            options.parseOptions(["--db", ":memory:", "--web", "tcp:8080"])
        options = index_tap.Options()
        options.parseOptions(["--db", ":memory:", "--web", "tcp:8080:interface=127.0.0.1"])
        self.assertEqual(options["web"], ["tcp:8080:interface=127.0.0.1"])
