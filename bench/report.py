"""The results tables, the machine they come from, and `bench/RESULTS.md`."""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
from importlib import metadata

from bench.daemons import REPO, tool_version
from bench.runner import Result

TARGETS = {"big": 0.8, "small": 1.0, "mixed": 0.9, "no-op": 1.0}
RSS_LIMIT = 120_000_000
MB = 1e6
DAEMONS = ("content-server", "mirror-server")


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        def run(*a: str) -> str:
            return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True,
                                  text=True, timeout=30).stdout.strip()

        commit, dirty = run("rev-parse", "--short", "HEAD"), run("status", "--porcelain")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{commit or 'unknown'}{' + uncommitted changes' if dirty else ''}"


def environment(rsync: str | None) -> dict[str, str]:
    """CPU, cores, kernel, versions, date and commit of this run."""
    try:
        twisted = metadata.version("twisted")
    except metadata.PackageNotFoundError:
        twisted = "not installed"
    return {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "Twisted": twisted,
        "rsync": tool_version([rsync, "--version"]) if rsync else "not installed",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
    }


def _median(times: list[float]) -> float | None:
    return statistics.median(times) if times else None


def _ratio(result: Result) -> float | None:
    ours, rsync = _median(result.times.get("ours", [])), _median(result.times.get("rsync", []))
    return ours / rsync if ours and rsync else None


def _rate(x: float) -> str:
    """A rate with about three significant digits."""
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _met(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def time_table(results: list[Result]) -> str:
    """Median seconds, MB/s and files/s per tool, and ours/rsync against its target."""
    head = ("| workload | files | MB | ours s | ours MB/s | ours files/s | rsync s | rsync MB/s "
            "| rsync files/s | ours/rsync | target | |\n|" + "---|" * 12)
    rows = [head]
    for r in results:
        cells = [r.workload.name, str(r.files), f"{r.bytes / MB:.1f}"]
        for tool in ("ours", "rsync"):
            m = _median(r.times.get(tool, []))
            cells += ([f"{m:.3f}", _rate(r.bytes / MB / m), _rate(r.files / m)] if m
                      else ["-", "-", "-"])
        ratio, target = _ratio(r), TARGETS.get(r.workload.name)
        cells.append(f"{ratio:.2f}" if ratio else "-")
        cells.append(f"<= {target}" if target else "-")
        cells.append(_met(ratio <= target) if ratio and target else "-")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def rss_table(results: list[Result]) -> str:
    """Peak RSS of each of our daemons per workload, against the limit."""
    rows = ["| workload | " + " | ".join(f"{d} peak MB" for d in DAEMONS) + " | target | |",
            "|" + "---|" * (len(DAEMONS) + 3)]
    for r in results:
        peaks = [r.peaks.get(d) for d in DAEMONS]
        cells = [f"{p / MB:.1f}" if p else "-" for p in peaks]
        ok = all(p and p <= RSS_LIMIT for p in peaks)
        rows.append(f"| {r.workload.name} | " + " | ".join(cells)
                    + f" | <= {RSS_LIMIT / MB:.0f} | {_met(ok)} |")
    return "\n".join(rows)


def cpu_table(results: list[Result]) -> str:
    """Mean CPU seconds per timed run of each client and of the servers it used."""
    rows = ["| workload | tool | median wall s | client CPU-s | servers' CPU-s |",
            "|---|---|---|---|---|"]
    for r in results:
        for tool, used in r.cpu.items():
            n = len(r.times[tool])
            servers = ", ".join(f"{name} {cpu / n:.2f}" for name, cpu in used.items()
                                if name != "client")
            rows.append(f"| {r.workload.name} | {tool} | {_median(r.times[tool]):.3f} "
                        f"| {used['client'] / n:.2f} | {servers} |")
    return "\n".join(rows)


def summary(results: list[Result]) -> list[str]:
    """One line per target: met or not, with the measured value."""
    lines = []
    for r in results:
        target, ratio = TARGETS.get(r.workload.name), _ratio(r)
        if target is None:
            continue
        state = _met(ratio <= target) if ratio else "not measured (no rsync)"
        lines.append(f"- {r.workload.name}: ours/rsync <= {target}: {state}"
                     + (f" ({ratio:.2f})" if ratio else ""))
    peaks = [p for r in results for p in (r.peaks.get(d) for d in DAEMONS)]
    if peaks:
        worst = max(p or 0 for p in peaks)
        ok = all(p and p <= RSS_LIMIT for p in peaks)
        lines.append(f"- peak RSS of each daemon <= {RSS_LIMIT / MB:.0f} MB in every workload run "
                     f"here: {_met(ok)} (largest {worst / MB:.1f} MB)")
    return lines


def runs_detail(results: list[Result]) -> str:
    """Every timed run, in seconds, in the order they ran, and the CPU others used meanwhile."""
    lines = []
    for r in results:
        lines += [f"- {r.workload.name}, {tool}: " + ", ".join(f"{t:.3f}" for t in times)
                  for tool, times in r.times.items()]
        if r.other:
            lines.append(f"  - during {r.workload.name}: {r.other}")
    return "\n".join(lines)


def render(results: list[Result], env: dict[str, str], settings: dict[str, str],
           command: str) -> str:
    """The whole of RESULTS.md."""
    machine = "\n".join(f"- {k}: {v}" for k, v in {**env, **settings}.items())
    return f"""# Benchmark results

Written by `{command}`; rerun it rather than editing this file.

## Machine, versions and settings
{machine}

## Targets (issue 3; medians of the same run, digest verification on, default settings)
{chr(10).join(summary(results))}

## Times: median of the timed runs (lower seconds is better)
{time_table(results)}

MB = 10^6 bytes. For no-op nothing is transferred: MB/s and files/s there are the size of the
tree checked per second.

## Peak RSS of our daemons (VmHWM, largest process of each daemon)
{rss_table(results)}

The daemons are restarted for every workload, so each peak belongs to that workload alone
(no-op's includes its untimed filling run).

## CPU seconds per timed run (mean)
{cpu_table(results)}

With 2 cores, CPU seconds summed over the processes can reach twice the wall time. The client's
figure includes its start-up. rsync's daemon forks one process per connection, counted when
the daemon reaps it: its figure can lag by a run.

## Method
- Datasets generated from a fixed seed on the data location above; our content server and
  rsync's daemon export the same directory. Both destinations are on the same file system.
- Per workload: a fresh content server and mirror server; rsync's daemon runs throughout.
- One warm-up run of each tool, then the timed runs, alternating in ABBA order (ours, rsync,
  rsync, ours, ...). Each run goes into an emptied destination, except no-op, which reruns into
  the copy made by an untimed filling run.
- Time = from starting the client (`mirror-init ... --json` or `rsync -a rsync://...`) to its
  exit; the daemons are already running.
- After every run the destination must hold exactly the source's files, sizes and
  directories; the first timed run of each tool is also compared byte for byte. mirror-init's
  JSON must say ok, and, into an empty destination, count every file and byte. A failed client,
  a timeout, a wrong copy or a dead daemon aborts the benchmark: nothing wrong is ever timed.
- memory: one run of ours only, mirroring the 4 GiB file; its row in the RSS table is the check
  that memory does not grow with file size (compare with big).

## All timed runs (seconds)
"Other processes" is the machine's busy CPU time minus that of the harness, its clients and
the daemons: anything well above 0 cores means the timings were disturbed (small values of
either sign are accounting noise).

{runs_detail(results)}
"""
