"""The web sites of the daemons (issue 13): the Host allow-list, the security headers, the
escaping of names from the network, the JSON API and /metrics, on real jobs run in memory
(no socket: HTTP goes through the site's protocol on a StringTransport)."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import IResource

from mirror.content_server import tap as content_tap
from mirror.content_server.observed import MAX_CLIENTS, OTHER
from mirror.mirror_server import tap as mirror_tap
from mirror.mirror_server.history import KEEP_JOBS, MAX_ERRORS, MAX_SAMPLES, JobRecord
from mirror.web import html
from mirror.web.content_site import content_site_root
from mirror.web.mirror_page import chart_points, status_page
from mirror.web.mirror_site import mirror_site_root
from mirror.web.mirror_views import job_view, throughput
from mirror.web.options import is_local
from mirror.web.site import CONTENT_SECURITY_POLICY, LOOPBACK_HOSTS, WebSite
from mirror.wire import frames
from tests.unit.helpers import connect_server, make_factory
from tests.unit.test_mirror_job import JobTestCase, Observer, source

HOSTILE = ["<script>window.pwned=1.txt", "<img src=x onerror=window.pwned=1>.txt"]


def http_get(root: IResource, path: str = "/", host: str | None = "localhost", method: str = "GET",
             hosts: frozenset[bytes] | None = LOOPBACK_HOSTS) -> tuple[int, dict[str, str], bytes]:
    """One request through a `WebSite`'s HTTP protocol; (status, headers, body)."""
    site = WebSite(root, hosts, MemoryReactorClock())
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
                                peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
    proto.makeConnection(transport)
    head = f"{method} {path} HTTP/1.1\r\n" + (f"Host: {host}\r\n" if host else "")
    proto.dataReceived((head + "Connection: close\r\n\r\n").encode("latin-1"))
    raw = transport.value()
    proto.connectionLost(Failure(ConnectionDone()))
    head_raw, _, body = raw.partition(b"\r\n\r\n")
    lines = head_raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return status, headers, body


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_raw, _, rest = data.partition(b"\r\n")
        size = int(size_raw, 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out


class WebJobTestCase(JobTestCase):
    """A mirror service running jobs in memory, and its web site."""

    settings = {"workers": 2, "queue_size": 64}

    def setUp(self) -> None:
        super().setUp()
        self.root = mirror_site_root(self.service, web_endpoints=["tcp:0:interface=127.0.0.1"])

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        return http_get(self.root, path)

    def get_json(self, path: str):
        status, headers, body = self.get(path)
        self.assertEqual(status, 200, body)
        self.assertEqual(headers["content-type"], "application/json")
        return json.loads(body)

    def hostile_tree(self) -> Path:
        src = self.base / "src"
        src.mkdir()
        (src / "ok.bin").write_bytes(b"a" * 10)
        (src / "two.bin").write_bytes(b"b" * 30)
        for name in HOSTILE:
            (src / name).write_bytes(b"x" * 500)  # over --max-file-size: reported by name
        return src


class HostAllowList(SynchronousTestCase):
    def setUp(self) -> None:
        path = self.mktemp()
        os.mkdir(path)
        factory = make_factory(path, None)
        self.addCleanup(os.close, factory.root_fd)
        self.root = content_site_root(factory)

    def test_loopback_names_are_served(self) -> None:
        for host in ("localhost", "127.0.0.1:8080", "LOCALHOST:1", "[::1]:8080", None):
            status, _, _ = http_get(self.root, "/healthz", host)
            self.assertEqual(status, 200, host)

    def test_other_names_are_refused(self) -> None:
        """A page whose name was made to resolve to 127.0.0.1 (DNS rebinding) sends its own
        name: refused, before any resource sees the request."""
        for host in ("evil.example", "evil.example:8080", "localhost.evil.example",
                     "127.0.0.1.nip.io", "[::2]"):
            status, headers, body = http_get(self.root, "/api/status", host)
            self.assertEqual(status, 403, host)
            self.assertNotIn(b"connections", body)
            self.assertEqual(headers["content-security-policy"], CONTENT_SECURITY_POLICY)

    def test_any_name_without_an_allow_list(self) -> None:
        """--insecure on a public address: no Host check (the operator's names are not known)."""
        status, _, _ = http_get(self.root, "/healthz", "mirror.example.org", hosts=None)
        self.assertEqual(status, 200)

    def test_nothing_but_get_and_head(self) -> None:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            status, headers, _ = http_get(self.root, "/", method=method)
            self.assertEqual(status, 405, method)
            self.assertEqual(headers["allow"], "GET, HEAD")
        self.assertEqual(http_get(self.root, "/", method="HEAD")[0], 200)

    def test_security_headers_on_every_response(self) -> None:
        for path, status in (("/", 200), ("/api/status", 200), ("/metrics", 200),
                             ("/static/style.css", 200), ("/static/status.js", 200),
                             ("/nothing", 404), ("/static/../setup.cfg", 404),
                             ("/static/nothing.js", 404)):
            got, headers, _ = http_get(self.root, path)
            self.assertEqual(got, status, path)
            self.assertEqual(headers["content-security-policy"], CONTENT_SECURITY_POLICY, path)
            self.assertEqual(headers["x-content-type-options"], "nosniff", path)
            self.assertEqual(headers["x-frame-options"], "DENY", path)
        policy = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
        self.assertEqual(policy["default-src"], "'none'")
        self.assertEqual(policy["script-src"], "'self'")  # no inline script, no eval
        self.assertNotIn("unsafe", CONTENT_SECURITY_POLICY)


class WebOptionsTests(SynchronousTestCase):
    def parse(self, options: usage.Options, *args: str) -> str:
        try:
            options.parseOptions(list(args))
        except SystemExit as e:
            self.assertEqual(e.code, 2)
            return "refused"
        return "accepted"

    def test_is_local(self) -> None:
        self.assertTrue(is_local("tcp:0:interface=127.0.0.1"))
        self.assertTrue(is_local("tcp:8080:interface=127.1.2.3"))
        self.assertTrue(is_local(r"tcp6:0:interface=\:\:1"))
        self.assertTrue(is_local("unix:/run/mirror-web.sock"))
        self.assertFalse(is_local("tcp:8080"))  # every address
        self.assertFalse(is_local("tcp:8080:interface=0.0.0.0"))
        self.assertFalse(is_local("tcp:8080:interface=192.0.2.1"))

    def test_public_web_needs_insecure(self) -> None:
        root = self.mktemp()
        os.mkdir(root)
        self.patch(sys, "stderr", io.StringIO())  # the usage line
        for make, base in ((content_tap.Options, ["--root", root]),
                           (mirror_tap.Options, ["--mirror-dir", root])):
            self.assertEqual(self.parse(make(), *base, "--web", "tcp:8080"), "refused")
            self.assertEqual(self.parse(make(), *base, "--web", "tcp:8080", "--insecure"),
                             "accepted")
            self.assertEqual(self.parse(make(), *base, "--web", "tcp:8080:interface=127.0.0.1"),
                             "accepted")
            self.assertEqual(self.parse(make(), *base, "--web", "nonsense:1"), "refused")
            options = make()
            options.parseOptions(base)
            self.assertEqual(options["web"], [])


class MirrorStatus(WebJobTestCase):
    def test_job_figures_and_escaped_names(self) -> None:
        self.service.settings.max_file_size = 100
        self.serve(self.hostile_tree())
        observer = self.run_job(source())
        self.assertEqual(observer.finished, [False])
        jobs = self.get_json("/api/jobs")
        self.assertEqual(jobs["running"], 0)
        [job] = jobs["jobs"]
        self.assertEqual(job["state"], "failed")
        [src] = job["sources"]
        run = observer.done[0]
        # The figures of mirror-init's report, from the same run.
        self.assertEqual((src["files"], src["bytes"], src["sum_sq"], src["failed"]),
                         (2, 40, 10 ** 2 + 30 ** 2, 2))
        self.assertEqual((src["files"], src["bytes"], src["failed"], src["dirs"]),
                         (run.stats.count, run.stats.total, run.failed, run.dirs))
        self.assertEqual(src["mean_size"], 20.0)
        self.assertEqual(src["variance"], 100.0)
        self.assertEqual(src["stddev"], 10.0)
        self.assertEqual(src["cv"], 0.5)
        self.assertEqual(job["totals"]["files"], 2)
        self.assertEqual(job["progress"]["files_done"], 2)
        self.assertEqual(sorted(e["path"] for e in job["errors"]), sorted(HOSTILE))
        # The same job alone, and an unknown one.
        self.assertEqual(self.get_json(f"/api/jobs/{job['id']}")["sources"], job["sources"])
        self.assertEqual(self.get("/api/jobs/999")[0], 404)
        self.assertEqual(self.get("/api/jobs/%3Cscript%3E")[0], 404)
        # The page: every name as text, never as markup.
        status, headers, page = self.get("/")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/html; charset=utf-8")
        text = page.decode("utf-8")
        self.assertNotIn("<script>window", text)
        self.assertNotIn("<img", text)
        self.assertIn("&lt;script&gt;window.pwned=1.txt", text)
        self.assertIn("&lt;img src=x onerror=window.pwned=1&gt;.txt", text)
        self.assertIn('<tr class="total"><td>TOTAL</td><td>FAILED</td><td>2</td>', text)
        # The only scripts are the page's own, from this site.
        self.assertEqual(text.count("<script"), 1)
        self.assertIn('<script src="/static/status.js" defer></script>', text)
        # Reloaded only without JavaScript (the script updates the page otherwise).
        self.assertIn('<noscript><meta http-equiv="refresh" content="5"></noscript>', text)

    def test_control_and_bidi_characters_are_escaped(self) -> None:
        record = JobRecord("7", 0.0, None, ended=1.0, ok=False)
        record.errors.append((0, "a\x1b[2Jb\u202e.txt", 'say "<b>hi</b>" & \r\n'))
        view = {"now": 1.0, "running": 0, "queue": {"depth": 0, "capacity": 1},
                "jobs": [job_view(record, 1.0)]}
        text = status_page(view).decode("utf-8")
        self.assertIn("a\\x1b[2Jb\\u202e.txt", text)
        self.assertNotIn("\x1b", text)
        self.assertNotIn("\u202e", text)
        self.assertIn("say &quot;&lt;b&gt;hi&lt;/b&gt;&quot; &amp; \\r\\n", text)
        self.assertEqual(html.text('"\'<>&'), "&quot;&#x27;&lt;&gt;&amp;")

    def test_a_running_job_shows_its_progress(self) -> None:
        src = self.base / "src"
        src.mkdir()
        for i in range(6):
            (src / f"f{i}").write_bytes(bytes(100 * (i + 1)))
        self.serve(src)
        job = self.service.submit([source()], Observer())
        self.clock.advance(0)
        view = self.get_json("/api/jobs")
        self.assertEqual(view["running"], 1)
        self.assertEqual(view["jobs"][0]["state"], "running")
        status, _, page = self.get("/")
        self.assertIn(b'data-state="running"', page)
        self.network.run_until(job.finished)
        done = self.get_json(f"/api/jobs/{job.id}")
        self.assertEqual(done["state"], "ok")
        self.assertEqual(done["progress"]["files_done"], 6)
        self.assertEqual(done["progress"]["bytes_done"], 2100)
        self.assertEqual(done["totals"]["bytes"], 2100)
        self.assertEqual(view["queue"]["capacity"], 64)

    def test_throughput_series(self) -> None:
        self.assertEqual(throughput([(0.0, 0, 0), (1.0, 100, 1), (1.0, 100, 1), (3.0, 500, 2)]),
                         [[1.0, 100.0], [3.0, 200.0]])
        self.assertEqual(chart_points([[1.0, 100.0], [2.0, 50.0]]), "150.0,2.0 300.0,30.0")
        self.assertEqual(chart_points([]), "")

    def test_settings_and_health(self) -> None:
        settings = self.get_json("/api/settings")
        self.assertEqual(settings["daemon"], "mirror-server")
        self.assertEqual(settings["settings"]["queue_size"], 64)
        self.assertEqual(settings["web"], ["tcp:0:interface=127.0.0.1"])
        self.assertEqual(self.get("/healthz")[:1], (200,))
        self.assertEqual(self.get("/healthz")[2], b"ok\n")


class MirrorMetrics(WebJobTestCase):
    def metrics(self) -> dict[tuple[str, tuple], float]:
        status, headers, body = self.get("/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain; version="))
        samples = {}
        for family in text_string_to_metric_families(body.decode("utf-8")):
            self.assertTrue(family.name.startswith("mirror_"), family.name)
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    def test_figures_equal_the_jobs(self) -> None:
        self.service.settings.max_file_size = 100
        self.serve(self.hostile_tree())
        failed = self.run_job(source()).done[0]
        ok = self.run_job(source("ok.bin")).done[0]  # current now: skipped
        m = self.metrics()
        self.assertEqual(m[("mirror_transferred_bytes_total", (("outcome", "failed"),))],
                         failed.stats.total)
        self.assertEqual(m[("mirror_transferred_files_total", (("outcome", "failed"),))],
                         failed.stats.count)
        self.assertEqual(m[("mirror_failed_files_total", (("outcome", "failed"),))],
                         failed.failed)
        self.assertEqual(m[("mirror_skipped_files_total", (("outcome", "ok"),))], ok.skipped)
        self.assertEqual(ok.skipped, 1)
        self.assertEqual(m[("mirror_jobs_total", (("outcome", "ok"),))], 1)
        self.assertEqual(m[("mirror_jobs_total", (("outcome", "failed"),))], 1)
        self.assertEqual(m[("mirror_errors_total", (("scope", "path"),))], 2)
        self.assertEqual(m[("mirror_jobs_running", ())], 0)
        self.assertEqual(m[("mirror_queue_capacity", ())], 64)
        self.assertEqual(m[("mirror_source_duration_seconds_count", ())], 2)
        self.assertEqual(m[("mirror_listing_duration_seconds_count", ())], 2)
        # Only the source that succeeded has a last-success time; no file name or job id
        # is a label anywhere.
        last = {k[1]: v for k, v in m.items()
                if k[0] == "mirror_source_last_success_timestamp_seconds"}
        self.assertEqual(list(last), [(("source", "10.0.0.1:7000:ok.bin"),)])
        for _name, labels in m:
            for key, _value in labels:
                self.assertIn(key, {"outcome", "scope", "source", "le"})


