"""The benchmark harness (`python -m bench`, `make bench`): its datasets, and a `--quick` run
end to end on tiny datasets, against rsync when it is installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import datasets
from bench.datasets import DatasetError, Spec
from bench.trees import scan
from tests.integration.conftest import deep_scratch_dir

REPO = Path(__file__).resolve().parents[2]


def test_uniform_sizes_stay_in_range_and_follow_the_seed():
    spec = datasets.QUICK["small"]
    sizes = datasets.file_sizes(spec, 1)
    assert len(sizes) == spec.files
    assert min(sizes) >= 512 and max(sizes) <= 8192
    assert len(set(sizes)) > 1
    assert datasets.file_sizes(spec, 1) == sizes
    assert datasets.file_sizes(spec, 2) != sizes


def test_nested_million_layout_groups_leaf_directories_in_two_levels():
    spec = datasets.FULL["tree-1m"]
    leaves = [datasets.dir_path(spec, d) for d in range(spec.dirs)]
    assert len(set(leaves)) == spec.dirs
    tops = Counter(leaf.split("/")[0] for leaf in leaves)
    assert len(tops) == 100 and set(tops.values()) == {100}
    assert datasets.inodes_needed(spec) == 1_000_000 + 10_000 + 100 + 1
    paths = {datasets.file_path(spec, i) for i in (0, 1, 10_000, 999_999)}
    assert len(paths) == 4


def test_empty_dataset_generated_with_its_layout_and_removed(tmp_path):
    spec = Spec("t", files=250, dirs=10, content="empty", nested=True, scratch=True)
    data = datasets.ensure(spec, tmp_path / "data", tmp_path / "markers", 1)
    tree = scan(tmp_path / "data" / "t")
    assert len(tree.files) == 250 and tree.total_bytes == 0
    assert set(tree.files) == {datasets.file_path(spec, i) for i in range(250)}
    datasets.remove(data, tmp_path / "markers")
    assert not (tmp_path / "data" / "t").exists()


def test_too_few_free_inodes_is_refused_before_generating(tmp_path, monkeypatch):
    st = SimpleNamespace(f_files=3_000_000, f_favail=1_000)
    monkeypatch.setattr(os, "statvfs", lambda path: st)
    with pytest.raises(DatasetError, match="needs 2,030,202 free inodes.*has 1,000"):
        datasets.ensure(datasets.FULL["tree-1m"], tmp_path / "data", tmp_path / "markers", 1)
    assert not (tmp_path / "data" / "tree-1m").exists()


@pytest.mark.timeout(180)
def test_quick_run_measures_every_kind_of_workload_and_cleans_up(tmp_path):
    """A workload of each kind the harness drives differently: a no-op of ours against rsync
    (its filling runs included), 50 SPECs against one, and a scratch (million-file) dataset,
    deleted after it."""
    venv_bin = Path(sys.executable).parent
    results = tmp_path / "RESULTS.md"
    # On tmpfs, as `make bench` by default: on a disk the mirror server's fsync of each of
    # the quick dir-1m's files doubled this test's time.
    scratch = Path(deep_scratch_dir("mirror-bench-test-"))
    workspace = scratch / "ws"
    argv = [sys.executable, "-m", "bench", "--quick", "--runs", "1",
            "--workloads", "tiny-no-op,sources,dir-1m",
            "--workspace", str(workspace), "--results", str(results)]
    if not shutil.which("rsync"):
        argv.append("--no-rsync")  # never apt-get from a test
    env = dict(os.environ, PATH=os.pathsep.join([str(venv_bin), os.environ.get("PATH", "")]))
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stored = json.loads((tmp_path / "results.json").read_text())["workloads"]
    assert set(stored) == {"tiny-no-op", "sources", "dir-1m"}
    assert stored["sources"]["clients"] == ["50 sources", "1 source"]
    assert all(len(t) == 1 for t in stored["sources"]["times"].values())
    assert stored["dir-1m"]["files"] == datasets.QUICK["dir-1m"].files
    assert stored["dir-1m"]["peaks"]["mirror-server"] > 0
    text = results.read_text()
    assert "| a small job (20 files) behind 19 big ones / alone | fair |" in text
    assert "not measured (run `make bench`)" in text
    assert not workspace.exists()
    scratch.rmdir()
