"""``make demo-network``: a small mirror network, end to end (issue 10).

An origin content server exports a big file; two tier-1 mirror servers pull it from the
origin and serve their mirror directories (``--serve``); a tier-2 mirror server fetches the
file from all three at once (multi-source download, every chunk checked against the origin's
hashes). Each holder sends at most 8 MiB/s (``--max-rate``), so the tier-2 transfer is about
three times as fast as from one holder, and mirror-init's report says how many bytes each
holder served. Nobody names the holders: the tier-1 mirrors register what they place with an
index (``twistd mirror-index``, ``--index``), and the tier-2 mirror asks it who holds the
file's digest (``mirror-where`` shows the same answer).
"""

from __future__ import annotations

import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mirror.demo_daemons import BIN, stop, twistd
from mirror.hashing import digest_of

SIZE = 48 << 20
RATE = "8M"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _daemon(plugin: str, args: list[str], log: Path, port: int) -> subprocess.Popen[bytes]:
    """``twistd PLUGIN`` listening on ``port``, once its log says so."""
    proc, _ = twistd(plugin, ["--listen", f"tcp:{port}:interface=127.0.0.1", *args], log,
                     re.compile(rb" starting on %d\b" % port))
    return proc


def _mirror_init(control: int, spec: str) -> int:
    cmd = [str(BIN / "mirror-init"), "-p", str(control), "-s", spec]
    print("demo: $ mirror-init " + " ".join(cmd[1:]), flush=True)
    return subprocess.run(cmd, stdin=subprocess.DEVNULL).returncode


def _where(index: int, what: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "mirror-where"), "-i", f"127.0.0.1:{index}", what],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)


def _wait_for_holders(index: int, digest: str, count: int) -> str:
    """mirror-where's answer once the index lists ``count`` holders of ``digest``."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        done = _where(index, digest)
        if done.returncode == 0 and len(done.stdout.splitlines()) >= count:
            return done.stdout
        time.sleep(0.1)
    raise SystemExit(f"demo: the index did not list {count} holders of {digest}")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="mirror-network-demo-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        src = work / "origin"
        src.mkdir()
        data = random.Random(3).randbytes(SIZE)
        (src / "release.iso").write_bytes(data)
        origin = _free_port()
        procs.append(_daemon("content-server", ["--root", str(src), "--max-rate", RATE],
                             work / "origin.log", origin))
        spec = f"127.0.0.1:{origin}:."
        index = _free_port()
        procs.append(_daemon("mirror-index", ["--db", str(work / "index.db")],
                             work / "index.log", index))
        at_index = ["--index", f"127.0.0.1:{index}"]
        serving = []
        for name in ("tier1-a", "tier1-b"):
            control, serve = _free_port(), _free_port()
            (work / name).mkdir()
            procs.append(_daemon("mirror-server", [
                "--mirror-dir", str(work / name), "--serve", f"tcp:{serve}:interface=127.0.0.1",
                "--max-rate", RATE, *at_index], work / f"{name}.log", control))
            serving.append((name, control, serve))
        print(f"demo: origin on 127.0.0.1:{origin} and two tier-1 mirrors, each sending at "
              f"most {RATE}/s; an index on 127.0.0.1:{index}")
        for name, control, serve in serving:
            print(f"demo: {name} pulls from the origin and serves on 127.0.0.1:{serve}")
            if _mirror_init(control, spec) != 0:
                return 1
        digest = digest_of(data).hex()
        print(f"demo: $ mirror-where -i 127.0.0.1:{index} {digest}")
        print(_wait_for_holders(index, digest, len(serving)), end="")
        tier2 = _free_port()
        (work / "tier2").mkdir()
        procs.append(_daemon("mirror-server", ["--mirror-dir", str(work / "tier2"), *at_index],
                             work / "tier2.log", tier2))
        print("demo: tier 2 fetches the file from the origin and both tier-1 mirrors at once")
        started = time.monotonic()
        if _mirror_init(tier2, spec) != 0:
            return 1
        took = time.monotonic() - started
        placed = work / "tier2" / f"127.0.0.1_{origin}" / "release.iso"
        if placed.read_bytes() != data:
            print(f"demo: MISMATCH in {placed}", file=sys.stderr)
            return 1
        print(f"demo: {SIZE >> 20} MiB verified in {took:.1f} s from three holders "
              f"(one alone, at {RATE}/s: {SIZE / (8 << 20):.0f} s)")
        return 0
    finally:
        stop(procs, work)


if __name__ == "__main__":
    sys.exit(main())
