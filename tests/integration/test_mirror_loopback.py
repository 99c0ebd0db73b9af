"""The two daemons together on loopback: a tree mirrored, verified, and reported."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from tests.integration.conftest import both_transports, run_job, source
from tests.trees import assert_same_tree, make_sample_tree

pytestmark = both_transports


@pytest_twisted.ensureDeferred
async def test_mirror_whole_tree(tmp_path: Path, start_content_server, start_mirror_server):
    src = make_sample_tree(tmp_path / "src")
    cport, _ = start_content_server(str(src))
    mport, _ = start_mirror_server(str(tmp_path / "mirror"))
    result = await run_job(mport, [source(cport)])
    assert result.ok, result.errors
    assert_same_tree(src, tmp_path / "mirror" / f"127.0.0.1_{cport}")
    done = result.source_done[0]
    files = [p for p in src.rglob("*") if p.is_file()]
    assert done.files == len(files)
    assert done.bytes == sum(p.stat().st_size for p in files)
    assert done.sum_sq == sum(p.stat().st_size ** 2 for p in files)


@pytest_twisted.ensureDeferred
async def test_second_run_skips_current_files(tmp_path: Path, start_content_server,
                                              start_mirror_server):
    src = make_sample_tree(tmp_path / "src")
    cport, _ = start_content_server(str(src))
    mport, _ = start_mirror_server(str(tmp_path / "mirror"))
    await run_job(mport, [source(cport)])
    (src / "docs" / "a.txt").write_text("changed content\n")
    result = await run_job(mport, [source(cport)])
    assert result.ok
    done = result.source_done[0]
    assert done.files == 1
    assert done.skipped == len([p for p in src.rglob("*") if p.is_file()]) - 1
    assert_same_tree(src, tmp_path / "mirror" / f"127.0.0.1_{cport}")


@pytest_twisted.ensureDeferred
async def test_subdirectory_and_single_file(tmp_path: Path, start_content_server,
                                            start_mirror_server):
    src = make_sample_tree(tmp_path / "src")
    cport, _ = start_content_server(str(src))
    mport, _ = start_mirror_server(str(tmp_path / "mirror"))
    result = await run_job(mport, [source(cport, "docs/sub"), source(cport, "docs/a.txt")])
    assert result.ok, result.errors
    top = tmp_path / "mirror" / f"127.0.0.1_{cport}"
    assert_same_tree(src / "docs" / "sub", top / "docs" / "sub")
    assert (top / "docs" / "a.txt").read_bytes() == (src / "docs" / "a.txt").read_bytes()
    assert sorted(p.name for p in (top / "docs").iterdir()) == ["a.txt", "sub"]


@pytest_twisted.ensureDeferred
async def test_dead_port_and_missing_path_fail_alone(tmp_path: Path, start_content_server,
                                                     start_mirror_server, unused_port):
    src = make_sample_tree(tmp_path / "src")
    cport, _ = start_content_server(str(src))
    mport, _ = start_mirror_server(str(tmp_path / "mirror"))
    result = await run_job(mport, [source(unused_port), source(cport, "no/such"),
                                   source(cport)])
    assert not result.ok
    assert not result.source_ok(0) and not result.source_ok(1) and result.source_ok(2)
    messages = {e.index: e.message for e in result.errors}
    assert "connection refused" in messages[0]
    assert "no/such" in messages[1] and "no such file" in messages[1]
    assert_same_tree(src, tmp_path / "mirror" / f"127.0.0.1_{cport}")
    assert not (tmp_path / "mirror" / f"127.0.0.1_{unused_port}").exists()


@pytest_twisted.ensureDeferred
async def test_delay_does_not_hold_up_other_sources(tmp_path: Path, start_content_server,
                                                    start_mirror_server):
    src = make_sample_tree(tmp_path / "src")
    cport, _ = start_content_server(str(src))
    mport, _ = start_mirror_server(str(tmp_path / "mirror"))
    order = []
    result = await run_job(
        mport, [source(cport, "docs/a.txt", delay=1.0), source(cport, "empty")],
        on_event=lambda e: order.append(type(e).__name__ + str(getattr(e, "index", ""))))
    assert result.ok
    # The undelayed source finished while the delayed one was still waiting.
    assert order.index("SourceDone1") < order.index("SourceDone0")
    assert result.source_done[0].elapsed >= 1.0
