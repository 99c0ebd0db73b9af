"""How much CPU went to something other than the benchmark: the noise in its timings."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """Busy and stolen CPU seconds of the whole machine since boot (all cores, from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq) / TICK, steal / TICK


def process_cpu(pid: int) -> float:
    """CPU seconds of a process and its reaped children, 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in stat[11:15]) / TICK


def own_cpu() -> float:
    """CPU seconds of this process and its reaped children (the clients it ran)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class Other:
    """CPU used outside the benchmark during `wall` seconds, and time stolen by the hypervisor.

    `cpu` is a difference of two accountings (the machine's ticks, the processes' times), so
    small values of either sign are noise.
    """

    cpu: float
    steal: float
    wall: float

    def __str__(self) -> str:
        return (f"other processes used {self.cpu:.1f} CPU-s in {self.wall:.1f} s "
                f"({self.cpu / self.wall:.2f} cores on average), steal {self.steal:.1f} s")


class Meter:
    """Measures `Other` between `__init__` and `stop`, given the pids of the benchmark's servers
    (or a function returning those running now: a server restarted meanwhile is counted in our
    reaped children's time once stopped)."""

    def __init__(self, pids: list[int] | Callable[[], list[int]]) -> None:
        self.pids = pids if callable(pids) else (lambda: list(pids))
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float, float]:
        busy, steal = machine_cpu()
        ours = own_cpu() + sum(process_cpu(pid) for pid in self.pids())
        return time.monotonic(), busy, steal, ours

    def stop(self) -> Other:
        t0, busy0, steal0, ours0 = self.start
        t1, busy1, steal1, ours1 = self._sample()
        return Other((busy1 - busy0) - (ours1 - ours0), steal1 - steal0, t1 - t0)


def idle_check(seconds: float = 1.0) -> Other:
    """What other processes use while the benchmark does nothing."""
    meter = Meter([])
    time.sleep(seconds)
    return meter.stop()
