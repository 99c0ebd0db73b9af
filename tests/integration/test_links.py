"""Symbolic links from the installed programs (issue 12): ``twistd content-server`` lists them,
``twistd mirror-server`` recreates the safe ones (rsync --links --safe-links) and never
writes through one, ``mirror-init`` reports the skipped ones, and ``--no-links`` skips all."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.integration.conftest import both_transports
from tests.integration.daemons import content_server, mirror_init, mirror_server


def make_source(src: Path) -> Path:
    (src / "dists" / "bookworm" / "main").mkdir(parents=True)
    (src / "dists" / "bookworm" / "Release").write_bytes(b"release\n")
    (src / "dists" / "bookworm" / "main" / "Packages").write_bytes(b"packages\n")
    os.symlink("bookworm", src / "dists" / "stable")  # a directory target
    os.symlink("bookworm/Release", src / "dists" / "Release")  # a file target
    os.symlink("../../..", src / "dists" / "bookworm" / "main" / "top")  # deep, inside
    os.symlink("/etc", src / "abs")
    os.symlink("../outside", src / "escape")
    os.symlink("dists/../..", src / "sneaky")
    return src


def run(ms_port: int, cs_port: int, *extra: str, path: str = ".") -> tuple[int, dict]:
    done = mirror_init("-n", "127.0.0.1", "-p", str(ms_port), "-s",
                       f"127.0.0.1:{cs_port}:{path}", "--json", *extra)
    return done.returncode, json.loads(done.stdout)


@both_transports
def test_safe_links_recreated_unsafe_ones_reported(tmp_path: Path, daemons) -> None:
    src = make_source(tmp_path / "src")
    outside = tmp_path / "outside"
    outside.mkdir()
    mirror = tmp_path / "mirror"
    cs = daemons(content_server, src, tmp_path / "logs")
    ms = daemons(mirror_server, mirror, tmp_path / "logs")
    top = mirror / f"127.0.0.1_{cs.port}"
    # Links planted in the mirror where the source has a link and a directory: replaced as
    # links, never followed (nothing may land in outside/).
    (top / "dists").mkdir(parents=True)
    os.symlink(outside, top / "dists" / "stable")
    os.symlink(outside, top / "dists" / "bookworm")

    status, report = run(ms.port, cs.port)
    assert status == 0, report
    spec = report["sources"][0]
    assert (spec["links"], spec["links_skipped"], spec["failed"]) == (3, 3, 0), spec
    assert spec["errors"] == []
    reasons = {item["path"]: item["message"] for item in spec["skipped_links"]}
    assert reasons == {
        "abs": "unsafe link skipped: absolute target '/etc'",
        "escape": "unsafe link skipped: target '../outside' leads outside the mirrored tree",
        "sneaky": "unsafe link skipped: target 'dists/../..' climbs ('..') after a name: "
                  "it could leave the tree through another link",
    }
    assert os.readlink(top / "dists" / "stable") == "bookworm"
    assert os.readlink(top / "dists" / "Release") == "bookworm/Release"
    assert os.readlink(top / "dists" / "bookworm" / "main" / "top") == "../../.."
    assert not (top / "dists" / "bookworm").is_symlink()
    assert (top / "dists" / "stable" / "main" / "Packages").read_bytes() == b"packages\n"
    for name in ("abs", "escape", "sneaky"):
        assert not os.path.lexists(top / name)
    assert os.listdir(outside) == []
    assert [p for p in mirror.rglob(".mirror-tmp-*")] == []

    # Re-run: identical links left alone; a changed one replaced; the text report.
    inode = os.lstat(top / "dists" / "stable").st_ino
    os.unlink(src / "dists" / "Release")
    os.symlink("stable/Release", src / "dists" / "Release")
    done = mirror_init("-n", "127.0.0.1", "-p", str(ms.port), "-s", f"127.0.0.1:{cs.port}:.")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "links of 127.0.0.1:" in done.stdout and ": 1 placed, 3 skipped" in done.stdout
    assert "  abs: unsafe link skipped: absolute target '/etc'" in done.stdout
    assert os.lstat(top / "dists" / "stable").st_ino == inode
    assert os.readlink(top / "dists" / "Release") == "stable/Release"


def test_no_links(tmp_path: Path, daemons) -> None:
    src = make_source(tmp_path / "src")
    cs = daemons(content_server, src, tmp_path / "logs")
    ms = daemons(mirror_server, tmp_path / "mirror", tmp_path / "logs")
    status, report = run(ms.port, cs.port, "--no-links", path="dists")
    assert status == 0, report
    spec = report["sources"][0]
    assert (spec["links"], spec["links_skipped"], spec["skipped_links"]) == (0, 3, [])
    assert report["totals"]["links_skipped"] == 3
    top = tmp_path / "mirror" / f"127.0.0.1_{cs.port}"
    links = [p for p in top.rglob("*") if p.is_symlink()]
    assert links == []
    assert (top / "dists" / "bookworm" / "Release").read_bytes() == b"release\n"
