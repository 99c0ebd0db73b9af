"""`python -m bench`: mirror against rsync's daemon on loopback, and against itself; the targets
of issue 9 and their figures go to `bench/RESULTS.md` (via `bench/results.json`)."""
from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import signal
import sys
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from bench import datasets, report
from bench.cpu import idle_check
from bench.daemons import (
    Daemon,
    DaemonError,
    ensure_rsync,
    find_tool,
    rsync_daemon,
    twistd_daemon,
)
from bench.datasets import Dataset, DatasetError, Spec
from bench.runner import (
    CLIENTS,
    SOURCES,
    WORKLOADS,
    BenchError,
    Client,
    Result,
    Workload,
    fair_clients,
    leaf_dirs,
    ours_client,
    rsync_client,
    run_workload,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
STORE = HERE / "results.json"
ALIASES = {"noop": "no-op", "tiny-noop": "tiny-no-op"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    normal = [w for w, x in WORKLOADS.items() if not x.scale]
    scale = [w for w, x in WORKLOADS.items() if x.scale]
    p.add_argument("--workloads", default=None,
                   help=f"comma-separated, from: {','.join(WORKLOADS)} (default: "
                        f"{','.join(normal)}; with --scale: {','.join(scale)})")
    p.add_argument("--scale", action="store_true",
                   help="the million-file workloads (`make bench-scale`): ours only, peak RSS")
    p.add_argument("--runs", type=int, default=5,
                   help="timed runs per kind of run (default: %(default)s; some workloads run "
                        "fewer, see RESULTS.md)")
    p.add_argument("--quick", action="store_true",
                   help="tiny datasets, no warm-up runs: checks the harness in seconds; writes "
                        "no RESULTS.md")
    p.add_argument("--keep", action="store_true",
                   help="keep datasets and logs for the next run (not the million-file ones)")
    p.add_argument("--seed", type=int, default=1, help="dataset seed (default: %(default)s)")
    p.add_argument("--workers", type=int, default=8,
                   help="mirror-server --workers (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="limit on one client run, seconds (default: %(default)s; 3600 for the "
                        "million-file workloads)")
    p.add_argument("--no-rsync", action="store_true",
                   help="skip rsync (its column stays empty) instead of installing it")
    p.add_argument("--workspace", type=Path, default=None,
                   help="where datasets and copies go (default: /dev/shm/mirror-bench[-quick])")
    p.add_argument("--results", type=Path, default=None,
                   help=f"where to write the report (default: {RESULTS}, merging into "
                        f"{STORE.name} beside it; none with --quick)")
    args = p.parse_args(argv)
    if args.workloads is None:
        args.workloads = scale if args.scale else normal
    else:
        args.workloads = [ALIASES.get(w.strip(), w.strip())
                          for w in args.workloads.split(",") if w.strip()]
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


def describe(spec: Spec, total: int) -> str:
    """One line on how a dataset is made."""
    if spec.dirs == 0:
        where = ""
    elif spec.nested:
        where = f" in {spec.dirs} directories of {spec.files // spec.dirs} (two levels)"
    else:
        where = f" in {spec.dirs} director{'ies' if spec.dirs > 1 else 'y'}"
    sizes = {"lognormal": ", log-normal sizes", "equal": "",
             "uniform": f", {spec.low}-{spec.high} bytes each"}[spec.sizes]
    content = {"repeated": "one seeded random 1 MiB block repeated (not sparse)",
               "empty": "empty files", "random": "seeded random bytes"}[spec.content]
    return f"{spec.files} file(s){where}, {total / 1e6:.1f} MB{sizes}, {content}"


def clients_for(workload: Workload, data: dict[str, Dataset], tools: dict[str, str | None],
                servers: dict[str, Daemon], dirs: dict[str, Path],
                env: dict[str, str] | None) -> list[Client]:
    """The kinds of run the workload compares (see `runner.CLIENTS`)."""
    mirror_init, content, mirror = tools["mirror-init"], servers["content"], servers["mirror"]
    assert mirror_init is not None
    if workload.kind == "sources":
        parts = leaf_dirs(data[workload.dataset])
        if len(parts) != SOURCES:
            raise BenchError(f"dataset {workload.dataset} has {len(parts)} directories, the "
                             f"sources workload needs {SOURCES}")
        one, many = CLIENTS["sources"][1], CLIENTS["sources"][0]
        return [ours_client(mirror_init, mirror, content, dirs["mirror"], many, env, parts),
                ours_client(mirror_init, mirror, content, dirs["mirror"], one, env)]
    if workload.kind == "fair":
        assert workload.background is not None
        return fair_clients(mirror_init, mirror, content, dirs["mirror"],
                            data[workload.background], dirs["logs"], env)
    clients = [ours_client(mirror_init, mirror, content, dirs["mirror"], env=env)]
    if workload.kind == "rsync" and "rsyncd" in servers and tools["rsync"]:
        clients.append(rsync_client(tools["rsync"], servers["rsyncd"], dirs["rsync"], env))
    return clients


def run(args: argparse.Namespace, base: Path, where: str, stack: ExitStack) -> int:
    twistd, mirror_init = find_tool("twistd"), find_tool("mirror-init")
    if not twistd or not mirror_init:
        raise BenchError("twistd or mirror-init not found next to this Python nor on PATH: "
                         "run `make install` first (`make bench` does)")
    wants_rsync = any(WORKLOADS[w].kind == "rsync" for w in args.workloads)
    rsync = ensure_rsync() if wants_rsync and not args.no_rsync else None
    idle = idle_check()
    if idle.cpu / idle.wall > 0.1:
        print(f"warning: the machine is not idle ({idle}): timings will be noisy")
    specs = datasets.QUICK if args.quick else datasets.FULL
    data, markers, run_dir = base / "data", base / "markers", base / "run"
    logs = base / "logs"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)
    mirror_dir, rsync_dest = run_dir / "mirror", run_dir / "rsync"
    for d in (data, mirror_dir, rsync_dest, logs):
        d.mkdir(parents=True, exist_ok=True)
    tools = {"mirror-init": mirror_init, "rsync": rsync}

    sets: dict[str, Dataset] = {}
    results: list[Result] = []
    for index, name in enumerate(args.workloads):
        workload = WORKLOADS[name]
        print(f"{name}:", flush=True)
        for needed in workload.datasets:
            if needed not in sets:
                copies = 1 if specs[needed].scratch else 2
                sets[needed] = datasets.ensure(specs[needed], data, markers, args.seed, copies)
        extra = dict(workload.env)
        env = dict(os.environ, **extra) if extra else None
        dataset = sets[workload.dataset]
        try:
            with ExitStack() as servers:
                logdir = logs / name
                logdir.mkdir()
                daemons = {
                    "content": twistd_daemon(twistd, "content-server", ["--root", str(data)],
                                             logdir, extra),
                    "mirror": twistd_daemon(twistd, "mirror-server", [
                        "--mirror-dir", str(mirror_dir), "--workers", str(args.workers)],
                        logdir, extra),
                }
                if rsync and workload.kind == "rsync":
                    daemons["rsyncd"] = rsync_daemon(rsync, data, logdir, extra)
                for daemon in daemons.values():
                    servers.callback(daemon.stop)
                    daemon.start()
                clients = clients_for(workload, sets, tools, daemons,
                                      {"mirror": mirror_dir, "rsync": rsync_dest, "logs": logdir},
                                      env)
                runs = min(args.runs, workload.max_runs or args.runs)
                timeout = max(args.timeout, workload.timeout or 0.0)
                result = run_workload(workload, dataset, clients,
                                      [daemons["content"], daemons["mirror"]], runs, timeout,
                                      warmup=not args.quick)
        finally:
            if dataset.spec.scratch:
                print(f"  {name}: deleting dataset {dataset.spec.name} and its copies", flush=True)
                datasets.remove(dataset, markers)
                shutil.rmtree(run_dir, ignore_errors=True)
                for d in (mirror_dir, rsync_dest):
                    d.mkdir(parents=True, exist_ok=True)
                del sets[workload.dataset]
        result.run |= {"date": report.now(), "commit": report.git_commit(),
                      "mode": "quick" if args.quick else "full",
                      "dataset": describe(dataset.spec, dataset.tree.total_bytes),
                      "other load before": str(idle)}
        results.append(result)
        if not args.keep:
            # A dataset no later workload needs goes now: tmpfs is memory (the 4 GiB file and
            # its copy come last).
            later = {d for w in args.workloads[index + 1:] for d in WORKLOADS[w].datasets}
            for done in [d for d in sets if d not in later]:
                datasets.remove(sets.pop(done), markers)

    env_info = report.environment(rsync)
    settings = {
        "data location": f"{base} ({where})",
        "seed": str(args.seed),
        "mirror-server --workers": str(args.workers),
    }
    command = ("make bench-scale" if sys.argv[1:] == ["--scale"] else "make bench"
               if sys.argv[1:] == [] else f"python -m bench {' '.join(sys.argv[1:])}")
    if args.results:
        store = args.results.with_name(STORE.name) if args.results != RESULTS else STORE
        merged = report.merge(store, results, env_info, settings, command)
        text = report.render(merged)
        args.results.write_text(text)
        print(f"\n{report.summary_text(merged)}\nwritten to {args.results} and {store}")
    else:
        merged = report.merge(None, results, env_info, settings, command)
        print("\n" + report.render(merged))
    return 0


def compile_bytecode() -> None:
    """Write the project's bytecode (``__pycache__``) before anything is timed.

    A user's installation has it (pip compiles what it installs), but an editable checkout
    gets it only when Python may write it: with PYTHONDONTWRITEBYTECODE set, as on these
    machines, every mirror-init and twistd start compiled our modules from source again,
    about 40 ms of every no-op run (bench/NOTES.md). compileall writes it regardless.
    """
    import compileall

    for package in ("mirror", "twisted/plugins"):
        compileall.compile_dir(str(HERE.parent / package), quiet=1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    compile_bytecode()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    if args.workspace:
        base, where = args.workspace.resolve(), "given with --workspace"
    else:
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
    except (BenchError, DaemonError, DatasetError) as e:
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
        # Only what the benchmark made: --workspace may name a directory with other things.
        if not args.keep:
            for name in ("data", "markers", "run"):
                shutil.rmtree(base / name, ignore_errors=True)
        if not ok and (base / "logs").is_dir():
            print(f"daemon logs kept in {base / 'logs'}", file=sys.stderr)
        elif not args.keep:
            shutil.rmtree(base / "logs", ignore_errors=True)
            (base / ".lock").unlink(missing_ok=True)
            try:
                base.rmdir()
            except OSError:
                pass
        lock.close()


if __name__ == "__main__":
    sys.exit(main())
