"""``make demo``: the whole system, end to end, on a generated sample.

Generates a sample tree, starts a content server and a mirror server on loopback (the real
``twistd`` plugins, each with its web status page), runs ``mirror-init`` with its live
progress and statistics, checks the mirror byte for byte against the source, and stops the
daemons: at once, or, when run on a terminal, once Enter is pressed (to look at the pages).
"""

from __future__ import annotations

import filecmp
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from mirror import network_demo
from mirror.demo_daemons import BIN, stop, twistd
from mirror.demo_tls import secured_job


def make_sample_tree(root: Path, big_size: int = 3 * 1024 * 1024, seed: int = 1) -> Path:
    """Nested directories, empty files and directories, odd but legal names, one big file."""
    rnd = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "docs" / "sub" / "deeper").mkdir(parents=True, exist_ok=True)
    (root / "empty").mkdir(exist_ok=True)
    (root / "docs" / "a.txt").write_text("hello\n")
    (root / "docs" / "empty.txt").write_bytes(b"")
    (root / "docs" / "name with spaces.txt").write_text("spaces\n")
    (root / "docs" / "unicodé ☃.txt").write_text("unicode\n")
    (root / "-leading-dash").write_text("dash\n")
    (root / "..foo").write_text("dots\n")
    (root / "docs" / "sub" / "big.bin").write_bytes(rnd.randbytes(big_size))
    for i in range(20):
        (root / "docs" / "sub" / "deeper" / f"f{i:02d}.dat").write_bytes(
            rnd.randbytes(rnd.randrange(0, 100_000)))
    os.chmod(root / "docs" / "a.txt", 0o640)
    os.chmod(root / "-leading-dash", 0o755)
    return root


def _start(plugin: str, args: list[str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    # The daemon's own port, not its web site's (which starts first).
    proc, found = twistd(plugin, ["--listen", "tcp:0:interface=127.0.0.1",
                                  "--web", "tcp:0:interface=127.0.0.1", *args],
                         log, re.compile(rb"(?<!WebSite) starting on (\d+)"))
    return proc, int(found.group(1))


def web_address(log: Path) -> str:
    """The status page of the daemon that writes ``log`` (its web site starts first)."""
    found = re.findall(rb"WebSite starting on (\d+)", log.read_bytes())
    return f"http://127.0.0.1:{int(found[0])}/" if found else "(no web site)"


def _same(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(_same(a / d, b / d) for d in cmp.common_dirs)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="mirror-demo-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        srcs = [make_sample_tree(work / "export-a", big_size=32 << 20, seed=1),
                make_sample_tree(work / "export-b", big_size=8 << 20, seed=2)]
        mirror = work / "mirror"
        mirror.mkdir()
        print(f"demo: sample trees in {work}")
        ports = []
        for src in srcs:
            cs, cport = _start("content-server", ["--root", str(src)],
                               work / f"content-server-{src.name}.log")
            procs.append(cs)
            ports.append(cport)
        ms, mport = _start("mirror-server", ["--mirror-dir", str(mirror), "--workers", "4"],
                           work / "mirror-server.log")
        procs.append(ms)
        print(f"demo: content servers on 127.0.0.1:{ports[0]} and 127.0.0.1:{ports[1]}, "
              f"mirror-server on 127.0.0.1:{mport}")
        print(f"demo: status page of the mirror server: {web_address(work / 'mirror-server.log')}"
              f" (content servers: " + ", ".join(
                  web_address(work / f"content-server-{src.name}.log") for src in srcs) + ")")
        # The second SPEC asks its content server to wait 10 ms before each file.
        cmd = [str(BIN / "mirror-init"), "-n", "127.0.0.1", "-p", str(mport),
               "-s", f"127.0.0.1:{ports[0]}:.:0,127.0.0.1:{ports[1]}:.:0.01"]
        print("demo: $ mirror-init " + " ".join(cmd[1:]))
        status = subprocess.run(cmd).returncode
        if status != 0:
            print(f"demo: mirror-init failed with status {status}", file=sys.stderr)
            return 1
        for src, cport in zip(srcs, ports, strict=True):
            target = mirror / f"127.0.0.1_{cport}"
            if not _same(src, target):
                print(f"demo: MISMATCH between {src} and {target}", file=sys.stderr)
                return 1
            print(f"demo: mirror verified: {target} is identical to {src}")
        status, target = secured_job(work, srcs[1], _start, procs)
        if status != 0 or not _same(srcs[1], target):
            print(f"demo: the secured job failed (status {status})", file=sys.stderr)
            return 1
        print(f"demo: mirror verified over TLS: {target} is identical to {srcs[1]}")
        # Third: the mirror network (an index, two tier-1 mirrors that serve, a tier-2
        # mirror pulling one big file from all three holders at once).
        if network_demo.main() != 0:
            print("demo: the mirror network demo failed", file=sys.stderr)
            return 1
        if sys.stdin.isatty():
            input(f"demo: the daemons keep running: {web_address(work / 'mirror-server.log')}"
                  " shows the job; press Enter to stop them. ")
        return 0
    finally:
        stop(procs, work)


if __name__ == "__main__":
    sys.exit(main())
