"""`python -m bench.probes`: baseline costs of this machine, for `bench/NOTES.md`.

Measures SHA-256 and BLAKE3 (the daemons' digest, `mirror.hashing`) over 1 GiB, raw loopback
TCP throughput (1 GiB, sender and receiver in two processes), writing 1 GiB to the data
location, and the start-up time of a Python client.
Prints one line per measurement, and the CPU other processes used meanwhile; run it on an
idle machine.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from bench.cpu import Meter
from bench.daemons import find_tool
from bench.datasets import GiB, MiB, workspace
from mirror.hashing import new_hasher

REPEAT = 3


def best(fn: Callable[[], None], repeat: int = REPEAT) -> float:
    """Fastest of `repeat` timed calls, seconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def sha256_gib() -> None:
    block, h = os.urandom(MiB), hashlib.sha256()
    for _ in range(GiB // MiB):
        h.update(block)


def blake3_gib() -> None:
    block, h = os.urandom(MiB), new_hasher()
    for _ in range(GiB // MiB):
        h.update(block)


def _send(port: int, total: int) -> None:
    block = os.urandom(MiB)
    with socket.create_connection(("127.0.0.1", port)) as s:
        for _ in range(total // MiB):
            s.sendall(block)


def loopback_gib() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        sender = multiprocessing.Process(target=_send, args=(server.getsockname()[1], GiB))
        sender.start()
        conn, _ = server.accept()
        buf, got = bytearray(MiB), 0
        with conn:
            while n := conn.recv_into(buf):
                got += n
        sender.join()
    if got != GiB:
        raise RuntimeError(f"loopback probe received {got} bytes, expected {GiB}")


def tmpfs_write_gib() -> None:
    base, _ = workspace(quick=True)
    base.mkdir(parents=True, exist_ok=True)
    path, block = base / "probe.bin", os.urandom(MiB)
    try:
        with open(path, "wb") as f:
            for _ in range(GiB // MiB):
                f.write(block)
    finally:
        path.unlink(missing_ok=True)


def start_up(argv: list[str], runs: int = 7) -> float:
    """Median seconds to run `argv` to completion."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                       timeout=60)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    _, where = workspace(quick=True)
    meter = Meter([])
    print(f"- SHA-256 (hashlib, 1 MiB updates), one core: {GiB / best(sha256_gib) / 1e6:.0f} MB/s")
    print(f"- BLAKE3 (mirror.hashing, 1 MiB updates), one core: "
          f"{GiB / best(blake3_gib) / 1e6:.0f} MB/s")
    print(f"- raw loopback TCP, 1 GiB, sendall/recv_into 1 MiB, two processes: "
          f"{GiB / best(loopback_gib) / 1e6:.0f} MB/s")
    print(f"- writing 1 GiB in 1 MiB writes to {where}: "
          f"{GiB / best(tmpfs_write_gib) / 1e6:.0f} MB/s")
    print(f"- `python -c pass`: {start_up([sys.executable, '-c', 'pass']):.3f} s (median of 7)")
    print(f"- `python -c 'import twisted.internet.reactor'`: "
          f"{start_up([sys.executable, '-c', 'import twisted.internet.reactor']):.3f} s")
    for tool in ("mirror-init", "rsync"):
        path = find_tool(tool)
        if path:
            print(f"- `{tool} --help`: {start_up([path, '--help']):.3f} s")
    print(f"- meanwhile {meter.stop()}")


if __name__ == "__main__":
    main()
