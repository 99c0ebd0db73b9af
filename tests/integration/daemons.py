"""The installed programs as subprocesses: ``twistd content-server``, ``twistd mirror-server``
and ``mirror-init``, as a user runs them, over the `current` `Transport` (plain TCP, or TLS
1.3 with pinned keys when a test runs with ``transport`` "tls": see conftest.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.integration.transport import PLAIN, Transport
from tests.integration.waiting import poll

BIN = Path(sys.executable).parent
TWISTD = str(BIN / "twistd")
MIRROR_INIT = str(BIN / "mirror-init")

#: How the programs started now talk; the ``transport`` fixture sets it for a test.
current: Transport = PLAIN

#: The daemon's own port; not its --web site's ("WebSite starting on N").
_PORT = re.compile(rb"(?<!WebSite) starting on (\d+)")


class Daemon:
    """A ``twistd -n`` plugin process listening on an ephemeral loopback port."""

    def __init__(self, plugin: str, args: list[str], workdir: Path,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / f"{plugin}-{time.monotonic_ns()}.log"
        self.plugin = plugin
        self.args = args
        self.preexec_fn = preexec_fn  # e.g. lower a resource limit in the child
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, port: int = 0, timeout: float = 15.0) -> Daemon:
        cmd = [TWISTD, "-n", "--pidfile=", "-l", str(self.log), self.plugin,
               "--listen", f"tcp:{port}:interface=127.0.0.1", *self.args,
               *current.daemon_args(self.plugin)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True,
                                     preexec_fn=self.preexec_fn)
        try:
            poll(self._started, timeout, f"{self.plugin} to listen")
        except AssertionError:
            self.stop()
            raise RuntimeError(f"{self.plugin} did not start; log:\n{self.log_text()}") from None
        current.pin(self.port, self.plugin)
        return self

    def _started(self) -> bool:
        """True once the log names the port; raises if the daemon has exited."""
        assert self.proc is not None
        if self.log.exists():
            found = _PORT.findall(self.log.read_bytes())
            if found:
                self.port = int(found[-1])
                return True
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.plugin} exited: {self.proc.stderr.read().decode()}")
        return False

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


def content_server(root: Path, workdir: Path, *extra: str,
                   preexec_fn: Callable[[], None] | None = None) -> Daemon:
    return Daemon("content-server", ["--root", str(root), *extra], workdir,
                  preexec_fn=preexec_fn).start()


def mirror_server(mirror_dir: Path, workdir: Path, *extra: str) -> Daemon:
    mirror_dir.mkdir(parents=True, exist_ok=True)
    return Daemon("mirror-server", ["--mirror-dir", str(mirror_dir), *extra], workdir).start()


def mirror_init_command(*args: str) -> list[str]:
    """mirror-init's command line, with the `current` transport's identity and pins."""
    return [MIRROR_INIT, *args, *current.init_args()]


def interruptible() -> None:
    """``preexec_fn`` of a mirror-init a test will Ctrl-C: SIGINT back to its default.

    A process started in the background of a non-interactive shell (``cmd &``, as some CI
    runners and ``nohup`` do) inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler: the test's Ctrl-C would be lost, not mirror-init's fault.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def mirror_init(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(mirror_init_command(*args), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
