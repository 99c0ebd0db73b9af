"""Issue 12 from the installed programs: ``mirror-init --delete``, ``--max-delete``,
``--dry-run`` and the filters, against a real content server and mirror server.

One content server and one mirror server serve the whole module (starting daemons costs
more than the jobs); each test mirrors a subtree of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mirror.paths import STATE_DIR_NAME
from tests.integration import daemons as programs
from tests.integration.daemons import (
    Daemon,
    content_server,
    mirror_init,
    mirror_init_command,
    mirror_server,
)
from tests.integration.transport import PLAIN, Identities, tls_transport
from tests.integration.waiting import poll
from tests.trees import tree_listing

#: The mirror server refuses bigger files: a listing with such a file has an error.
MAX_FILE_SIZE = 100_000


class Setup:
    def __init__(self, root: Path, mirror: Path, content: Daemon, mirror_daemon: Daemon,
                 outside: Path) -> None:
        self.root = root
        self.mirror = mirror
        self.content = content
        self.mirror_daemon = mirror_daemon
        self.outside = outside

    def spec(self, path: str, delay: float = 0.0) -> str:
        return f"127.0.0.1:{self.content.port}:{path}:{delay:g}"

    def local(self, path: str) -> Path:
        return self.mirror / f"127.0.0.1_{self.content.port}" / path

    def run(self, path: str, *args: str) -> subprocess.CompletedProcess[str]:
        return mirror_init("-n", "127.0.0.1", "-p", str(self.mirror_daemon.port),
                           "-s", self.spec(path), *args)

    def run_json(self, path: str, *args: str) -> tuple[int, dict[str, Any]]:
        done = self.run(path, "--json", *args)
        return done.returncode, json.loads(done.stdout)


@pytest.fixture(scope="module", params=["plain", "tls"])
def setup(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """The daemons of the module's tests, over plain TCP and then over TLS (the conftest's
    function-scoped ``transport`` fixture cannot serve a module-scoped one)."""
    base = tmp_path_factory.mktemp("sync")
    chosen = PLAIN
    if request.param == "tls":
        ids: Identities = request.getfixturevalue("tls_identities")
        chosen = tls_transport(ids, base / "pins")
    previous, programs.current = programs.current, chosen
    try:
        yield from _setup(base)
    finally:
        programs.current = previous


def _setup(base: Path) -> Iterator[Setup]:
    root, mirror, outside = base / "export", base / "mirror", base / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "precious").write_text("do not touch")
    content = content_server(root, base / "logs")
    try:
        mirror_daemon = mirror_server(mirror, base / "logs", "--max-file-size",
                                      str(MAX_FILE_SIZE))
    except BaseException:
        content.stop()
        raise
    try:
        yield Setup(root, mirror, content, mirror_daemon, outside)
    finally:
        mirror_daemon.stop()
        content.stop()


def make(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_delete_removes_what_the_source_no_longer_has(setup: Setup) -> None:
    make(setup.root / "del", {"a.txt": "a", "sub/b.txt": "b", "sub/deep/c.txt": "cc",
                              "logs/x.log": "x"})
    assert setup.run("del").returncode == 0
    for name in ("sub/b.txt", "sub/deep/c.txt"):
        (setup.root / "del" / name).unlink()
    for name in ("sub/deep", "sub"):
        (setup.root / "del" / name).rmdir()
    local = setup.local("del")
    # Planted: links to outside the subtree (one where a directory would be listed),
    # a temporary file of a transfer "in progress", a file the filters exclude.
    (local / "evil").symlink_to(setup.outside)
    (local / "logs" / "evil-dir").symlink_to(setup.outside, target_is_directory=True)
    (local / ".mirror-tmp-inflight").write_text("partial")
    (local / "local.log").write_text("mine")
    status, report = setup.run_json("del", "--delete", "--exclude", "*.log")
    assert status == 0, report
    source = report["sources"][0]
    # sub, sub/deep, sub/b.txt, sub/deep/c.txt, evil, logs/evil-dir: as links, not followed.
    assert (source["deleted"], source["deleted_bytes"], source["deletion"]) == (6, 3, "done")
    assert report["totals"]["deleted"] == 6
    assert sorted(p.name for p in local.iterdir()) == [".mirror-tmp-inflight", "a.txt",
                                                        "local.log", "logs"]
    assert sorted(p.name for p in (local / "logs").iterdir()) == ["x.log"]
    assert (setup.outside / "precious").read_text() == "do not touch"


def test_deletion_skipped_when_the_listing_had_errors(setup: Setup) -> None:
    make(setup.root / "err", {"ok.txt": "ok"})
    (setup.root / "err" / "huge.bin").write_bytes(b"x" * (MAX_FILE_SIZE + 1))
    make(setup.local("err"), {"extra.txt": "keep me"})
    done = setup.run("err", "--delete")
    assert done.returncode == 1, done.stdout
    message = f"deletion skipped: the listing of {setup.spec('err')[:-2]} had errors"
    assert message in done.stdout
    assert (setup.local("err") / "extra.txt").read_text() == "keep me"
    assert (setup.local("err") / "ok.txt").read_text() == "ok"
    status, report = setup.run_json("err", "--delete")
    assert (status, report["sources"][0]["deletion"]) == (1, "skipped")


def test_max_delete_refuses_and_deletes_nothing(setup: Setup) -> None:
    make(setup.root / "max", {"keep.txt": "k"})
    make(setup.local("max"), {"x1": "1", "x2": "2", "d/x3": "3"})
    done = setup.run("max", "--delete", "--max-delete", "3")
    assert done.returncode == 3, done.stdout
    assert ("deletion refused: the job would delete at least 4 entries, more than "
            "--max-delete 3; "
            "nothing deleted") in done.stdout
    assert sorted(p.name for p in setup.local("max").iterdir()) == ["d", "keep.txt", "x1", "x2"]
    status, report = setup.run_json("max", "--delete", "--max-delete", "4")
    assert status == 0, report
    assert report["sources"][0]["deleted"] == 4
    assert sorted(p.name for p in setup.local("max").iterdir()) == ["keep.txt"]


def snapshot(root: Path) -> dict[str, Any]:
    """The mirror as a client sees it: not the server's own state directory (its job
    journal records every job, dry runs too)."""
    links = {str(p.relative_to(root)): os.readlink(p) for p in root.rglob("*") if p.is_symlink()}
    tree = {k: v for k, v in tree_listing(root).items()
            if k.split(os.sep)[0] != STATE_DIR_NAME}
    return {"tree": tree, "links": links}


FIGURES = ("files", "dirs", "bytes", "sum_sq", "skipped", "failed", "replaced", "deleted",
           "deleted_bytes", "deletion")


def test_dry_run_changes_nothing_and_predicts_the_real_run(setup: Setup) -> None:
    make(setup.root / "dry", {"same.txt": "s", "changed.txt": "new!", "new/n.txt": "n",
                              "now-dir/f": "f", "now-file": "file"})
    make(setup.local("dry"), {"same.txt": "s", "changed.txt": "old", "gone/g.txt": "gg",
                              "gone.txt": "g", "now-dir": "was a file", "now-file/x": "x"})
    mtime = (setup.root / "dry/same.txt").stat().st_mtime_ns
    os.utime(setup.local("dry/same.txt"), ns=(mtime, mtime))
    (setup.local("dry") / "link").symlink_to(setup.outside)
    before = snapshot(setup.mirror)
    status, dry = setup.run_json("dry", "--delete", "--dry-run")
    assert status == 0, dry
    assert dry["dry_run"] is True
    assert snapshot(setup.mirror) == before
    status, real = setup.run_json("dry", "--delete")
    assert status == 0, real
    predicted = {key: dry["sources"][0][key] for key in FIGURES}
    assert predicted == {key: real["sources"][0][key] for key in FIGURES}
    # changed.txt, and the two type changes; gone, gone/g.txt, gone.txt, link.
    assert (predicted["files"], predicted["replaced"], predicted["deleted"]) == (4, 3, 4)
    assert tree_listing(setup.local("dry")) == tree_listing(setup.root / "dry")
    # A dry run of a subtree never mirrored creates nothing, not even its directory.
    make(setup.root / "fresh", {"f": "f"})
    status, report = setup.run_json("fresh", "--dry-run", "--delete")
    assert (status, report["sources"][0]["files"]) == (0, 1)
    assert not setup.local("fresh").exists()


def test_filters_first_match_decides_and_excluded_dirs_are_not_descended(setup: Setup) -> None:
    make(setup.root / "flt", {"a.iso": "1", "a.txt": "2", "pub/b.iso": "3", "pub/b.txt": "4",
                              "skip/c.iso": "5"})
    status, report = setup.run_json("flt", "--exclude", "skip/", "--include", "*/",
                                    "--include", "*.iso", "--exclude", "*")
    assert status == 0, report
    local = setup.local("flt")
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*")) == [
        "a.iso", "pub", "pub/b.iso"]


def test_bad_pattern_is_a_usage_error(tmp_path: Path) -> None:
    done = mirror_init("-s", "127.0.0.1:1:.", "--exclude", "[abc")
    assert done.returncode == 2
    assert done.stderr == "mirror-init: error: --exclude: bad pattern '[abc': '[' without its ']'\n"
    patterns = tmp_path / "patterns"
    patterns.write_text("# comment\n*.iso\n+ keep/\nbad\\\n")
    done = mirror_init("-s", "127.0.0.1:1:.", "--exclude-from", str(patterns))
    assert done.returncode == 2
    assert f"{patterns}, line 4: bad pattern" in done.stderr


def test_overlapping_delete_jobs(setup: Setup) -> None:
    make(setup.root / "lock", {"sub/slow.txt": "s"})
    jobs_before = setup.mirror_daemon.log_text().count(" source(s)")
    first = subprocess.Popen(mirror_init_command("-n", "127.0.0.1", "-p",
                                                 str(setup.mirror_daemon.port),
                                                 "-s", setup.spec("lock", delay=1.5), "--delete"),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        poll(lambda: setup.mirror_daemon.log_text().count(" source(s)") > jobs_before, 15,
             "the first job to start")
        second = setup.run("lock/sub", "--delete")
        # A job without --delete is not held up.
        plain = setup.run("lock/sub")
        out, _ = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert second.returncode == 1
    top = f"127.0.0.1_{setup.content.port}"
    assert (f"the mirror server refused the job: {top}/lock/sub is locked by job "
            in second.stderr), second.stderr
    assert f"(--delete on {top}/lock); try again once it is done" in second.stderr
    assert plain.returncode == 0, plain.stdout
    assert first.returncode == 0, out
    # Once the first is over, its lock is gone.
    assert setup.run("lock/sub", "--delete").returncode == 0
