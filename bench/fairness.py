"""Quick fairness measurement: a small job submitted behind many big ones, against alone.

    python -m bench.fairness [--runs 3] [--big-jobs 19] [--base /dev/shm/mirror-fair]
                             [--other OLD_CHECKOUT]

Real daemons (the bench's), data on tmpfs. Each run empties the mirror, starts the big jobs
(one mirror-init each, one source each), waits until they are all transferring, then times
a 20-file job; "alone" times the same job with nothing else running. Prints the medians and
their ratio (the target: behind / alone <= 2.0). With ``--other``, a second mirror server runs
the code of that checkout, and each run measures both in turn (same machine load: pairs).
With ``--sources 50`` it measures instead one job of 50 sources x 200 small files against
the same 10,000 files as one source (the target: <= 1.3). Not part of `make bench` (yet).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.daemons import find_tool, twistd_daemon
from bench.runner import BenchError, Client, ours_client, run_client

SMALL_FILES, SMALL_SIZE = 20, 4096


def make_tree(root: Path, files: int, size: int, per_dir: int = 100) -> None:
    """``files`` files in directories of ``per_dir``; ``size`` 0 means 0.5-8 KiB at random."""
    if root.exists():
        return
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for i in range(files):
        d = tmp / f"d{i // per_dir:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}").write_bytes(os.urandom(size or random.randint(512, 8192)))
    tmp.rename(root)


def started(dest: Path) -> bool:
    """True once the mirror holds at least one file under ``dest``."""
    return dest.is_dir() and any(p.is_file() for p in dest.rglob("*"))


def server_seconds(summary: dict[str, Any] | None) -> float:
    """The job's time as the mirror server measured it (its one source's ``elapsed``): no
    client start-up in it."""
    assert summary is not None
    return float(summary["sources"][0]["elapsed"])


def measure(client: Client, big: list[str]) -> tuple[float, float, float, float]:
    """Seconds of the small job alone, then behind the big jobs: measured by the harness,
    and by the mirror server."""
    top = client.dest_root
    shutil.rmtree(top, ignore_errors=True)
    alone, alone_summary = run_client(client, "small", 120)
    shutil.rmtree(top, ignore_errors=True)
    procs = [subprocess.Popen(client.command(name), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for name in big]
    try:
        deadline = time.monotonic() + 120
        while not all(started(client.dest(name)) for name in big):
            if time.monotonic() > deadline:
                raise BenchError("the big jobs did not start")
            time.sleep(0.02)
        behind, behind_summary = run_client(client, "small", 300)
        for p in procs:
            p.wait(300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    shutil.rmtree(top, ignore_errors=True)
    return alone, behind, server_seconds(alone_summary), server_seconds(behind_summary)


def measure_sources(client: Client, sources: int) -> tuple[float, float]:
    """Seconds to mirror ``many`` as one source, then as one job of ``sources`` sources."""
    path = f"many{sources}"
    argv = client.command(path)
    spec = argv.index("-s") + 1
    many = list(argv)
    many[spec] = ",".join(argv[spec].replace(f":{path}:", f":{path}/d{i:03d}:")
                          for i in range(sources))
    split = Client("split", lambda _: many, client.dest_root, client.servers, prints_json=True)
    top = client.dest_root
    shutil.rmtree(top, ignore_errors=True)
    one = run_client(client, path, 300)[0]
    shutil.rmtree(top, ignore_errors=True)
    several = run_client(split, path, 300)[0]
    shutil.rmtree(top, ignore_errors=True)
    return one, several


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--big-jobs", type=int, default=19)
    ap.add_argument("--big-files", type=int, default=100)
    ap.add_argument("--big-size", type=int, default=512 * 1024)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--base", type=Path, default=Path("/dev/shm/mirror-fair"))
    ap.add_argument("--other", type=Path, help="another checkout's mirror server, compared")
    ap.add_argument("--sources", type=int, default=0,
                    help="measure N sources x 200 files in one job against one source")
    args = ap.parse_args()
    twistd, mirror_init = find_tool("twistd"), find_tool("mirror-init")
    if not twistd or not mirror_init:
        raise BenchError("run `make install` first")
    data, mirror_dir, logs = args.base / "data", args.base / "mirror", args.base / "logs"
    shutil.rmtree(mirror_dir, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)
    for d in (data, mirror_dir, logs):
        d.mkdir(parents=True, exist_ok=True)
    big = [f"big{i:02d}" for i in range(args.big_jobs)]
    if args.sources:
        make_tree(data / f"many{args.sources}", args.sources * 200, 0, per_dir=200)
    else:
        for name in big:
            make_tree(data / name, args.big_files, args.big_size)
    make_tree(data / "small", SMALL_FILES, SMALL_SIZE)

    variants = {"this": None, "other": args.other} if args.other else {"this": None}
    alone: dict[str, list[float]] = {v: [] for v in variants}
    behind: dict[str, list[float]] = {v: [] for v in variants}
    server: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    with ExitStack() as stack:
        content = twistd_daemon(twistd, "content-server", ["--root", str(data)], logs)
        stack.callback(content.stop)
        content.start()
        clients = {}
        for name, tree in variants.items():
            (logs / name).mkdir()
            (mirror_dir / name).mkdir()
            mirror = twistd_daemon(twistd, "mirror-server", [
                "--mirror-dir", str(mirror_dir / name), "--workers", str(args.workers)],
                logs / name)
            if tree is not None:
                assert mirror.env is not None
                mirror.env["PYTHONPATH"] = str(tree.resolve())
            stack.callback(mirror.stop)
            mirror.start()
            clients[name] = ours_client(mirror_init, mirror, content, mirror_dir / name)
            run_client(clients[name], "small", 120)  # warm-up (imports, digest cache)
        for run in range(args.runs):
            for name, client in clients.items():
                if args.sources:
                    a, b = measure_sources(client, args.sources)
                    alone[name].append(a)
                    behind[name].append(b)
                    print(f"run {run + 1} ({name}): one source {a:.3f} s, {args.sources} "
                          f"sources {b:.3f} s, ratio {b / a:.2f}", flush=True)
                    continue
                a, b, sa, sb = measure(client, big)
                alone[name].append(a)
                behind[name].append(b)
                server[name].append((sa, sb))
                print(f"run {run + 1} ({name}): alone {a:.3f} s, behind {args.big_jobs} big "
                      f"jobs {b:.3f} s, ratio {b / a:.2f}; in the mirror server {sa:.3f} s "
                      f"and {sb:.3f} s, ratio {sb / sa:.2f}", flush=True)
    for name in variants:
        if args.sources:
            a, b = statistics.median(alone[name]), statistics.median(behind[name])
            print(f"{name}: median one source {a:.3f} s, {args.sources} sources {b:.3f} s, "
                  f"ratio {b / a:.2f}")
            continue
        a, b = statistics.median(alone[name]), statistics.median(behind[name])
        ratios = [y / x for x, y in zip(alone[name], behind[name], strict=True)]
        print(f"{name}: median alone {a:.3f} s, behind {b:.3f} s, ratio of medians "
              f"{b / a:.2f}, median of ratios {statistics.median(ratios):.2f} "
              f"({args.big_jobs} big jobs of {args.big_files} x {args.big_size} B; "
              f"{args.workers} workers)")
        sa = statistics.median(x for x, _ in server[name])
        sb = statistics.median(y for _, y in server[name])
        print(f"{name}: in the mirror server: median alone {sa:.3f} s, behind {sb:.3f} s, "
              f"ratio of medians {sb / sa:.2f}, median of ratios "
              f"{statistics.median(y / x for x, y in server[name]):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
