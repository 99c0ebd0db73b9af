"""Real daemons on loopback, in this process (pytest-twisted runs the reactor)."""

from __future__ import annotations

import os
import random
import socket
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import blockingCallFromThread

from mirror.content_server.factory import ContentServerFactory, open_root
from mirror.content_server.protocol import ContentSettings
from mirror.initiator.client import JobResult, submit_job
from mirror.mirror_server.control import ControlFactory
from mirror.mirror_server.service import MirrorService, MirrorSettings
from mirror.security.authorized_keys import authorized_keys
from mirror.security.known_hosts import known_hosts
from mirror.security.options import Security, secure_factory
from mirror.security.tls import ClientPolicy
from mirror.threads import DiskThreads
from mirror.wire.control import SourceRequest
from tests.integration import daemons as programs

# Fixtures for every test module here (hostile_server, postgres; one imported by a test
# module shadows itself).
from tests.integration.hostile_server import start_hostile_server  # noqa: F401
from tests.integration.postgres import postgres_server, postgres_url  # noqa: F401
from tests.integration.transport import PLAIN, Identities, Transport, tls_transport

#: Run a test (or every test of a module, as ``pytestmark``) over plain TCP and over TLS:
#: its daemons, in this process or installed, and its mirror-init clients.
both_transports = pytest.mark.parametrize("transport", ["plain", "tls"], indirect=True)


@pytest.fixture(scope="session")
def tls_identities(tmp_path_factory: pytest.TempPathFactory) -> Identities:
    """The session's keys (made once: a key pair and certificate each)."""
    return Identities(tmp_path_factory.mktemp("identities"))


