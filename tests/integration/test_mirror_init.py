"""mirror-init as a user runs it, against a fake mirror server that accepts the job and then
says nothing: interrupts, --timeout and an unreachable server end it cleanly (over plain TCP
and over TLS with a pinned key, the cancelling connection included)."""

from __future__ import annotations

import json
import select
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from typing import IO

import pytest

from tests.integration.conftest import both_transports
from tests.integration.daemons import interruptible, mirror_init, mirror_init_command
from tests.integration.transport import Transport

SPEC = "127.0.0.1:1:."


@pytest.fixture
def silent_server(transport: Transport) -> Iterator[socket.socket]:
    """A listening socket on loopback; the test accepts and never answers. In TLS, what it
    accepts is TLS 1.3 with the mirror server's key, which mirror-init pins."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(30)  # a bound: the test fails rather than hangs
        if transport.ids is None:
            yield listener
            return
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(transport.ids.ms.paths.cert, transport.ids.ms.paths.key)
        transport.pin(listener.getsockname()[1], "mirror-server")
        with ctx.wrap_socket(listener, server_side=True) as secured:
            yield secured


def _accept_job(listener: socket.socket) -> socket.socket:
    """Accept mirror-init's connection and read its submission up to GO."""
    conn, _ = listener.accept()
    conn.settimeout(30)
    data = b""
    while not data.endswith(b"GO\r\n"):
        chunk = conn.recv(4096)
        assert chunk, f"closed before GO: {data!r}"
        data += chunk
    return conn


def _first_line(pipe: IO[str] | None) -> str:
    assert pipe is not None
    ready, _, _ = select.select([pipe], [], [], 30)  # a bound, as above
    assert ready, "mirror-init printed nothing"
    return pipe.readline()


@both_transports
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("as_json", [False, True])
def test_interrupt_cancels_the_job_with_status_130(silent_server: socket.socket, sig: int,
                                                  as_json: bool) -> None:
    """Ctrl-C or SIGTERM cancels the job followed (CANCEL on a second connection), waits
    for what the server reports, prints it, exits 130."""
    port = silent_server.getsockname()[1]
    args = ["-n", "127.0.0.1", "-p", str(port), "-s", SPEC]
    proc = subprocess.Popen(mirror_init_command(*args, *(["--json"] if as_json else [])),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    try:
        conn = _accept_job(silent_server)
        conn.sendall(b"JOB 12\r\nPROGRESS 0 0 1 1 0\r\n")
        # The progress line shows the events were read (it goes to stderr with --json).
        shown = _first_line(proc.stderr if as_json else proc.stdout)
        assert shown.startswith("progress: listing"), shown
        proc.send_signal(sig)
        canceller, _ = silent_server.accept()
        with canceller:
            canceller.settimeout(30)
            assert canceller.recv(4096) == b"CANCEL 12\r\n"
            canceller.sendall(b"CANCELLED 12\r\n")
        conn.sendall(b"ERROR 0 - job%20cancelled\r\n"
                     b"SOURCE-DONE 0 failed 1 0 5 25 0 0 0.1 0\r\nDONE failed\r\n")
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    conn.close()
    assert proc.returncode == 130, err
    why = "interrupted; job 12 cancelled"
    assert err.endswith(f"mirror-init: {why}\n"), err
    if as_json:
        report = json.loads(out)
        assert (report["ok"], report["error"], report["job_id"]) == (False, why, "12")
        assert report["cancelled"] and report["totals"]["files"] == 1
    else:
        assert "job 12" in out and f"job not completed: {why}" in out


@both_transports
def test_timeout_on_a_silent_server(silent_server: socket.socket) -> None:
    port = silent_server.getsockname()[1]
    proc = subprocess.Popen(mirror_init_command("-n", "127.0.0.1", "-p", str(port), "-s",
                                                SPEC, "--timeout", "0.5", "--json"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        conn = _accept_job(silent_server)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    conn.close()
    assert proc.returncode == 1, err
    assert err == "mirror-init: the job did not finish within 0.5 seconds\n"
    assert json.loads(out)["error"] == "the job did not finish within 0.5 seconds"


def test_unreachable_mirror_server(unused_port: int) -> None:
    run = mirror_init("-n", "127.0.0.1", "-p", str(unused_port), "-s", SPEC)
    assert run.returncode == 1
    assert run.stderr.startswith("mirror-init: cannot reach the mirror server: ")
    assert run.stderr.count("\n") == 1 and "refused" in run.stderr
    assert run.stdout == ""
