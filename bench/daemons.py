"""Start, watch and stop the benchmark's servers: our two twistd daemons and rsync's daemon.

Every server runs in its own session (process group), so stopping it stops all its processes,
and gets SIGTERM from the kernel if the harness dies, even by SIGKILL.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from shutil import which

REPO = Path(__file__).resolve().parent.parent
RSYNC_MODULE = "bench"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Run in a child before exec: ask Linux to SIGTERM it when the harness exits."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class DaemonError(RuntimeError):
    """A server failed to start or died; the message ends with its log tail."""


def find_tool(name: str) -> str | None:
    """Path of a program, looked up next to this Python first (the venv), then on PATH."""
    return which(name, path=os.pathsep.join([str(Path(sys.executable).parent),
                                             os.environ.get("PATH", "")]))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ensure_rsync() -> str | None:
    """Path of rsync, installed with apt-get when missing and possible; None (said why) if not."""
    path = find_tool("rsync")
    if path:
        return path
    if os.geteuid() == 0 and which("apt-get"):
        print("rsync not found: installing it with apt-get", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "-q", "rsync"]
        for argv in (install, ["apt-get", "update", "-q"], install):
            try:
                subprocess.run(argv, env=env, timeout=600, check=False,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                print(f"  {' '.join(argv)} timed out")
            path = find_tool("rsync")
            if path:
                return path
    print("rsync not found and not installable from here: install it (Debian/Ubuntu: "
          "`sudo apt-get install rsync`) and rerun. The rsync column is skipped.")
    return None


def tool_version(argv: list[str]) -> str:
    """First line of a program's version output, or why there is none."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    return out.splitlines()[0].strip() if out.strip() else "unknown"


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def vm_hwm(pid: int) -> int | None:
    """Peak resident set size of a process in bytes (VmHWM), None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Daemon:
    """One server process (and any children), its port and its log files."""

    def __init__(self, name: str, argv: list[str], port: int, logs: list[Path],
                 cwd: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.port, self.logs = name, argv, port, logs
        self.cwd, self.env = cwd, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.peaks: dict[int, int] = {}

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Run the server and wait until it accepts connections on its port."""
        with open(self.logs[0], "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, cwd=self.cwd, env=self.env,
                                         start_new_session=True, preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise DaemonError(f"{self.name} is not listening on 127.0.0.1:{self.port} after "
                                  f"{timeout:.0f} s\n{self.log_tail()}")
            time.sleep(0.05)

    def check_alive(self) -> None:
        """Raise DaemonError if the server has exited."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise DaemonError(f"{self.name} exited with status {self.proc.returncode}\n"
                              f"{self.log_tail()}")

    def sample(self) -> None:
        """Record the peak RSS of the server's process and its children as they are now."""
        assert self.proc is not None
        for pid in [self.proc.pid, *_children(self.proc.pid)]:
            peak = vm_hwm(pid)
            if peak is not None:
                self.peaks[pid] = max(peak, self.peaks.get(pid, 0))

    @property
    def peak_rss(self) -> int:
        """Largest peak RSS (bytes) seen in any one of the server's processes."""
        return max(self.peaks.values(), default=0)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the server's process group, SIGKILL whatever is left after `timeout`."""
        if self.proc is None or self.proc.poll() is not None:
            return  # never started, or stopped and reaped (its pid may be another's now)
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of each of the server's log files."""
        parts = [f"--- {self.name}: {' '.join(self.argv)}"]
        for log in self.logs:
            try:
                text = log.read_text(errors="replace").splitlines()[-lines:]
            except OSError as e:
                text = [f"(cannot read: {e})"]
            parts.append(f"--- {log}:")
            parts.extend(text)
        return "\n".join(parts)


def twistd_daemon(twistd: str, plugin: str, args: list[str], logdir: Path,
                  extra_env: dict[str, str] | None = None) -> Daemon:
    """`twistd -n --pidfile= -l LOG PLUGIN --listen tcp:PORT:interface=127.0.0.1 ARGS...`,
    with `extra_env` added to its environment."""
    port = free_port()
    log, out = logdir / f"{plugin}.log", logdir / f"{plugin}.out"
    argv = [twistd, "-n", "--pidfile=", "-l", str(log), plugin,
            "--listen", f"tcp:{port}:interface=127.0.0.1", *args]
    # The repo root on PYTHONPATH makes twistd find twisted/plugins whatever the install mode.
    env = dict(os.environ, **(extra_env or {}))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return Daemon(plugin, argv, port, [out, log], cwd=logdir, env=env)


def rsync_daemon(rsync: str, data_root: Path, logdir: Path,
                 extra_env: dict[str, str] | None = None) -> Daemon:
    """rsync's daemon exporting `data_root` read-only as module RSYNC_MODULE, with `extra_env`
    added to its environment."""
    port = free_port()
    conf, log, out = logdir / "rsyncd.conf", logdir / "rsyncd.log", logdir / "rsyncd.out"
    conf.write_text(f"""use chroot = no
reverse lookup = no
max connections = 0
log file = {log}
uid = {os.getuid()}
gid = {os.getgid()}

[{RSYNC_MODULE}]
path = {data_root}
read only = yes
""")
    argv = [rsync, "--daemon", "--no-detach", f"--config={conf}", f"--port={port}",
            "--address=127.0.0.1"]
    return Daemon("rsyncd", argv, port, [out, log], cwd=logdir,
                  env=dict(os.environ, **extra_env) if extra_env else None)
