"""Issue 9's targets, the results tables, the machine they come from, and `bench/RESULTS.md`.

Each run merges its workloads' results into `bench/results.json` (a workload run again
replaces its old result), and RESULTS.md is rendered from all of them: `make bench` and
`make bench-scale` each fill in their own targets.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.cpu import Other
from bench.daemons import REPO, tool_version
from bench.runner import BIG_JOBS, CLIENTS, SOURCES, WORKLOADS, Result

MB = 1e6
DAEMONS = ("content-server", "mirror-server")
STORE_FORMAT = 1
#: Keys of `Result.run` every run has; any other is a note of its workload, shown as is.
STANDARD = {"date", "commit", "mode", "dataset", "other load before", "command",
            "data location", "seed", "mirror-server --workers"}


@dataclass(frozen=True)
class Target:
    """One line of issue 9's table: a time ratio (first kind of run / second) or a peak RSS
    (bytes, each daemon) of a workload, and its limit."""

    what: str
    workload: str
    limit: float
    rss: bool = False


TARGETS = [
    Target("10,000 small files (0.5-8 KiB), ours/rsync", "small", 1.0),
    Target("no-op re-run of a mixed tree, ours/rsync", "no-op", 0.7),
    Target("1 GiB file, ours/rsync", "big", 0.9),
    Target("mixed tree (log-normal sizes, 800 MB), ours/rsync", "mixed", 0.9),
    Target("100,000 tiny files, full, ours/rsync", "tiny", 1.5),
    Target("100,000 tiny files, no-op, ours/rsync", "tiny-no-op", 1.0),
    Target(f"{SOURCES} sources x 200 files in one job / the same 10,000 files from one source",
           "sources", 1.3),
    Target(f"a small job (20 files) behind {BIG_JOBS} big ones / alone", "fair", 2.0),
    Target("peak RSS of each daemon, 1,000,000-file tree (MB)", "tree-1m", 150 * MB, rss=True),
    Target("peak RSS of each daemon, one 1,000,000-entry directory (MB)", "dir-1m", 250 * MB,
           rss=True),
    Target("peak RSS of each daemon, 4 GiB file (MB)", "memory", 120 * MB, rss=True),
    Target("1 GiB file with SHA-NI masked, ours/rsync", "big-no-sha-ni", 0.9),
    Target("mixed tree with SHA-NI masked, ours/rsync", "mixed-no-sha-ni", 0.9),
]


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _sha_ni() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return "yes" if " sha_ni" in f.read() else "no"
    except OSError:
        return "unknown"


def git_commit() -> str:
    """The checkout's commit, marked when it has uncommitted changes."""
    try:
        def run(*a: str) -> str:
            return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True,
                                  text=True, timeout=30).stdout.strip()

        commit, dirty = run("rev-parse", "--short", "HEAD"), run("status", "--porcelain")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{commit or 'unknown'}{' + uncommitted changes' if dirty else ''}"


def environment(rsync: str | None) -> dict[str, str]:
    """CPU, cores, kernel, versions of this run."""
    try:
        twisted = metadata.version("twisted")
    except metadata.PackageNotFoundError:
        twisted = "not installed"
    return {
        "CPU": _cpu_model(),
        "SHA-NI": _sha_ni(),
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "Twisted": twisted,
        "rsync": tool_version([rsync, "--version"]) if rsync else "not run",
    }


# -- the store: results.json ------------------------------------------------------------------

def to_json(r: Result) -> dict[str, Any]:
    return {"files": r.files, "bytes": r.bytes, "clients": r.clients, "times": r.times,
            "peaks": r.peaks, "cpu": r.cpu,
            "other": ({"cpu": r.other.cpu, "steal": r.other.steal, "wall": r.other.wall}
                      if r.other else None),
            "run": r.run}


