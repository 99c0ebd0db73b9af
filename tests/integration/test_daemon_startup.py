"""Start-up of the real ``twistd`` plugins (subprocesses): every mistake a user can make on
the command line or with the directories and ports given is one clear line on stderr and a
non-zero exit, never a traceback; ``--help`` is complete."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror.content_server import tap as content_tap
from mirror.mirror_server import tap as mirror_tap
from tests.integration.waiting import poll

REPO = Path(__file__).resolve().parents[2]
TWISTD = str(Path(sys.executable).parent / "twistd")
ENV = dict(os.environ, PYTHONPATH=str(REPO))
PLUGINS = {"content-server": content_tap, "mirror-server": mirror_tap}
IS_ROOT = os.geteuid() == 0


def twistd(*args: str, cwd: Path, daemon: bool = False,
           timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``twistd [-n] --pidfile=... ARGS`` as a user would run it, to completion."""
    head = [TWISTD, f"--pidfile={cwd / 'twistd.pid'}", f"--logfile={cwd / 'twistd.log'}"]
    if not daemon:
        head = [TWISTD, "-n", "--pidfile="]
    return subprocess.run([*head, *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def one_line_error(proc: subprocess.CompletedProcess[str], plugin: str, *words: str,
                   status: int | None = None) -> str:
    """The process failed with exactly one line on stderr, ``PLUGIN: error: ...``."""
    assert proc.returncode != 0, (proc.stdout, proc.stderr)
    if status is not None:
        assert proc.returncode == status, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith(f"{plugin}: error: "), line
    for word in words:
        assert word in line, line
    return line


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port with something listening on it (on all addresses, as the daemons bind)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", 0))
        s.listen()
        yield s.getsockname()[1]


def _args(plugin: str, directory: Path, port: str | None = "0") -> list[str]:
    flag = "--root" if plugin == "content-server" else "--mirror-dir"
    listen = ["--listen", f"tcp:{port}:interface=127.0.0.1"] if port is not None else []
    return [plugin, flag, str(directory), *listen]


# -- directories ----------------------------------------------------------------------------


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
def test_missing_directory(plugin: str, tmp_path: Path):
    proc = twistd(*_args(plugin, tmp_path / "no-such-dir"), cwd=tmp_path)
    one_line_error(proc, plugin, "no-such-dir", "not a directory", status=2)


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
def test_directory_that_is_a_file(plugin: str, tmp_path: Path):
    (tmp_path / "a-file").write_text("x")
    proc = twistd(*_args(plugin, tmp_path / "a-file"), cwd=tmp_path)
    one_line_error(proc, plugin, "a-file", "not a directory", status=2)


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
def test_directory_not_given(plugin: str, tmp_path: Path):
    proc = twistd(plugin, "--listen", "tcp:0", cwd=tmp_path)
    one_line_error(proc, plugin, "required", status=2)


@pytest.mark.skipif(IS_ROOT, reason="root reads and writes any directory whatever its mode; "
                    "the read-only mount and immutable tests cover root")
def test_unwritable_mirror_dir_by_mode(tmp_path: Path):
    target = tmp_path / "mirror"
    target.mkdir(mode=0o500)
    try:
        proc = twistd(*_args("mirror-server", target), cwd=tmp_path)
    finally:
        target.chmod(0o700)
    one_line_error(proc, "mirror-server", str(target), "not writable", status=2)


@pytest.mark.skipif(IS_ROOT, reason="root reads any directory whatever its mode")
def test_unreadable_content_root_by_mode(tmp_path: Path):
    target = tmp_path / "root"
    target.mkdir(mode=0o000)
    try:
        proc = twistd(*_args("content-server", target), cwd=tmp_path)
    finally:
        target.chmod(0o700)
    one_line_error(proc, "content-server", str(target), "not readable", status=2)


@contextlib.contextmanager
def read_only_mount(where: Path) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@pytest.mark.skipif(not IS_ROOT, reason="mounting needs root (the mode test covers others)")
def test_mirror_dir_on_read_only_filesystem(tmp_path: Path):
    """Unwritable even for root: a read-only mount."""
    with read_only_mount(tmp_path / "ro") as target:
        proc = twistd(*_args("mirror-server", target), cwd=tmp_path)
    one_line_error(proc, "mirror-server", str(target), "not writable", "read-only",
                   status=2)


@pytest.mark.skipif(not IS_ROOT, reason="chattr +i needs root")
def test_mirror_dir_immutable(tmp_path: Path):
    """Unwritable even for root: an immutable directory."""
    target = tmp_path / "immutable"
    target.mkdir()
    if subprocess.run(["chattr", "+i", str(target)], capture_output=True).returncode != 0:
        pytest.skip("this filesystem has no immutable attribute")
    try:
        proc = twistd(*_args("mirror-server", target), cwd=tmp_path)
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=True)
    one_line_error(proc, "mirror-server", str(target), "not writable", status=2)
    assert list(target.iterdir()) == []


def test_writability_probe_leaves_nothing_behind(tmp_path: Path):
    """The start-up check really creates a file to be sure, and removes it; the only thing
    made is the state directory, mode 0700, empty until the journal opens."""
    target = tmp_path / "mirror"
    target.mkdir()
    options = mirror_tap.Options()
    options.parseOptions(["--mirror-dir", str(target)])
    assert [p.name for p in target.iterdir()] == [".mirror-state"]
    state = target / ".mirror-state"
    assert state.stat().st_mode & 0o777 == 0o700
    assert list(state.iterdir()) == []


def test_custom_state_dir_anywhere(tmp_path: Path):
    """--state-dir may be outside the mirror directory; it is created (parents too)."""
    target = tmp_path / "mirror"
    target.mkdir()
    state = tmp_path / "var" / "state"
    options = mirror_tap.Options()
    options.parseOptions(["--mirror-dir", str(target), "--state-dir", str(state)])
    assert list(target.iterdir()) == []
    assert state.is_dir() and state.stat().st_mode & 0o777 == 0o700


# -- ports ----------------------------------------------------------------------------------


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
def test_port_in_use(plugin: str, tmp_path: Path, busy_port: int):
    proc = twistd(*_args(plugin, tmp_path, port=None), "--port", str(busy_port), cwd=tmp_path)
    one_line_error(proc, plugin, f"tcp:{busy_port}", "address already in use", status=1)


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
def test_port_in_use_when_daemonizing(plugin: str, tmp_path: Path, busy_port: int):
    """Reported before twistd forks: on the terminal, not only in the log file."""
    proc = twistd(*_args(plugin, tmp_path, port=None), "--port", str(busy_port), cwd=tmp_path,
                  daemon=True)
    one_line_error(proc, plugin, f"tcp:{busy_port}", "address already in use", status=1)
    assert not (tmp_path / "twistd.pid").exists()


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
def test_bad_listen_description(plugin: str, tmp_path: Path):
    proc = twistd(*_args(plugin, tmp_path, port=None), "--listen", "carrier-pigeon:12",
                  cwd=tmp_path)
    one_line_error(proc, plugin, "carrier-pigeon:12")


def _wait_for_port(log: Path, timeout: float = 15.0) -> int:
    def ports() -> list[str]:
        return re.findall(r"starting on (\d+)", log.read_text(errors="replace")) \
            if log.exists() else []

    poll(ports, timeout, f"'starting on' in {log}")
    return int(ports()[-1])


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
def test_daemonized_start_serves_and_stops(plugin: str, tmp_path: Path):
    """The good case, daemonized (listening happens before the fork): it serves, and stops
    on SIGTERM."""
    directory = tmp_path / "dir"
    directory.mkdir()
    (directory / "f.txt").write_text("x")
    proc = twistd(*_args(plugin, directory), cwd=tmp_path, daemon=True)
    assert proc.returncode == 0, proc.stderr
    pid = int((tmp_path / "twistd.pid").read_text())
    try:
        port = _wait_for_port(tmp_path / "twistd.log")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            if plugin == "content-server":
                from mirror.wire import frames

                s.sendall(frames.frame(frames.LIST, 1, b""))
                reply = s.recv(4096)
                assert reply[4] == frames.ENTRIES and b"f.txt" in reply
            else:
                s.sendall(b"GO\r\n")
                assert s.recv(4096).startswith(b"REFUSED ")
    finally:
        os.kill(pid, signal.SIGTERM)
    poll(lambda: not (tmp_path / "twistd.pid").exists(), 10, "twistd.pid to be removed")


# -- flags ----------------------------------------------------------------------------------


@pytest.mark.parametrize("plugin,flags,words", [
    ("mirror-server", ["--workers", "0"], ["--workers", "'0'", "between 1 and"]),
    ("mirror-server", ["-w", "many"], ["'many'", "not a valid int"]),
    ("mirror-server", ["--port", "70000"], ["--port", "'70000'", "between 1 and 65535"]),
    ("mirror-server", ["--port", "0"], ["--port"]),
    ("mirror-server", ["--bogus"], ["--bogus"]),
    ("mirror-server", ["--submit-timeout", "nan"], ["nan", "finite"]),
    ("mirror-server", ["--submit-timeout", "-1"], ["'-1'"]),
    ("mirror-server", ["stray-argument"], ["arguments"]),
    ("content-server", ["--max-per-peer", "0"], ["--max-per-peer", "'0'"]),
    ("content-server", ["--frame-timeout", "inf"], ["inf", "finite"]),
    ("content-server", ["--port", "70000"], ["'70000'"]),
    ("content-server", ["--threads", "x"], ["'x'"]),
    ("content-server", ["--bogus"], ["--bogus"]),
])
def test_bad_flags(plugin: str, flags: list[str], words: list[str], tmp_path: Path):
    proc = twistd(*_args(plugin, tmp_path, port=None), *flags, cwd=tmp_path)
    one_line_error(proc, plugin, *words, status=2)


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
def test_help_is_complete(plugin: str, tmp_path: Path):
    proc = twistd(plugin, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    text = proc.stdout
    options = PLUGINS[plugin].Options
    for long, short, default, *_ in options.optParameters:
        assert f"--{long}=" in text, long
        if short:
            assert f"-{short}, --{long}" in text, long
        if default is not None:
            assert f"[default: {default}]" in " ".join(text.split()), long
    for flag in ("--listen=", "-p, --port=", "--help"):
        assert flag in text
    # The default endpoint is stated too.
    assert options.default_listen in text
