"""Timed, verified client runs, two kinds of run alternating (ABBA) per workload: ours against
rsync, or ours against ours (50 sources against one; a small job behind 19 big ones against
the same job alone)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cpu import Meter, Other, process_cpu
from bench.daemons import RSYNC_MODULE, Daemon
from bench.datasets import Dataset, dir_path
from bench.trees import MismatchError, Tree, check_bytes, check_tree
from mirror.paths import STATE_DIR_NAME

FILL = "filling run"
#: Masks SHA-NI in OpenSSL (CPUID leaf 7, EBX bit 29) for every process it is given to.
NO_SHA_NI = (("OPENSSL_ia32cap", ":~0x20000000"),)
#: The sources workload: this many SPECs, each naming one directory of the dataset.
SOURCES = 50
#: The fair workload: big jobs submitted before the small one, each one directory of `fair-big`.
BIG_JOBS = 19
#: Seconds the big jobs of the fair workload may take to be accepted (print their progress).
BIG_JOBS_START = 60.0


class BenchError(RuntimeError):
    """A client failed, timed out, or left a wrong mirror: the benchmark is void."""


@dataclass(frozen=True)
class Workload:
    """What to mirror and how.

    `kind`: "rsync" (ours against rsync's daemon), "sources" (one job of `SOURCES` SPECs, one
    per directory of the dataset, against one SPEC of the whole), "fair" (the dataset as a
    small job submitted behind `BIG_JOBS` jobs, against it alone) or "ours" (ours only).
    `noop` reruns into the filled destination. `max_runs` caps `--runs` (slow workloads).
    `env` is added to the environment of every process of the workload, servers included.
    `scale` workloads run under `--scale` (`make bench-scale`) only.
    """

    name: str
    dataset: str
    kind: str = "rsync"
    noop: bool = False
    max_runs: int | None = None
    warmup: bool = True
    env: tuple[tuple[str, str], ...] = ()
    scale: bool = False
    background: str | None = None
    timeout: float | None = None

    @property
    def datasets(self) -> list[str]:
        return [self.dataset] + ([self.background] if self.background else [])


WORKLOADS = {w.name: w for w in (
    Workload("small", "small"),
    Workload("sources", "small", kind="sources"),
    Workload("big", "big"),
    Workload("big-no-sha-ni", "big", env=NO_SHA_NI, max_runs=3),
    Workload("mixed", "mixed"),
    Workload("no-op", "mixed", noop=True),
    Workload("mixed-no-sha-ni", "mixed", env=NO_SHA_NI, max_runs=3),
    Workload("tiny", "tiny", max_runs=3),
    Workload("tiny-no-op", "tiny", noop=True, max_runs=3),
    Workload("fair", "fair", kind="fair", background="fair-big"),
    Workload("memory", "memory", kind="ours", max_runs=1, warmup=False),
    Workload("tree-1m", "tree-1m", kind="ours", max_runs=1, warmup=False, scale=True,
             timeout=3600.0),
    Workload("dir-1m", "dir-1m", kind="ours", max_runs=1, warmup=False, scale=True,
             timeout=3600.0),
)}
#: The two kinds of run of each kind of workload, in the order of its ratio (first / second).
CLIENTS = {"rsync": ("ours", "rsync"), "sources": (f"{SOURCES} sources", "1 source"),
           "fair": (f"behind {BIG_JOBS}", "alone"), "ours": ("ours",)}


@dataclass
class Client:
    """A kind of run: its command for a dataset path, where the copy lands, its servers.

    A run is timed from the client's start to its exit. `before` and `after`, if given, run
    around each run, untimed. `env`: the client's whole environment (None: ours).
    """

    name: str
    command: Callable[[str], list[str]]
    dest_root: Path
    servers: list[Daemon]
    prints_json: bool = False
    env: dict[str, str] | None = None
    before: Callable[[], None] | None = None
    after: Callable[[], None] | None = None
    #: Facts about its runs for the report, asked for once all are done.
    notes: Callable[[], dict[str, str]] | None = None

    def dest(self, path: str) -> Path:
        return self.dest_root / path


def mirror_init_argv(mirror_init: str, mirror: Daemon, specs: list[str]) -> list[str]:
    """`mirror-init -n 127.0.0.1 -p PORT -s SPEC ... --json`."""
    argv = [mirror_init, "-n", "127.0.0.1", "-p", str(mirror.port)]
    for spec in specs:
        argv += ["-s", spec]
    return [*argv, "--json"]


def ours_client(mirror_init: str, mirror: Daemon, content: Daemon, mirror_dir: Path,
                name: str = "ours", env: dict[str, str] | None = None,
                parts: list[str] | None = None) -> Client:
    """`mirror-init --json` against our servers; the copy lands in MIRROR_DIR/HOST_PORT/PATH.

    With `parts`, one SPEC per part (PATH/PART) instead of one for PATH: when the parts are
    PATH's directories, the same files land in the same places.
    """
    def specs(path: str) -> list[str]:
        return [f"127.0.0.1:{content.port}:{p}:0"
                for p in ([f"{path}/{part}" for part in parts] if parts else [path])]

    return Client(name, lambda path: mirror_init_argv(mirror_init, mirror, specs(path)),
                  mirror_dir / f"127.0.0.1_{content.port}", [content, mirror],
                  prints_json=True, env=env)


def rsync_client(rsync: str, rsyncd: Daemon, dest_root: Path,
                 env: dict[str, str] | None = None) -> Client:
    """`rsync -a rsync://127.0.0.1:PORT/MODULE/PATH/ DEST/PATH/`."""
    dest_root.mkdir(parents=True, exist_ok=True)
    return Client(
        "rsync",
        lambda path: [rsync, "-a", f"rsync://127.0.0.1:{rsyncd.port}/{RSYNC_MODULE}/{path}/",
                      f"{dest_root / path}/"],
        dest_root, [rsyncd], env=env)


def leaf_dirs(dataset: Dataset) -> list[str]:
    """The dataset's leaf directories, relative to it."""
    return [dir_path(dataset.spec, d) for d in range(dataset.spec.dirs)]


