"""LIST against hostile clients, deep trees and low descriptor limits (issue 7), on real
daemons: a client that pipelines LISTs and never reads is dropped within --write-timeout
with bounded memory and descriptors; a tree deeper than the descriptor limit is listed
completely; a listing held longer than the content server's --write-timeout is resumed."""

from __future__ import annotations

import json
import os
import resource
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from mirror.content_server import protocol as content_protocol
from mirror.content_server.protocol import ContentServerProtocol
from mirror.mirror_server.content_client import ContentClientProtocol
from mirror.wire import frames
from tests.integration.conftest import run_job, source
from tests.integration.daemons import content_server, mirror_init, mirror_server
from tests.trees import assert_same_tree

pytestmark = pytest.mark.timeout(120)




def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _fd_targets(pid: int) -> list[str]:
    """What the descriptors of ``pid`` point to (those closed meanwhile left out)."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    return sorted(targets)


def _tcp_state(sock: socket.socket) -> int:
    """tcpi_state of ``sock`` (1 = established)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def _deep_tree(root: Path, depth: int, bottom: int) -> Path:
    """A chain of ``depth`` directories (a file at each level), ``bottom`` files at the end."""
    path = root
    for level in range(depth):
        path = path / f"{level % 10}"
        path.mkdir(parents=True)
        (path / "f").write_bytes(b"%d" % level)
    for i in range(bottom):
        (path / f"file-with-a-name-of-some-length-{i:05d}").write_bytes(b"")
    return path


def test_client_pipelining_lists_and_never_reading_is_dropped(tmp_path: Path, daemons):
    """The scenario of issue 7: one connection, 64 pipelined LISTs of a 16-level tree with a
    few thousand entries at the bottom, never reading. Before, the connection was never
    dropped and held ~190 MiB and ~1,000 descriptors."""
    root = tmp_path / "root"
    _deep_tree(root, 16, 3000)
    write_timeout = 1.0
    cs = daemons(content_server, root, tmp_path / "logs", "--write-timeout", str(write_timeout),
                 "--idle-timeout", "60")
    pid = cs.proc.pid
    base_rss, base_fds = _rss(pid), _fds(pid)
    sock = socket.create_connection(("127.0.0.1", cs.port))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"".join(frames.frame(frames.LIST, rid, frames.encode_list(""))
                              for rid in range(1, 65)))
        sent = time.monotonic()
        peak_rss, peak_fds, peak_what = base_rss, base_fds, []
        dropped = None
        while time.monotonic() - sent < write_timeout + 20:
            peak_rss = max(peak_rss, _rss(pid))
            what = _fd_targets(pid)
            if len(what) > peak_fds:
                peak_fds, peak_what = len(what), what
            if _tcp_state(sock) != 1:
                dropped = time.monotonic() - sent
                break
            time.sleep(0.02)
    finally:
        sock.close()
    assert dropped is not None, "the client that never reads was not dropped"
    # The deadline runs from when the server's buffers filled (megabytes of listing on
    # loopback, a few seconds on a loaded machine); before, it was never dropped.
    assert dropped < write_timeout + 8.0, dropped
    # The socket, a pipe pair the daemon makes at its first disk work, and per walker (4 per
    # connection) one, three for a moment (the directory being entered, and the duplicate
    # os.listdir reads through); before, one per level per LIST: ~1,000.
    assert peak_fds - base_fds <= 3 + 3 * 4, "\n".join([str((base_fds, peak_fds))] + peak_what)
    assert peak_rss - base_rss < 32 * 1024 * 1024, (base_rss, peak_rss)
    assert "client stopped reading" in cs.log_text()

    # The server still answers a client that reads.
    with socket.create_connection(("127.0.0.1", cs.port), timeout=10) as good:
        good.sendall(frames.frame(frames.LIST, 1, frames.encode_list("0/1")))
        data = b""
        while True:
            chunk = good.recv(1 << 16)
            assert chunk, "connection closed before LIST_END"
            data += chunk
            if _list_end(data):
                break


def _list_end(data: bytes) -> tuple[int, int] | None:
    pos = 0
    while len(data) - pos >= 9:
        (length,) = struct.unpack_from(">I", data, pos)
        if len(data) - pos - 4 < length:
            return None
        if data[pos + 4] == frames.LIST_END:
            return frames.decode_list_end(data[pos + 9 : pos + 4 + length])
        pos += 4 + length
    return None


def _low_nofile(limit: int):
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return lower


