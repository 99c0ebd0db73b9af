"""End to end, as a user runs it: the installed twistd plugins and mirror-init."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import both_transports
from tests.integration.daemons import content_server, mirror_init, mirror_server
from tests.trees import assert_same_tree, make_sample_tree

pytestmark = pytest.mark.timeout(120)


@both_transports
def test_two_content_servers_and_a_dead_port(tmp_path: Path, daemons, unused_port: int):
    src1 = make_sample_tree(tmp_path / "src1", big_size=5 * 1024 * 1024, seed=1)
    src2 = make_sample_tree(tmp_path / "src2", big_size=1024 * 1024, seed=2)
    logs = tmp_path / "logs"
    cs1 = daemons(content_server, src1, logs)
    cs2 = daemons(content_server, src2, logs)
    ms = daemons(mirror_server, tmp_path / "mirror", logs, "--workers", "4")
    specs = f"127.0.0.1:{cs1.port}:.:0,127.0.0.1:{cs2.port}:docs,127.0.0.1:{unused_port}:."
    run = mirror_init("-n", "127.0.0.1", "-p", str(ms.port), "-s", specs, "--json")
    assert run.returncode == 1, run.stderr
    report = json.loads(run.stdout)
    assert report["ok"] is False
    assert [s["ok"] for s in report["sources"]] == [True, True, False]
    assert f"127.0.0.1:{unused_port}" in run.stderr and "connection refused" in run.stderr
    mirror = tmp_path / "mirror"
    assert_same_tree(src1, mirror / f"127.0.0.1_{cs1.port}")
    assert_same_tree(src2 / "docs", mirror / f"127.0.0.1_{cs2.port}" / "docs")
    assert "Traceback" not in run.stderr

    # Everything is current now: a rerun of the good SPECs transfers nothing and succeeds.
    again = mirror_init("-m", "127.0.0.1", "-p", str(ms.port), "--json",
                        "-s", f"127.0.0.1:{cs1.port}:.", "-s", f"127.0.0.1:{cs2.port}:docs")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert all(s["ok"] and s["files"] == 0 and s["skipped"] > 0 for s in report["sources"])


def test_text_report_and_usage_errors(tmp_path: Path, daemons):
    src = make_sample_tree(tmp_path / "src", big_size=1024)
    cs = daemons(content_server, src, tmp_path / "logs")
    ms = daemons(mirror_server, tmp_path / "mirror", tmp_path / "logs")
    run = mirror_init("-n", "127.0.0.1", "-p", str(ms.port), "-s", f"127.0.0.1:{cs.port}:docs")
    assert run.returncode == 0, run.stderr
    for word in ("FILES", "DIRS", "BYTES", "MEAN", "VARIANCE", "STDDEV", "CV", "SKIPPED"):
        assert word in run.stdout
    for bad in (f"127.0.0.1:{cs.port}:docs:-1", "127.0.0.1:0:docs", "127.0.0.1::docs", ",,"):
        bad_run = mirror_init("-n", "127.0.0.1", "-p", str(ms.port), "-s", bad)
        assert bad_run.returncode == 2
        assert len(bad_run.stderr.strip().splitlines()) == 1, bad_run.stderr
        assert "Traceback" not in bad_run.stderr