class HistoryBounds(WebJobTestCase):
    def test_jobs_errors_and_samples_are_bounded(self) -> None:
        src = self.base / "src"
        src.mkdir()
        for i in range(MAX_ERRORS + 5):
            (src / f"big{i:03d}").write_bytes(b"x" * 200)
        self.service.settings.max_file_size = 100
        self.serve(src)
        self.run_job(source())
        for _ in range(KEEP_JOBS + 2):
            self.run_job(source("big000"))
        history = self.service.history
        self.assertEqual(len(history.jobs), KEEP_JOBS)
        self.assertNotIn("1", history.jobs)
        self.assertEqual(history.recent()[0].id, str(KEEP_JOBS + 3))
        record = JobRecord("x", 0.0, None)
        for i in range(MAX_SAMPLES * 3):
            record.sample(float(i), i, i)
        self.assertLessEqual(len(record.samples), MAX_SAMPLES)
        self.assertEqual(record.samples[0][0], 0.0)
        self.assertEqual(record.samples[-1][0], MAX_SAMPLES * 3 - 1)

    def test_errors_beyond_the_limit_are_counted(self) -> None:
        src = self.base / "src"
        src.mkdir()
        for i in range(MAX_ERRORS + 5):
            (src / f"big{i:03d}").write_bytes(b"x" * 200)
        self.service.settings.max_file_size = 100
        self.serve(src)
        self.run_job(source())
        job = self.get_json("/api/jobs/1")
        self.assertEqual(len(job["errors"]), MAX_ERRORS)
        self.assertEqual(job["errors_total"], MAX_ERRORS + 5)
        listed = self.get_json("/api/jobs")["jobs"][0]
        self.assertEqual(len(listed["errors"]), 10)
        self.assertIn(b"more errors", self.get("/")[2])


