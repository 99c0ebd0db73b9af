"""The connection caps on real sockets: who is told "busy", whose idle connection makes room.

Both loopback addresses 127.0.0.1 and 127.0.0.2 reach a server bound to 127.0.0.1, so two
"peers" can be told apart. The control-port tests run the installed daemons and mirror-init as
subprocesses (so a held job dies with its daemon); the content-port tests use the in-process
content server and the raw client of test_hostile_clients.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer

from mirror.wire import control, frames
from tests.integration.conftest import run_job, source
from tests.integration.daemons import content_server, mirror_init, mirror_server
from tests.integration.test_hostile_clients import (  # noqa: F401 (fixtures)
    RawClient,
    connect_raw,
    good_fetch,
    no_logged_failures,
)
from tests.integration.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

BUSY_1 = "busy: too many connections from 127.0.0.1"


# -- control port: mirror-init and the mirror-server daemon ---------------------------------




class LineSocket:
    """A blocking control-port client from a chosen loopback address."""

    def __init__(self, port: int, bind: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20,
                                             source_address=(bind, 0))
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """The next line (without CRLF); b"" once the server closed."""
        while b"\r\n" not in self.buf:
            more = self.sock.recv(4096)
            if not more:
                return b""
            self.buf += more
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def close(self) -> None:
        self.sock.close()


def start_running_job(mport: int, cport: int, bind: str = "127.0.0.1") -> LineSocket:
    """A control connection whose job runs for a minute (a delayed FETCH): never idle."""
    c = LineSocket(mport, bind)
    c.send(f"SOURCE 127.0.0.1 {cport} a.txt 60\r\nGO\r\n".encode())
    assert c.line().startswith(b"JOB "), "the job was not accepted"
    return c


def assert_still_running(c: LineSocket) -> None:
    """Nothing but PROGRESS has come on ``c`` (no REFUSED, no DONE, no close)."""
    c.sock.settimeout(0.3)
    try:
        while True:
            line = c.line()
            assert line.startswith(b"PROGRESS "), line
    except TimeoutError:
        pass
    finally:
        c.sock.settimeout(20)


def refused_with(c: LineSocket) -> str:
    line = c.line()
    event = control.parse_server_line(line)
    assert isinstance(event, control.Refused), line
    assert c.line() == b"", "REFUSED must be the last line"
    return event.message


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    (root / "a.txt").write_bytes(b"aaa\n")
    (root / "b.txt").write_bytes(b"bbb\n")
    return root


def test_mirror_init_behind_the_cap_prints_the_reason(tmp_path: Path, daemons, src: Path):
    cs = daemons(content_server, src, tmp_path / "logs")
    ms = daemons(mirror_server, tmp_path / "mirror", tmp_path / "logs",
                 "--max-per-peer", "1", "--max-connections", "2")
    held = start_running_job(ms.port, cs.port)
    run = mirror_init("-n", "127.0.0.1", "-p", str(ms.port), "-s", f"127.0.0.1:{cs.port}:b.txt")
    assert run.returncode == 1, run.stderr
    assert f"mirror server {BUSY_1}" in run.stderr, run.stderr
    assert "non-clean" not in run.stderr and "Traceback" not in run.stderr
    # The working connection was not taken for the newcomer: its job still runs.
    assert_still_running(held)
    # Another address still gets the last slot, and the total cap refuses with its reason.
    other = start_running_job(ms.port, cs.port, bind="127.0.0.2")
    third = LineSocket(ms.port, bind="127.0.0.3")
    assert refused_with(third) == "mirror server busy: too many connections (2 in total)"
    for c in (held, other, third):
        c.close()


def test_idle_control_connection_makes_room_for_mirror_init(tmp_path: Path, daemons,
                                                            src: Path):
    cs = daemons(content_server, src, tmp_path / "logs")
    ms = daemons(mirror_server, tmp_path / "mirror", tmp_path / "logs",
                 "--max-per-peer", "1", "--submit-timeout", "60")
    idle = LineSocket(ms.port)  # connected, nothing submitted
    run = mirror_init("-n", "127.0.0.1", "-p", str(ms.port), "-s", f"127.0.0.1:{cs.port}:b.txt")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "mirror" / f"127.0.0.1_{cs.port}" / "b.txt").read_bytes() == b"bbb\n"
    assert "idle connection closed to make room" in refused_with(idle)
    idle.close()


# -- content port ---------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """An export holding ok.txt, as `good_fetch` expects."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok.txt").write_bytes(b"fine\n")
    return root


