"""The demos' daemons (`make demo`, `make demo-network`): twistd subprocesses started,
waited for, and stopped, in one place."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

#: The installed programs beside this interpreter (twistd, mirror-init, mirror-where, ...).
BIN = Path(sys.executable).parent


def twistd(plugin: str, args: list[str], log: Path, started: re.Pattern[bytes]
           ) -> tuple[subprocess.Popen[bytes], re.Match[bytes]]:
    """``twistd -n PLUGIN ARGS`` logging to ``log``, once ``started`` matches the log (the
    last match: the daemon's own listener, not its web site's); exits the demo with the
    log's name if the daemon dies or takes more than 15 s."""
    proc = subprocess.Popen([str(BIN / "twistd"), "-n", "--pidfile=", "-l", str(log), plugin,
                             *args], stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = list(started.finditer(log.read_bytes())) if log.exists() else []
        if found:
            return proc, found[-1]
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"demo: {plugin} did not start; see {log}")


def stop(procs: Sequence[subprocess.Popen[bytes]], work: Path) -> None:
    """Stop the demo's daemons (each in its own session) and remove its directory."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
    shutil.rmtree(work, ignore_errors=True)