class ContentStatus(SynchronousTestCase):
    def setUp(self) -> None:
        root = self.mktemp()
        os.mkdir(root)
        self.factory = make_factory(root, None)
        self.addCleanup(os.close, self.factory.root_fd)
        self.root = content_site_root(self.factory)

    def test_served_bytes_errors_and_cache(self) -> None:
        serving = self.factory.serving
        serving.sent("192.0.2.1", 1000)
        serving.sent("<b>x</b>", 5)
        serving.error(frames.E_NOT_FOUND)
        serving.error(frames.E_NOT_FOUND)
        serving.error(frames.E_BUSY)
        self.factory.digests.put((1, 2, 3, 4, 5), b"d" * 32)
        self.factory.digests.get((1, 2, 3, 4, 5))
        self.factory.digests.get((9, 9, 9, 9, 9))
        status = json.loads(http_get(self.root, "/api/status")[2])
        self.assertEqual(status["bytes_served"], 1005)
        self.assertEqual(status["errors"]["not_found"], 2)
        self.assertEqual(status["errors"]["busy"], 1)
        self.assertEqual(status["digest_cache"],
                         {"entries": 1, "capacity": 65536, "hits": 1, "misses": 1})
        clients = {c["address"]: c["bytes_served"] for c in status["clients"]}
        self.assertEqual(clients, {"192.0.2.1": 1000, "<b>x</b>": 5})
        page = http_get(self.root, "/")[2].decode("utf-8")
        self.assertIn('<meta http-equiv="refresh" content="5">', page)  # no script: reloads
        self.assertNotIn("<noscript>", page)
        self.assertIn("&lt;b&gt;x&lt;/b&gt;", page)
        self.assertNotIn("<b>", page)
        m = {s.name + str(sorted(s.labels.items())): s.value
             for f in text_string_to_metric_families(http_get(self.root, "/metrics")[2].decode())
             for s in f.samples}
        self.assertEqual(m["mirror_served_bytes_total[]"], 1005)
        self.assertEqual(m["mirror_content_errors_total[('code', 'not_found')]"], 2)
        self.assertEqual(m["mirror_digest_cache_hits_total[]"], 1)
        self.assertEqual(m["mirror_digest_cache_misses_total[]"], 1)
        self.assertTrue(all(k.startswith("mirror_") for k in m))

    def test_what_the_protocol_counts(self) -> None:
        """Bytes sent per client, requests in flight, errors by code and refusals, as a real
        content server connection counts them."""
        root = Path(self.mktemp())
        root.mkdir()
        (root / "a.txt").write_bytes(b"hello" * 100)
        factory = make_factory(str(root), None, max_connections=1, max_requests=1)
        self.addCleanup(os.close, factory.root_fd)
        site = content_site_root(factory)
        rig = connect_server(factory, IPv4Address("TCP", "192.0.2.7", 1000))
        rig.fetch(1, "a.txt")
        rig.fetch(2, "missing")
        sent = len(rig.transport.value())
        self.assertGreater(sent, 500)
        rig.fetch(3, "a.txt", delay_ms=5000)  # held: in flight, the connection busy
        rig.fetch(4, "a.txt")  # beyond --max-requests: busy
        refused = factory.buildProtocol(IPv4Address("TCP", "192.0.2.8", 1000))
        refused.makeConnection(StringTransport())
        status = json.loads(http_get(site, "/api/status")[2])
        self.assertEqual(status["connections"], 1)
        self.assertEqual(status["connections_refused"], 1)
        self.assertEqual(status["requests_in_flight"], 1)
        self.assertEqual(status["errors"]["not_found"], 1)
        self.assertEqual(status["errors"]["busy"], 1)
        self.assertEqual(status["bytes_served"], len(rig.transport.value()))
        self.assertEqual(status["clients"], [{"address": "192.0.2.7", "connections": 1,
                                              "requests_in_flight": 1,
                                              "bytes_served": len(rig.transport.value())}])
        self.assertEqual(status["digest_cache"]["misses"], 1)  # a.txt, read whole once
        rig.clock.advance(5)

    def test_clients_beyond_the_limit_share_one_line(self) -> None:
        serving = self.factory.serving
        for i in range(MAX_CLIENTS + 10):
            serving.sent(f"10.0.{i // 256}.{i % 256}", 1)
        self.assertEqual(len(serving.bytes_by_client), MAX_CLIENTS + 1)
        self.assertEqual(serving.bytes_by_client[OTHER], 10)
        self.assertEqual(serving.bytes_total, MAX_CLIENTS + 10)

    def test_settings(self) -> None:
        settings = json.loads(http_get(self.root, "/api/settings")[2])
        self.assertEqual(settings["daemon"], "content-server")
        self.assertEqual(settings["settings"]["max_requests"], self.factory.settings.max_requests)
