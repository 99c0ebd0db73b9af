"""The web sites of the real daemons (issue 13): the status page in headless Chromium while a
job runs and after it, hostile names shown as text, /metrics equal to mirror-init's report,
and the Host allow-list on a real socket."""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.browser import Chromium, find_chromium
from tests.integration.daemons import MIRROR_INIT, Daemon, content_server, mirror_server
from tests.integration.waiting import poll

#: Names a page must show as text: as markup they would set window.pwned.
HOSTILE = ["<script>window.pwned=1.txt", "<img src=x onerror=window.pwned=1>.txt"]
LOCAL_WEB = "tcp:0:interface=127.0.0.1"
#: Files transferred one at a time (bigger than a small file, one worker), each after the
#: SPEC's delay: the job lasts about BIG_FILES * DELAY seconds.
BIG_FILES, BIG_SIZE, DELAY = 10, 300 * 1024, 0.4
#: With --max-file-size under their size, the hostile names are reported as errors.
HOSTILE_SIZE, MAX_FILE_SIZE = 1 << 20, 512 * 1024
#: Where the README's screenshot comes from: MIRROR_SCREENSHOT=doc/status-page.png.
SCREENSHOT_ENV = "MIRROR_SCREENSHOT"


def web_port(daemon: Daemon) -> int:
    found = re.findall(r"WebSite starting on (\d+)", daemon.log_text())
    assert found, daemon.log_text()
    return int(found[0])


