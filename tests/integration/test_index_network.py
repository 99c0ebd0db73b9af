"""A mirror network wired through the index, with the installed programs (issues 10, 12):
a serving mirror registers what it places (at once, with its digest) and withdraws what
``--delete`` removes; another mirror finds it through the index and fetches a big file from
the origin and from it at once."""

from __future__ import annotations

import json
import random
import urllib.request
from pathlib import Path

from mirror.hashing import digest_of
from tests.integration.conftest import free_port
from tests.integration.daemons import Daemon, content_server
from tests.integration.test_index_end_to_end import holders, index_daemon
from tests.integration.test_mirror_network import finished, pull, serving_mirror
from tests.integration.waiting import poll

MiB = 1 << 20
SIZE = 6 * MiB + 777


def test_placed_files_reach_the_index_and_feed_multi_source(tmp_path: Path, daemons) -> None:
    logs = tmp_path / "logs"
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(13).randbytes(SIZE)
    (src / "big").write_bytes(data)
    (src / "small").write_bytes(b"small file")
    web = free_port()
    index = daemons(index_daemon, logs, str(tmp_path / "index.db"),
                    "--web", f"tcp:{web}:interface=127.0.0.1")
    at_index = f"127.0.0.1:{index.port}"
    # The origin sends at most 4 MiB/s: the other holder has time to serve chunks too.
    origin = daemons(content_server, src, logs, "--max-rate", "4M")
    top = f"127.0.0.1_{origin.port}"
    spec = f"127.0.0.1:{origin.port}:."
    # A walks its tree once an hour: only the placement itself can tell the index in time.
    a, a_serve = serving_mirror(tmp_path / "a", logs, "--index", at_index, "--rescan", "3600")
    daemons(lambda d: d, a)
    poll(lambda: f"index {at_index}: registered 0 files" in a.log_text(), 15,
         "A's (empty) registration")

    assert finished(pull(a.port, spec))["ok"]
    digest = digest_of(data).hex()
    # Placed by A, verified: at the index with its digest (the bundle's small file too).
    poll(lambda: [(h["path"], h["address"], h["digest"]) for h in holders(index, digest)]
         == [(f"{top}/big", f"127.0.0.1:{a_serve}", digest)], 10, "A's big file at the index")
    assert [h["digest"] for h in holders(index, f"{top}/small")] == [
        digest_of(b"small file").hex()]

    # B only asks the index (no --serve): the origin and A serve the big file's chunks.
    (tmp_path / "b").mkdir()
    b = daemons(lambda d: d, Daemon("mirror-server", [
        "--mirror-dir", str(tmp_path / "b"), "--no-fsync", "--index", at_index,
        "--multi-source-threshold", "1M"], logs).start())
    report = finished(pull(b.port, spec))
    assert report["ok"], report
    assert (tmp_path / "b" / top / "big").read_bytes() == data
    served = {h["holder"]: h["bytes"] for h in report["sources"][0]["holders"]}
    assert set(served) == {f"127.0.0.1:{origin.port}", f"127.0.0.1:{a_serve}"}, served
    assert sum(served.values()) == SIZE and all(served.values()), served
    assert holders(index, f"{top}/big")[0]["address"] == f"127.0.0.1:{a_serve}"

    # The origin withdraws the big file; --delete on A withdraws it from the index too.
    (src / "big").unlink()
    deleted = finished(pull(a.port, spec, "--delete"))
    assert deleted["ok"], deleted
    assert not (tmp_path / "a" / top / "big").exists()
    poll(lambda: holders(index, digest) == [], 10, "the deleted file withdrawn")
    assert [h["path"] for h in holders(index, ".")] == [f"{top}/small"]

    # The index's web site: its nodes and leases, files and queries (B asked by digest).
    def status() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{web}/api/status", timeout=10) as r:
            return json.loads(r.read())

    poll(lambda: status()["files"] == 1, 10, "the index's status page to show one file")
    view = status()
    assert [n["address"] for n in view["leases"]] == [f"127.0.0.1:{a_serve}"], view
    assert view["queries"]["digest"] >= 1, view