def from_json(name: str, d: dict[str, Any]) -> Result:
    other = d.get("other")
    return Result(WORKLOADS[name], d["files"], d["bytes"], d["clients"], d["times"], d["peaks"],
                  d["cpu"], Other(**other) if other else None, d.get("run", {}))


def merge(store: Path | None, results: list[Result], env: dict[str, str],
          settings: dict[str, str], command: str) -> dict[str, Any]:
    """Add this run's results to those in `store` (if any; it is rewritten) and return all."""
    merged: dict[str, Any] = {"format": STORE_FORMAT, "workloads": {}}
    if store is not None and store.exists():
        old = json.loads(store.read_text())
        if old.get("format") == STORE_FORMAT:
            merged = old
    for r in results:
        r.run.update(settings)
        r.run["command"] = command
        merged["workloads"][r.workload.name] = to_json(r)
    merged["machine"] = env
    if store is not None:
        store.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
    return merged


def loaded(merged: dict[str, Any]) -> list[Result]:
    """The merged results, in the order of WORKLOADS (unknown names dropped)."""
    stored = merged.get("workloads", {})
    return [from_json(n, stored[n]) for n in WORKLOADS if n in stored]


# -- figures -----------------------------------------------------------------------------------

def _median(times: list[float]) -> float | None:
    return statistics.median(times) if times else None


def ratio(result: Result) -> float | None:
    """Median of the first kind of run over the median of the second."""
    if len(result.clients) < 2:
        return None
    a, b = (_median(result.times.get(c, [])) for c in result.clients[:2])
    return a / b if a and b else None


def worst_peak(result: Result) -> int | None:
    peaks = [result.peaks.get(d) for d in DAEMONS]
    return max(p for p in peaks if p) if any(peaks) else None


