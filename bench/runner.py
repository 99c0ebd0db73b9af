"""Timed, verified client runs: ours (`mirror-init`) and rsync, alternately, per workload."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.cpu import Meter, Other, process_cpu
from bench.daemons import RSYNC_MODULE, Daemon
from bench.datasets import Dataset
from bench.trees import MismatchError, Tree, check_bytes, check_tree

FILL = "filling run"


class BenchError(RuntimeError):
    """A client failed, timed out, or left a wrong mirror: the benchmark is void."""


@dataclass(frozen=True)
class Workload:
    """What to mirror and how: `noop` reruns into the filled destination; `compare` adds rsync."""

    name: str
    dataset: str
    noop: bool = False
    compare: bool = True
    fixed_runs: int | None = None
    warmup: bool = True


WORKLOADS = {w.name: w for w in (
    Workload("big", "big"),
    Workload("small", "small"),
    Workload("mixed", "mixed"),
    Workload("no-op", "mixed", noop=True),
    Workload("memory", "memory", compare=False, fixed_runs=1, warmup=False),
)}


@dataclass
class Client:
    """A mirroring client: its command for a dataset path, where the copy lands, its servers."""

    name: str
    command: Callable[[str], list[str]]
    dest_root: Path
    servers: list[Daemon]
    prints_json: bool = False

    def dest(self, path: str) -> Path:
        return self.dest_root / path


def ours_client(mirror_init: str, mirror: Daemon, content: Daemon, mirror_dir: Path) -> Client:
    """`mirror-init --json` against our servers; the copy lands in MIRROR_DIR/HOST_PORT/PATH."""
    return Client(
        "ours",
        lambda path: [mirror_init, "-n", "127.0.0.1", "-p", str(mirror.port),
                      "-s", f"127.0.0.1:{content.port}:{path}:0", "--json"],
        mirror_dir / f"127.0.0.1_{content.port}", [content, mirror], prints_json=True)


def rsync_client(rsync: str, rsyncd: Daemon, dest_root: Path) -> Client:
    """`rsync -a rsync://127.0.0.1:PORT/MODULE/PATH/ DEST/PATH/`."""
    dest_root.mkdir(parents=True, exist_ok=True)
    return Client(
        "rsync",
        lambda path: [rsync, "-a", f"rsync://127.0.0.1:{rsyncd.port}/{RSYNC_MODULE}/{path}/",
                      f"{dest_root / path}/"],
        dest_root, [rsyncd])


@dataclass
class Result:
    """Timed runs (seconds, warm-ups excluded) per client, our servers' peak RSS (bytes), CPU
    seconds over the timed runs per client and process, and the CPU others used meanwhile."""

    workload: Workload
    files: int
    bytes: int
    times: dict[str, list[float]] = field(default_factory=dict)
    peaks: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)
    other: Other | None = None


def _tail(data: bytes, lines: int = 15) -> str:
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def run_client(client: Client, path: str, timeout: float) -> tuple[float, dict | None]:
    """Run the client once: seconds from its start to its exit, and its JSON summary if it
    prints one. Raise BenchError on failure."""
    argv = client.command(path)
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
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


def check_summary(summary: dict, tree: Tree | None) -> None:
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
                 runs: int, timeout: float) -> Result:
    """Warm up, then time `runs` verified runs of each client, alternating ABBA.

    Every run starts from an emptied destination, except no-op runs, which rerun into the copy
    filled by an untimed first run. After every run the destination must hold exactly the
    source's files and sizes; the first timed run of each client is also compared byte for byte.
    mirror-init must report success, and the whole tree transferred when it started empty.
    `watched` servers must stay alive; their peak RSS is sampled after every run.
    """
    path = dataset.spec.name
    result = Result(workload, len(dataset.tree.files), dataset.tree.total_bytes,
                    times={c.name: [] for c in clients})

    def once(client: Client, label: str, timed: bool = False) -> float:
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
                    used[key] = used.get(key, 0.0) + value - before[key]
            if summary is not None:
                check_summary(summary, dataset.tree if fresh else None)
            check_tree(dataset.tree, dest)
            if timed and len(result.times[client.name]) == 0:
                check_bytes(dataset.tree, dataset.path, dest)
        except (BenchError, MismatchError) as e:
            tails = "\n".join(d.log_tail() for d in client.servers)
            raise BenchError(f"{workload.name}, {client.name}, {label}: {e}\n{tails}") from None
        for daemon in watched:
            daemon.check_alive()
            daemon.sample()
        return seconds

    servers = {d.proc.pid for d in [*watched, *(s for c in clients for s in c.servers)] if d.proc}
    meter = Meter(sorted(servers))
    if workload.noop:
        for client in clients:
            once(client, FILL)
    if workload.warmup:
        for client in clients:
            once(client, "warm-up")
    for i in range(workload.fixed_runs or runs):
        order = clients if i % 2 == 0 else clients[::-1]
        for client in order:
            result.times[client.name].append(once(client, f"run {i + 1}", timed=True))
        print(f"  {workload.name} run {i + 1}: " + ", ".join(
            f"{c.name} {result.times[c.name][-1]:.3f} s" for c in clients), flush=True)
    for client in clients:
        _empty(client.dest(path))
    result.peaks = {d.name: d.peak_rss for d in watched}
    result.other = meter.stop()
    return result