def get(port: int, path: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if host is not None:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def make_tree(root: Path) -> Path:
    root.mkdir()
    for i in range(BIG_FILES):
        (root / f"big{i}.bin").write_bytes(os.urandom(BIG_SIZE))
    for i in range(5):
        (root / "small").mkdir(exist_ok=True)
        (root / "small" / f"s{i}.txt").write_bytes(b"x" * (i * 100))
    for name in HOSTILE:
        (root / name).write_bytes(b"\0" * HOSTILE_SIZE)
    return root


@pytest.fixture
def web_daemons(tmp_path, daemons):
    src = make_tree(tmp_path / "src")
    cs = daemons(content_server, src, tmp_path / "logs", "--web", LOCAL_WEB)
    ms = daemons(mirror_server, tmp_path / "mirror", tmp_path / "logs", "--web", LOCAL_WEB,
                 "--workers", "1", "--max-file-size", str(MAX_FILE_SIZE))
    return cs, ms


def start_job(ms: Daemon, cs: Daemon, delay: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [MIRROR_INIT, "-n", "127.0.0.1", "-p", str(ms.port), "--json",
         "-s", f"127.0.0.1:{cs.port}:.:{delay}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def finish(job: subprocess.Popen[str]) -> dict:
    out, _ = job.communicate(timeout=60)
    assert job.returncode == 1, out  # the hostile files are over --max-file-size
    report = json.loads(out)
    assert report["error"] is None, report
    return report


def test_status_page_in_chromium(web_daemons, tmp_path):
    binary = find_chromium()
    cs, ms = web_daemons
    port = web_port(ms)
    browser = Chromium(binary, tmp_path / "chromium-profile")
    browser.call("Browser.getVersion")  # started and answering before the job starts
    job = start_job(ms, cs, DELAY)
    try:
        poll(lambda: json.loads(get(port, "/api/jobs")[2])["running"] == 1, 15, "the job")
        page = browser.open(f"http://127.0.0.1:{port}/")
        # Mid-way: the job is running, its files bar part-way.
        mid = browser.wait_for(page, """(() => {
            const job = document.querySelector('section.job[data-state="running"]');
            const bar = job && job.querySelector('progress.files');
            return bar && bar.value > 0 && bar.value < bar.max &&
                [bar.value, bar.max, job.querySelector('.state').textContent];
        })()""", what="the running job's progress")
        assert mid[2] == "running"
        # Then, with no reload, the script shows the final statistics.
        final = browser.wait_for(page, """(() => {
            const job = document.querySelector('section.job[data-state="failed"]');
            const total = job && job.querySelector('tr.total');
            return total && Array.from(total.cells, c => c.textContent);
        })()""", timeout=30, what="the final statistics")
        report = finish(job)
        totals = report["totals"]
        assert final[:4] == ["TOTAL", "FAILED", str(totals["files"]), str(totals["dirs"])]
        assert final[11] == str(totals["failed"]) == "2"
        assert int(browser.evaluate(page, "document.getElementById('jobs').dataset.polled")) > 0
        check_names_are_text(browser, page)
        # The server's own rendering, reloaded: the same, and the same names as text.
        page2 = browser.open(f"http://127.0.0.1:{port}/")
        browser.wait_for(page2, "document.querySelector('tr.total') !== null")
        check_names_are_text(browser, page2)
        shot = tmp_path / "status-page.png"
        browser.screenshot(page2, shot, 900, 470)
        assert shot.read_bytes().startswith(b"\x89PNG")
        if os.environ.get(SCREENSHOT_ENV):
            Path(os.environ[SCREENSHOT_ENV]).write_bytes(shot.read_bytes())
        # On a phone's screen nothing but the table's own box scrolls sideways.
        browser.resize(page2, 390, 800, mobile=True)
        assert browser.evaluate(page2, "document.documentElement.scrollWidth") <= 390
        # Without JavaScript: the same job, figures and names, as the server rendered them.
        plain = browser.open_without_javascript(f"http://127.0.0.1:{port}/")
        cells = browser.wait_for(plain, """(() => {
            const total = document.querySelector('section.job[data-state="failed"] tr.total');
            return total && Array.from(total.cells, c => c.textContent);
        })()""", what="the page rendered without JavaScript")
        assert cells == final
        assert browser.evaluate(plain, "document.getElementById('jobs').dataset.polled") is None
        check_names_are_text(browser, plain)
        # The content server's page, in the same browser.
        content = browser.open(f"http://127.0.0.1:{web_port(cs)}/")
        served = browser.wait_for(content, """(() => {
            const row = document.querySelector('table.clients tr.client');
            return row && Array.from(row.cells, c => c.textContent);
        })()""", what="the content server's clients")
        assert served[0] == "127.0.0.1"
    finally:
        browser.close()
        if job.poll() is None:
            job.kill()
            job.wait()


def check_names_are_text(browser: Chromium, page: str) -> None:
    paths = browser.evaluate(page, "Array.from(document.querySelectorAll('ul.errors code.path'),"
                                   " c => c.textContent)")
    assert sorted(paths) == sorted(HOSTILE)
    assert browser.evaluate(page, "window.pwned === undefined") is True
    assert browser.evaluate(page, "document.querySelectorAll('img').length") == 0
    assert browser.evaluate(page, "document.scripts.length") == 1


def test_metrics_equal_the_report_and_host_allow_list(web_daemons):
    """/metrics after a job has the figures of mirror-init's report; on a real socket, a
    request naming another host is refused."""
    cs, ms = web_daemons
    report = finish(start_job(ms, cs, 0.0))
    status, headers, body = get(web_port(ms), "/metrics")
    assert status == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body.decode())
               for s in family.samples}
    totals = report["totals"]
    failed = (("outcome", "failed"),)
    assert samples[("mirror_transferred_bytes_total", failed)] == totals["bytes"]
    assert samples[("mirror_transferred_files_total", failed)] == totals["files"]
    assert samples[("mirror_failed_files_total", failed)] == totals["failed"], (samples, report)
    assert totals["failed"] == 2
    assert samples[("mirror_skipped_files_total", failed)] == totals["skipped"]
    assert samples[("mirror_jobs_total", failed)] == 1
    assert samples[("mirror_errors_total", (("scope", "path"),))] == totals["errors"]
    assert totals["bytes"] == BIG_FILES * BIG_SIZE + sum(i * 100 for i in range(5))
    # The content server counted what it sent (frames included: at least the file bytes).
    content = {s.name: s.value for f in text_string_to_metric_families(
        get(web_port(cs), "/metrics")[2].decode()) for s in f.samples}
    assert content["mirror_served_bytes_total"] >= totals["bytes"]
    port = web_port(ms)
    assert get(port, "/healthz")[0] == 200
    assert get(port, "/healthz", host=f"localhost:{port}")[0] == 200
    status, headers, _ = get(port, "/api/jobs", host=f"rebound.example:{port}")
    assert status == 403
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert json.loads(get(port, "/api/settings")[2])["settings"]["workers"] == 1