def _rate(x: float) -> str:
    """A rate with about three significant digits."""
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _met(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def check(target: Target, result: Result | None) -> tuple[str, str]:
    """The figure and whether the target holds, as table cells."""
    if result is None:
        make = "make bench-scale" if WORKLOADS[target.workload].scale else "make bench"
        return "-", f"not measured (run `{make}`)"
    if target.rss:
        peak = worst_peak(result)
        if peak is None:
            return "-", "not measured"
        cells = ", ".join(f"{d} {result.peaks[d] / MB:.1f}" for d in DAEMONS if result.peaks.get(d))
        return cells, _met(peak <= target.limit)
    value = ratio(result)
    if value is None:
        return "-", "not measured (no rsync)"
    return f"{value:.2f}", _met(value <= target.limit)


def targets_table(results: list[Result]) -> str:
    by_name = {r.workload.name: r for r in results}
    rows = ["| target | workload | limit | figure | holds | measured |", "|" + "---|" * 6]
    for t in TARGETS:
        r = by_name.get(t.workload)
        figure, holds = check(t, r)
        limit = f"<= {t.limit / MB:.0f} MB" if t.rss else f"<= {t.limit}"
        when = f"{r.run.get('date', '?')}, {r.run.get('commit', '?')}" if r else "-"
        if r and r.run.get("mode") == "quick":
            when += " (**quick**: tiny datasets, not a measurement)"
        rows.append(f"| {t.what} | {t.workload} | {limit} | {figure} | {holds} | {when} |")
    return "\n".join(rows)


def summary_text(merged: dict[str, Any]) -> str:
    """One line per target: holds or not, with the figure."""
    by_name = {r.workload.name: r for r in loaded(merged)}
    lines = []
    for t in TARGETS:
        figure, holds = check(t, by_name.get(t.workload))
        lines.append(f"- {t.what}: {figure}: {holds.replace('**', '')}")
    return "\n".join(lines)


def time_table(results: list[Result]) -> str:
    """Median seconds and files/s of each kind of run, and their ratio."""
    rows = ["| workload | files | MB | first | median s | files/s | second | median s | files/s "
            "| first/second | timed runs each |", "|" + "---|" * 11]
    for r in results:
        cells = [r.workload.name, str(r.files), f"{r.bytes / MB:.1f}"]
        for c in [*r.clients, None][:2]:
            m = _median(r.times.get(c, [])) if c else None
            cells += [c or "-", f"{m:.3f}" if m else "-", _rate(r.files / m) if m else "-"]
        value = ratio(r)
        cells += [f"{value:.2f}" if value else "-",
                  str(max((len(t) for t in r.times.values()), default=0))]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def rss_table(results: list[Result]) -> str:
    """Peak RSS of each of our daemons per workload."""
    rows = ["| workload | " + " | ".join(f"{d} peak MB" for d in DAEMONS) + " |",
            "|" + "---|" * (len(DAEMONS) + 1)]
    for r in results:
        cells = [f"{r.peaks[d] / MB:.1f}" if r.peaks.get(d) else "-" for d in DAEMONS]
        rows.append(f"| {r.workload.name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def cpu_table(results: list[Result]) -> str:
    """Mean CPU seconds per timed run of each client and of the servers it used."""
    rows = ["| workload | run | median s | client CPU-s | servers' CPU-s |",
            "|---|---|---|---|---|"]
    for r in results:
        for tool, used in r.cpu.items():
            n = len(r.times[tool])
            servers = ", ".join(f"{name} {cpu / n:.2f}" for name, cpu in used.items()
                                if name != "client")
            median = _median(r.times[tool])
            rows.append(f"| {r.workload.name} | {tool} | {median:.3f} "
                        f"| {used['client'] / n:.2f} | {servers} |")
    return "\n".join(rows)


def runs_detail(results: list[Result]) -> str:
    """Every timed run, in seconds, in the order they ran, and the run's circumstances."""
    lines = []
    for r in results:
        lines.append(f"- **{r.workload.name}**: {r.run.get('dataset', '')}; "
                     f"{r.run.get('date', '?')}, commit {r.run.get('commit', '?')}, "
                     f"`{r.run.get('command', '?')}`")
        lines += [f"  - {tool}: " + ", ".join(f"{t:.3f}" for t in times)
                  for tool, times in r.times.items()]
        if r.other:
            lines.append(f"  - meanwhile {r.other}")
        if r.run.get("other load before"):
            lines.append(f"  - before the start: {r.run['other load before']}")
        lines += [f"  - {key}: {value}" for key, value in r.run.items() if key not in STANDARD]
    return "\n".join(lines)


def render(merged: dict[str, Any]) -> str:
    """The whole of RESULTS.md."""
    results = loaded(merged)
    machine = "\n".join(f"- {k}: {v}" for k, v in merged.get("machine", {}).items())
    no_sha = " ".join(f"{k}={v}" for k, v in WORKLOADS["big-no-sha-ni"].env)
    fair, sources = CLIENTS["fair"], CLIENTS["sources"]
    return f"""# Benchmark results

Written by `make bench` and `make bench-scale` (each merges its workloads into
`bench/results.json`, from which this file is rendered); rerun them rather than editing it.

## Targets (issue 9)
{targets_table(results)}

A ratio is the median of the first kind of run over the median of the second, from the same
benchmark run (the kinds of run alternate, ABBA). Peak RSS: VmHWM of each daemon's largest
process; MB = 10^6 bytes. Medians of a loaded machine are not measurements: check "meanwhile"
under *All timed runs*.

## Machine (of the latest run)
{machine or "- (no run yet)"}

## Times: medians of the timed runs (lower is better)
{time_table(results)}

For a no-op nothing is transferred: files/s there is the tree checked per second.

## Peak RSS of our daemons (MB, VmHWM, largest process of each daemon)
{rss_table(results)}

The daemons are restarted for every workload, so each peak belongs to that workload alone
(a no-op's includes its untimed filling run).

## CPU seconds per timed run (mean)
{cpu_table(results)}

With 2 cores, CPU seconds summed over the processes can reach twice the wall time. The client's
figure includes its start-up. rsync's daemon forks one process per connection, counted when
the daemon reaps it: its figure can lag by a run. In fair, the servers' figures include the big
jobs' work.

## Method
- Datasets are generated from a fixed seed under the data location (tmpfs `/dev/shm`); our
  content server and rsync's daemon export the same directory; the copies go to the same file
  system. A dataset is deleted once no later workload needs it (tmpfs is memory). The
  million-file datasets (tree-1m, dir-1m: empty files) are generated for their
  workload and deleted with their copy right after it, and the benchmark checks first that the
  file system has the inodes for both.
- Per workload: a fresh content server and mirror server (`--workers 8`, other settings
  default) and, for ours/rsync workloads, a fresh rsync daemon.
- One warm-up run of each kind, then the timed runs, alternating ABBA (A, B, B, A, ...). Each
  run goes into an emptied destination, except the no-ops, which rerun into the copy made by an
  untimed filling run. Time = from starting the client (`mirror-init ... --json` or
  `rsync -a rsync://...`) to its exit.
- Runs: 5 timed runs of each kind (`--runs`), but 3 for tiny, tiny-no-op and the SHA-NI-masked
  workloads, and 1 (no warm-up, ours only) for memory, tree-1m and dir-1m, to keep
  `make bench` within about 20 minutes.
- sources: one job of {SOURCES} SPECs, each naming one of the {SOURCES} directories (200 files
  each) of the small dataset on **one content server** ("{sources[0]}"), against one SPEC naming
  the whole dataset ("{sources[1]}"): the same 10,000 files into the same places. The mirror
  server treats every SPEC as a source of its own (its own listing and connections); {SOURCES}
  content-server processes on 2 cores would measure their start-up and contention instead.
- fair: "{fair[0]}": a fresh mirror server, then {BIG_JOBS} big jobs (one `mirror-init` each,
  each a directory of the fair-big dataset: 100 files of 1 MiB, 2 GB in all), started
  together; once each has printed its first progress line (the mirror server accepted it and is
  listing or fetching), the small job (the fair dataset: 20 files of 0.5-8 KiB) is submitted
  and timed; then the big jobs are abandoned (the mirror server is stopped). How many big jobs
  were running when the small one was submitted, and when it ended, is noted under *All timed
  runs*: fewer than {BIG_JOBS} at submission means some big job was over before the small one
  came (the run was not behind all {BIG_JOBS}); fewer at the end, that big jobs ended before
  the small one (as all do under a first-come first-served queue). "{fair[1]}": the
  same small job on a fresh mirror server with nothing else to do. Both timed as the user
  waits: from starting mirror-init to its exit (mirror-init's start-up included, as in the
  issue's "7-24x its time alone"; the job's own `elapsed` inside the mirror server leaves out
  the connection and the report, which makes "alone" a few tens of milliseconds).
- SHA-NI masked (big-no-sha-ni, mixed-no-sha-ni): `{no_sha}` in the environment of every
  process of the workload, ours (both daemons, mirror-init) and rsync's (daemon and client):
  OpenSSL then hashes as on a CPU without SHA instructions.
- Peak RSS is sampled after every run (VmHWM is the high-water mark since the process started).
- After every run the destination must hold exactly the source's files, sizes and
  directories; the first timed run of each kind is also compared byte for byte (but the empty
  files of the million-file datasets). mirror-init's JSON must say ok, and, into an empty
  destination, count every file and byte. A failed client, a timeout, a wrong copy or a dead
  daemon aborts the benchmark: nothing wrong is ever timed.

## All timed runs (seconds)
"Meanwhile" is the machine's busy CPU time minus that of the harness, its clients and the
daemons: anything well above 0 cores means the timings were disturbed (small values of either
sign are accounting noise).

{runs_detail(results) or "(none yet)"}
"""