def _killpg(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


class BigJobs:
    """The fair workload's big jobs: one mirror-init each, started together; `start` returns
    once the mirror server has accepted every one (each printed its first progress line)."""

    def __init__(self, command: Callable[[str], list[str]], paths: list[str], logdir: Path,
                 env: dict[str, str] | None) -> None:
        self.command, self.paths, self.logdir, self.env = command, paths, logdir, env
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        #: Per run, how many big jobs were running when `start` returned, and at `stop`.
        self.running: list[tuple[int, int]] = []
        self._at_start = 0

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        for n, path in enumerate(self.paths):
            err = self.logdir / f"big-job-{n:02d}.err"
            with open(err, "wb") as f:
                proc = subprocess.Popen(self.command(path), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=f, env=self.env,
                                        start_new_session=True)
            self.procs.append((proc, err))
        deadline = time.monotonic() + BIG_JOBS_START
        waiting = list(self.procs)
        while waiting:
            for proc, err in list(waiting):
                status = proc.poll()
                if status not in (None, 0):
                    argv = " ".join(self.command(self.paths[self.procs.index((proc, err))]))
                    raise BenchError(f"a big job exited with status {status}: {argv}\n"
                                     f"{_tail(err.read_bytes())}")
                if status == 0 or err.stat().st_size > 0:
                    waiting.remove((proc, err))
            if waiting and time.monotonic() > deadline:
                raise BenchError(f"{len(waiting)} big job(s) printed no progress in "
                                 f"{BIG_JOBS_START:.0f} s")
            time.sleep(0.02)
        self._at_start = self._alive()

    def _alive(self) -> int:
        return sum(proc.poll() is None for proc, _ in self.procs)

    def stop(self) -> None:
        self.running.append((self._at_start, self._alive()))
        for proc, _ in self.procs:
            _killpg(proc)
        self.procs.clear()


def fresh_mirror(mirror: Daemon, dest_root: Path) -> None:
    """Restart the mirror server on an emptied destination: no job of a previous run left.

    Its state directory (`MIRROR_DIR/.mirror-state`, beside ``dest_root``) goes too: the
    job journal would otherwise resume the previous run's unfinished jobs (the fair
    workload's 19 big ones) on the restarted server, beside the job being timed.
    """
    mirror.stop()
    _empty(dest_root)
    _empty(dest_root.parent / STATE_DIR_NAME)
    mirror.start()


def fair_clients(mirror_init: str, mirror: Daemon, content: Daemon, mirror_dir: Path,
                 background: Dataset, logdir: Path, env: dict[str, str] | None) -> list[Client]:
    """The small job behind `BIG_JOBS` big ones (each a directory of `background`), and alone;
    every run on a freshly started mirror server, timed as the user waits for it: from
    starting mirror-init to its exit (as the issue's "7-24x its time alone" was measured)."""
    behind = ours_client(mirror_init, mirror, content, mirror_dir, CLIENTS["fair"][0], env)
    alone = ours_client(mirror_init, mirror, content, mirror_dir, CLIENTS["fair"][1], env)
    paths = [f"{background.spec.name}/{leaf}" for leaf in leaf_dirs(background)[:BIG_JOBS]]
    if len(paths) < BIG_JOBS:
        raise BenchError(f"dataset {background.spec.name} has {len(paths)} directories, the "
                         f"fair workload needs {BIG_JOBS}")
    big = BigJobs(behind.command, paths, logdir, env)

    def before_behind() -> None:
        fresh_mirror(mirror, behind.dest_root)
        big.start()

    def after_behind() -> None:
        big.stop()
        mirror.stop()

    behind.before, behind.after = before_behind, after_behind
    behind.notes = lambda: {
        f"big jobs (of {BIG_JOBS}) running when the small one was submitted / ended, per run "
        "(warm-up included)": ", ".join(f"{a} / {b}" for a, b in big.running)}
    alone.before = lambda: fresh_mirror(mirror, alone.dest_root)
    return [behind, alone]


@dataclass
class Result:
    """Timed runs (seconds, warm-ups excluded) per client, in `clients` order (the ratio is
    first / second), our servers' peak RSS (bytes), CPU seconds over the timed runs per client
    and process, the CPU others used meanwhile, and facts about the run (date, commit...)."""

    workload: Workload
    files: int
    bytes: int
    clients: list[str] = field(default_factory=list)
    times: dict[str, list[float]] = field(default_factory=dict)
    peaks: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    other: Other | None = None
    run: dict[str, str] = field(default_factory=dict)


def _tail(data: bytes, lines: int = 15) -> str:
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def run_client(client: Client, path: str, timeout: float) -> tuple[float, dict[str, Any] | None]:
    """Run the client once: seconds from its start to its exit, and its JSON summary if it
    prints one. Raise BenchError on failure."""
    argv = client.command(path)
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, env=client.env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException as e:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        if isinstance(e, subprocess.TimeoutExpired):
            raise BenchError(
                f"{client.name} did not finish in {timeout:.0f} s: {' '.join(argv)}") from e
        raise
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(f"{client.name} exited with status {proc.returncode}: {' '.join(argv)}\n"
                         f"stdout:\n{_tail(out)}\nstderr:\n{_tail(err)}")
    if client.prints_json:
        try:
            summary = json.loads(out)
        except ValueError as e:
            raise BenchError(f"{client.name} printed no valid JSON ({e}): {' '.join(argv)}\n"
                             f"stdout:\n{_tail(out)}") from None
        if not isinstance(summary, dict):
            raise BenchError(f"{client.name} printed JSON that is not an object: {_tail(out)}")
        return elapsed, summary
    return elapsed, None


def check_summary(summary: dict[str, Any], tree: Tree | None) -> None:
    """Raise BenchError unless mirror-init reports success and, given the tree it should have
    transferred, exactly that tree's file count and bytes (keys: mirror/initiator/report.py)."""
    if summary.get("ok") is not True:
        raise BenchError(f"mirror-init reports ok={summary.get('ok')!r}, "
                         f"error={summary.get('error')!r}")
    if tree is not None:
        totals = summary.get("totals") or {}
        if (totals.get("files"), totals.get("bytes")) != (len(tree.files), tree.total_bytes):
            raise BenchError(f"mirror-init reports {totals.get('files')} files / "
                             f"{totals.get('bytes')} bytes transferred, expected "
                             f"{len(tree.files)} / {tree.total_bytes}")


def cpu_snapshot(client: Client) -> dict[str, float]:
    """CPU seconds so far of our reaped children (so, after a run, of the client) and of each of
    the client's servers, children included once reaped."""
    t = os.times()
    return {"client": t.children_user + t.children_system,
            **{d.name: process_cpu(d.proc.pid) for d in client.servers if d.proc}}


def _empty(dest: Path) -> None:
    if dest.exists() or dest.is_symlink():
        shutil.rmtree(dest)


def run_workload(workload: Workload, dataset: Dataset, clients: list[Client], watched: list[Daemon],
                 runs: int, timeout: float, warmup: bool = True) -> Result:
    """Warm up (if the workload and `warmup` say so), then time `runs` verified runs of each
    client, alternating ABBA.

    Every run starts from an emptied destination, except no-op runs, which rerun into the copy
    filled by an untimed first run. After every run the destination must hold exactly the
    source's files and sizes; the first timed run of each client is also compared byte for byte.
    mirror-init must report success, and the whole tree transferred when it started empty.
    `watched` servers must stay alive; their peak RSS is sampled after every run.
    """
    path = dataset.spec.name
    result = Result(workload, len(dataset.tree.files), dataset.tree.total_bytes,
                    clients=[c.name for c in clients], times={c.name: [] for c in clients})

    def once(client: Client, label: str, timed: bool = False) -> float:
        with ExitStack() as around:
            if client.before:
                client.before()
            if client.after:
                around.callback(client.after)
            return measured(client, label, timed)

    def measured(client: Client, label: str, timed: bool) -> float:
        dest = client.dest(path)
        fresh = not workload.noop or label == FILL
        if fresh:
            _empty(dest)
        try:
            before = cpu_snapshot(client)
            seconds, summary = run_client(client, path, timeout)
            if timed:
                used = result.cpu.setdefault(client.name, {})
                for key, value in cpu_snapshot(client).items():
                    used[key] = used.get(key, 0.0) + value - before.get(key, 0.0)
            if summary is not None:
                check_summary(summary, dataset.tree if fresh else None)
            check_tree(dataset.tree, dest)
            if timed and len(result.times[client.name]) == 0 and dataset.tree.total_bytes:
                check_bytes(dataset.tree, dataset.path, dest)
        except (BenchError, MismatchError) as e:
            tails = "\n".join(d.log_tail() for d in client.servers)
            raise BenchError(f"{workload.name}, {client.name}, {label}: {e}\n{tails}") from None
        for daemon in watched:
            daemon.check_alive()
            daemon.sample()
        return seconds

    def pids() -> list[int]:
        daemons = [*watched, *(s for c in clients for s in c.servers)]
        return sorted({d.proc.pid for d in daemons if d.proc})

    meter = Meter(pids)
    if workload.noop:
        for client in clients:
            once(client, FILL)
    if workload.warmup and warmup:
        for client in clients:
            once(client, "warm-up")
    for i in range(runs):
        order = clients if i % 2 == 0 else clients[::-1]
        for client in order:
            result.times[client.name].append(once(client, f"run {i + 1}", timed=True))
        print(f"  {workload.name} run {i + 1}: " + ", ".join(
            f"{c.name} {result.times[c.name][-1]:.3f} s" for c in clients), flush=True)
    for client in clients:
        _empty(client.dest(path))
        if client.notes:
            result.run.update(client.notes())
    result.peaks = {d.name: d.peak_rss for d in watched}
    result.other = meter.stop()
    return result