@pytest.fixture
def transport(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The test's `Transport`: "plain" unless the test is parametrised (`both_transports`);
    the installed programs (`tests.integration.daemons`) use it while the test runs."""
    name = getattr(request, "param", "plain")
    if name == "plain":
        chosen = PLAIN
    else:
        ids = request.getfixturevalue("tls_identities")
        chosen = tls_transport(ids, tmp_path_factory.mktemp("pins"))
    previous, programs.current = programs.current, chosen
    yield chosen
    programs.current = previous


@pytest.fixture
def start_content_server(transport: Transport) -> Any:
    """``start(root, clock=None, **settings) -> (port, factory)``: a content server on
    127.0.0.1; its deadlines run on ``clock`` if given (a `task.Clock` the test advances)."""
    started: list[tuple[Any, DiskThreads, int]] = []

    def start(root: str, clock: IReactorTime | None = None,
              **settings: Any) -> tuple[int, ContentServerFactory]:
        threads = DiskThreads(reactor, 4)
        threads.startService()
        root_fd = open_root(root)
        factory = ContentServerFactory(root_fd, threads, ContentSettings(**settings), clock)
        listened: Any = factory
        if transport.ids is not None:
            keys = authorized_keys(str(transport.ids.cs_keys))
            keys.load()
            listened = secure_factory(Security(identity=transport.ids.cs, keys=keys), factory,
                                      threads, reactor)
        # listenTCP's stub wants a ServerFactory of a private protocol type: no factory fits.
        port = reactor.listenTCP(0, listened, interface="127.0.0.1")
        started.append((port, threads, root_fd))
        number: int = port.getHost().port  # type: ignore[attr-defined]  # a TCP port
        transport.pin(number, "content-server")
        return number, factory

    yield start
    for port, threads, root_fd in started:
        pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))
        pytest_twisted.blockon(threads.stopService())
        os.close(root_fd)


#: The control factory of each port `start_mirror_server` listens on (its connection limiter).
control_factories: dict[int, ControlFactory] = {}


@pytest.fixture
def start_mirror_server(transport: Transport) -> Any:
    """``start(mirror_dir, **settings) -> (port, service)``: a mirror server on 127.0.0.1."""
    started: list[tuple[Any, MirrorService]] = []

    def start(mirror_dir: str, **settings: Any) -> tuple[int, MirrorService]:
        os.makedirs(mirror_dir, exist_ok=True)
        # No fsync unless a test asks (a few ms a file on a disk): the installed daemons
        # (tests.integration.daemons) run with it, and test_durable checks what it does.
        settings = {"fsync": False, **settings}
        service = MirrorService(mirror_dir, MirrorSettings(**settings), reactor)
        factory = ControlFactory(service)
        listened: Any = factory
        if transport.ids is not None:
            # As the installed daemon (mirror.mirror_server.tap): content connections TLS
            # to the pinned content servers, the control port TLS to authorized clients.
            pins = known_hosts(str(transport.known_hosts))
            pins.load()
            service.endpoints = ClientPolicy(reactor, transport.ids.ms.paths, pins,
                                             service.threads).endpoint
            keys = authorized_keys(str(transport.ids.ms_keys))
            keys.load()
            listened = secure_factory(Security(identity=transport.ids.ms, keys=keys), factory,
                                      service.threads, reactor)
        service.startService()
        port = reactor.listenTCP(0, listened, interface="127.0.0.1")
        started.append((port, service))
        number: int = port.getHost().port  # type: ignore[attr-defined]  # a TCP port
        control_factories[number] = factory
        transport.pin(number, "mirror-server")
        return number, service

    yield start
    for port, service in started:
        control_factories.pop(port.getHost().port, None)
        pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))
        pytest_twisted.blockon(defer.maybeDeferred(service.stopService))


def run_job(mirror_port: int, sources: list[SourceRequest],
            on_event: Callable[[Any], None] = lambda e: None,
            timeout: float = 60.0) -> defer.Deferred[JobResult]:
    """Submit a job as mirror-init does and fire with its result.

    mirror-init's client blocks: it runs in a thread of its own (not the reactor's pool,
    which several jobs at once could exhaust), and ``on_event`` runs in the reactor thread
    before the client reads on, as the test's code expects.
    """
    d: defer.Deferred[JobResult] = defer.Deferred()
    threads = IReactorFromThreads(reactor)
    opener = programs.current.opener()  # TLS with the pins, in a "tls" test

    def deliver(event: Any) -> None:
        blockingCallFromThread(threads, on_event, event)

    def job() -> None:
        try:
            result = submit_job("127.0.0.1", mirror_port, sources, deliver, timeout=timeout,
                                opener=opener)
        except BaseException as e:  # noqa: BLE001  # every outcome goes to the Deferred
            threads.callFromThread(d.errback, e)
        else:
            threads.callFromThread(d.callback, result)

    threading.Thread(target=job, name=f"run_job:{mirror_port}", daemon=True).start()
    return d


def deep_scratch_dir(prefix: str) -> str:
    """A new directory for a tree thousands of levels deep, removed by the test itself.

    On a tmpfs where there is one: removing 2,000 levels one ``rmdir`` at a time took 5 s on
    a busy disk. Not under pytest's tmp_path: its clean-up recurses once per level.
    """
    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    return tempfile.mkdtemp(prefix=prefix, dir=base)


def source(port: int, path: str = "", delay: float = 0.0) -> SourceRequest:
    return SourceRequest("127.0.0.1", port, path, delay)


def free_port() -> int:
    """A loopback port free now, and outside the range the kernel picks ports from.

    A port the kernel handed out (bind to port 0) and that was closed again is soon handed
    out again, as the local port of some outgoing connection (the suite makes thousands):
    a daemon started on it later then failed with "address already in use", one run in a
    few on a busy machine. A port below the ephemeral range is only ever taken explicitly.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rnd = random.Random()
    for _ in range(100):
        port = rnd.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below the ephemeral range")


@pytest.fixture
def unused_port() -> int:
    """A loopback port with nothing listening on it (see `free_port`)."""
    return free_port()


@pytest.fixture
def daemons(transport: Transport):
    """Start daemons (tests.integration.daemons) for one test, over the test's transport;
    all are stopped after it."""
    started = []

    def start(factory, *args, **kwargs):
        d = factory(*args, **kwargs)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()