@pytest.mark.parametrize("depth", [60, 300])
def test_tree_deeper_than_the_descriptor_limit(tmp_path: Path, daemons, depth: int):
    """With 64 descriptors, a 60-level tree used to be mirrored with "ok": true and 34 of
    its 60 files; a walker now holds one descriptor whatever the depth."""
    root = tmp_path / "root"
    _deep_tree(root, depth, 3)
    os.symlink("/etc/passwd", root / "link")
    logs = tmp_path / "logs"
    cs = daemons(content_server, root, logs, preexec_fn=_low_nofile(64))
    ms = daemons(mirror_server, tmp_path / "mirror", logs)
    run = mirror_init("-n", "127.0.0.1", "-p", str(ms.port), "-s", f"127.0.0.1:{cs.port}:.",
                      "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["ok"] is True
    totals = report["totals"]
    assert (totals["files"], totals["dirs"], totals["failed"]) == (depth + 3, depth, 0)
    # The link is listed, and skipped as unsafe (absolute): not a failure.
    assert (totals["not_exported"], totals["links"], totals["links_skipped"]) == (0, 0, 1)
    assert_same_tree(root, tmp_path / "mirror" / f"127.0.0.1_{cs.port}")


# -- a listing held longer than the content server's --write-timeout -------------------------


@pytest.fixture
def small_socket_buffers(monkeypatch) -> None:
    """Buffers of 64 KiB on both ends, so that a listing of ~600 KB fills them and the
    content server really waits for the mirror to read (loopback buffers hold megabytes).
    (Much smaller ones would make the reading itself slower than the write timeout.)"""
    monkeypatch.setattr(content_protocol, "WRITE_BUFFER", 64 * 1024)
    server_made = ContentServerProtocol.connectionMade
    client_made = ContentClientProtocol.connectionMade

    def small(proto: Any, option: int) -> None:
        handle = getattr(proto.transport, "getHandle", None)
        if handle is not None:
            handle().setsockopt(socket.SOL_SOCKET, option, 64 * 1024)

    def server(proto: Any) -> None:
        server_made(proto)
        small(proto, socket.SO_SNDBUF)

    def client(proto: Any) -> None:
        client_made(proto)
        small(proto, socket.SO_RCVBUF)

    monkeypatch.setattr(ContentServerProtocol, "connectionMade", server)
    monkeypatch.setattr(ContentClientProtocol, "connectionMade", client)


@pytest.mark.parametrize("who_closes", ["content server", "mirror server"])
@pytest_twisted.ensureDeferred
async def test_job_whose_queue_stays_full_longer_than_the_write_timeout(
        tmp_path: Path, start_content_server, start_mirror_server, small_socket_buffers,
        monkeypatch, who_closes: str):
    """Ten slow files (a SPEC delay; over 256 KiB, so that a worker takes them one at a
    time) through one worker and a queue of 2 keep the queue full for more than three
    times the content server's --write-timeout while the listing (5,000 directories of long
    names after them, ~600 KB) waits. Either the content server drops the listing or the
    mirror closes it first (list_hold); either way it resumes from its cursor and the
    job completes."""
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    for i in range(10):
        (root / "a" / f"f{i}").write_bytes(bytes([i]) * (300 * 1024 + i))
    for i in range(5000):
        (root / "b" / f"{'d' * 90}{i:05d}").mkdir(parents=True)
    cursors: list[str] = []
    parse = ContentServerProtocol._parse_cursor

    def record(proto: Any, raw: bytes, parts: Any) -> Any:
        cursors.append(raw.decode())
        return parse(proto, raw, parts)

    monkeypatch.setattr(ContentServerProtocol, "_parse_cursor", record)
    write_timeout, delay = 0.5, 0.3
    if who_closes == "content server":
        cport, cfactory = start_content_server(str(root), write_timeout=write_timeout)
        hold = 60.0
    else:
        cport, cfactory = start_content_server(str(root), write_timeout=60.0)
        hold = 0.3
    mport, service = start_mirror_server(str(tmp_path / "mirror"), workers=1, queue_size=2,
                                         list_hold=hold)
    result = await run_job(mport, [source(cport, "", delay)], timeout=60)
    assert result.errors == [], result.errors
    assert result.ok
    done = result.source_done[0]
    assert (done.files, done.dirs, done.failed) == (10, 5002, 0)
    assert_same_tree(root, tmp_path / "mirror" / f"127.0.0.1_{cport}")
    # 10 files at 0.3 s through one worker: the queue was full for well over 3 x 0.5 s.
    assert cursors, "the listing was never closed and resumed"
    assert cursors == sorted(cursors)
