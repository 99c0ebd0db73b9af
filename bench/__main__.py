"""`python -m bench`: mirror against rsync's daemon on loopback; see `bench/RESULTS.md`."""
from __future__ import annotations

import argparse
import fcntl
import shutil
import signal
import sys
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from bench import datasets, report
from bench.cpu import idle_check
from bench.daemons import DaemonError, ensure_rsync, find_tool, rsync_daemon, twistd_daemon
from bench.datasets import Dataset, Spec
from bench.runner import WORKLOADS, BenchError, Result, ours_client, rsync_client, run_workload

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help="comma-separated, from: %(default)s (default: all)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per tool (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="tiny datasets: checks the harness in seconds; writes no RESULTS.md")
    p.add_argument("--keep", action="store_true", help="keep datasets and logs for the next run")
    p.add_argument("--seed", type=int, default=1, help="dataset seed (default: %(default)s)")
    p.add_argument("--workers", type=int, default=8,
                   help="mirror-server --workers (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="limit on one client run, seconds (default: %(default)s)")
    p.add_argument("--results", type=Path, default=None,
                   help=f"where to write the report (default: {RESULTS}; none with --quick)")
    args = p.parse_args(argv)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    args.workloads = ["no-op" if w == "noop" else w for w in args.workloads]
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown or not args.workloads:
        p.error(f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}")
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if args.results is None and not args.quick:
        args.results = RESULTS
    return args


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def describe(spec: Spec) -> str:
    """One line on how a dataset is made."""
    where = f" in {spec.dirs} directories" if spec.dirs else ""
    sizes = ", log-normal sizes" if spec.sizes == "lognormal" else ""
    content = ("one seeded random 1 MiB block repeated (not sparse)" if spec.content == "repeated"
               else "seeded random bytes")
    return f"{spec.files} file(s){where}, {spec.total / 1e6:.1f} MB{sizes}, {content}"


def run(args: argparse.Namespace, base: Path, where: str, stack: ExitStack) -> int:
    twistd, mirror_init = find_tool("twistd"), find_tool("mirror-init")
    if not twistd or not mirror_init:
        raise BenchError("twistd or mirror-init not found next to this Python nor on PATH: "
                         "run `make install` first (`make bench` does)")
    rsync = ensure_rsync()
    idle = idle_check()
    if idle.cpu / idle.wall > 0.1:
        print(f"warning: the machine is not idle ({idle}): timings will be noisy")
    specs = datasets.QUICK if args.quick else datasets.FULL
    data, run_dir, logs = base / "data", base / "run", base / "logs"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)
    mirror_dir, rsync_dest = run_dir / "mirror", run_dir / "rsync"
    for d in (data, mirror_dir, rsync_dest, logs):
        d.mkdir(parents=True, exist_ok=True)

    print("datasets:", flush=True)
    needed = {WORKLOADS[w].dataset for w in args.workloads}
    sets: dict[str, Dataset] = {name: datasets.ensure(spec, data, base / "markers", args.seed)
                                for name, spec in specs.items() if name in needed}

    rsyncd = None
    if rsync:
        rsyncd = rsync_daemon(rsync, data, logs)
        stack.callback(rsyncd.stop)
        rsyncd.start()

    results: list[Result] = []
    for name in args.workloads:
        workload = WORKLOADS[name]
        print(f"{name}:", flush=True)
        with ExitStack() as servers:
            logdir = logs / name
            logdir.mkdir()
            content = twistd_daemon(twistd, "content-server", ["--root", str(data)], logdir)
            mirror = twistd_daemon(twistd, "mirror-server", [
                "--mirror-dir", str(mirror_dir), "--workers", str(args.workers)], logdir)
            for daemon in (content, mirror):
                servers.callback(daemon.stop)
                daemon.start()
            clients = [ours_client(mirror_init, mirror, content, mirror_dir)]
            if rsync and rsyncd and workload.compare:
                clients.append(rsync_client(rsync, rsyncd, rsync_dest))
            results.append(run_workload(workload, sets[workload.dataset], clients,
                                        [content, mirror], args.runs, args.timeout))

    env = report.environment(rsync)
    settings = {
        "data location": f"{base} ({where})",
        **{f"dataset {n}": describe(s.spec) for n, s in sets.items()},
        "seed": str(args.seed),
        "timed runs per tool": str(args.runs),
        "mirror-server --workers": str(args.workers),
        "before the start": str(idle),
        "mode": "quick (tiny datasets, harness smoke test)" if args.quick else "full",
    }
    command = "make bench" if sys.argv[1:] == [] else f"python -m bench {' '.join(sys.argv[1:])}"
    text = report.render(results, env, settings, command)
    print("\n" + text)
    if args.results:
        args.results.write_text(text)
        print(f"written to {args.results}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    base, where = datasets.workspace(args.quick)
    base.mkdir(parents=True, exist_ok=True)
    print(f"data: {base} on {where}", flush=True)
    lock = open(base / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"another benchmark is using {base}", file=sys.stderr)
        return 1
    stack = ExitStack()
    ok = False
    try:
        status = run(args, base, where, stack)
        ok = True
        return status
    except (BenchError, DaemonError) as e:
        print(f"\nBENCHMARK FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except SystemExit:
        print("\nstopped by a signal", file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.close()
        if not args.keep:
            for name in ("data", "markers", "run"):
                shutil.rmtree(base / name, ignore_errors=True)
        if not ok and (base / "logs").is_dir():
            print(f"daemon logs kept in {base / 'logs'}", file=sys.stderr)
        elif not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