async def working(port: int, bind: str) -> RawClient:
    """A content connection with a FETCH in flight (held up by a long delay)."""
    c = await connect_raw(port, bind)
    c.request(frames.FETCH, 1, frames.encode_fetch("ok.txt", delay_ms=60_000))
    return c


def all_working(factory, host: str, count: int) -> bool:
    """``host`` holds ``count`` connections, each with a request in flight."""
    conns = factory.limiter.connections(host)
    return len(conns) == count and not any(c.is_idle() for c in conns)


def connection_error(c: RawClient) -> tuple[int, str]:
    """The connection-level ERROR (request id 0) ``c`` got."""
    (opcode, payload), = c.frames_for(0)
    assert opcode == frames.ERROR
    return frames.decode_error(payload)


@pytest_twisted.ensureDeferred
async def test_one_address_cannot_evict_anothers_working_connections(tree: Path,
                                                                     start_content_server):
    port, factory = start_content_server(str(tree), max_per_peer=3, max_connections=5)
    busy = [await working(port, "127.0.0.1") for _ in range(3)]
    await wait_for(lambda: all_working(factory, "127.0.0.1", 3), 10.0, "FETCHes received")
    # Its own fourth is refused, with the reason, since none of the three is idle.
    fourth = await connect_raw(port, "127.0.0.1")
    await fourth.wait_for(lambda: fourth.closed)
    assert connection_error(fourth) == (frames.E_BUSY, f"content server {BUSY_1}")
    # 127.0.0.2 fills the total cap with idle connections, then opens more: each takes the
    # slot of its own oldest idle one (127.0.0.1 holds more, but nothing idle).
    others = [await connect_raw(port, "127.0.0.2") for _ in range(2)]
    await wait_for(lambda: factory.limiter.total == 5, 10.0)
    third = await connect_raw(port, "127.0.0.2")
    await others[0].wait_for(lambda: others[0].closed)
    code, message = connection_error(others[0])
    assert code == frames.E_BUSY and "idle connection closed" in message
    # A new address takes an idle slot of 127.0.0.2 (which holds more than it), never one
    # of 127.0.0.1's working connections.
    await good_fetch(port, bind="127.0.0.3")
    await others[1].wait_for(lambda: others[1].closed)
    assert not third.closed
    assert not any(c.closed for c in busy)
    for c in busy + [others[1], third]:
        c.transport.loseConnection()
    await defer.gatherResults([c.lost for c in busy])
    await wait_for(lambda: factory.limiter.total == 0, 10.0)


@pytest_twisted.ensureDeferred
async def test_idle_connections_make_room_for_a_working_client(tree: Path,
                                                               start_content_server):
    """Idle sockets cannot lock out a client behind the same address."""
    port, factory = start_content_server(str(tree), max_per_peer=4)
    idle = [await connect_raw(port, "127.0.0.1") for _ in range(4)]
    await wait_for(lambda: factory.limiter.total == 4, 10.0)
    await good_fetch(port, bind="127.0.0.1")  # it took the slot of the oldest
    await idle[0].wait_for(lambda: idle[0].closed)
    code, message = connection_error(idle[0])
    assert code == frames.E_BUSY and "idle connection closed" in message
    assert [c.closed for c in idle] == [True, False, False, False]
    # Three more: one fits in the slot good_fetch freed, two take the oldest idle ones.
    newer = [await connect_raw(port, "127.0.0.1") for _ in range(3)]
    await wait_for(lambda: sum(c.closed for c in idle) == 3, 10.0)
    assert [c.closed for c in idle] == [True, True, True, False], "oldest first"
    assert not any(c.closed for c in newer)
    for c in newer + idle[3:]:
        c.transport.loseConnection()
    await wait_for(lambda: factory.limiter.total == 0, 10.0)


@pytest_twisted.ensureDeferred
async def test_mirror_server_reports_the_content_servers_reason(tree: Path, tmp_path: Path,
                                                                start_content_server,
                                                                start_mirror_server):
    cport, factory = start_content_server(str(tree), max_per_peer=1)
    mport, _ = start_mirror_server(str(tmp_path / "mirror"))
    held = await working(cport, "127.0.0.1")
    await wait_for(lambda: all_working(factory, "127.0.0.1", 1), 10.0, "FETCH received")
    result = await run_job(mport, [source(cport, "ok.txt")])
    assert not result.ok
    messages = [e.message for e in result.errors]
    assert any(f"content server {BUSY_1}" in m for m in messages), messages
    held.transport.loseConnection()
    await held.lost
    await wait_for(lambda: factory.limiter.total == 0, 10.0)
    result = await run_job(mport, [source(cport, "ok.txt")])
    assert result.ok, result.errors
