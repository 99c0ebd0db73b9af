"""Real daemons on loopback, in this process (pytest-twisted runs the reactor)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

from mirror.content_server.factory import ContentServerFactory, open_root
from mirror.content_server.protocol import ContentSettings
from mirror.initiator.client import JobResult, submit_job
from mirror.mirror_server.control import ControlFactory
from mirror.mirror_server.service import MirrorService, MirrorSettings
from mirror.threads import DiskThreads
from mirror.wire.control import SourceRequest

# A fixture for every test module here (one imported by a test module shadows itself).
from tests.integration.hostile_server import start_hostile_server  # noqa: F401


@pytest.fixture
def start_content_server() -> Any:
    """``start(root, **settings) -> (port, factory)``: a content server on 127.0.0.1."""
    started: list[tuple[Any, DiskThreads, int]] = []

    def start(root: str, **settings: Any) -> tuple[int, ContentServerFactory]:
        threads = DiskThreads(reactor, 4)
        threads.startService()
        root_fd = open_root(root)
        factory = ContentServerFactory(root_fd, threads, ContentSettings(**settings))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        started.append((port, threads, root_fd))
        return port.getHost().port, factory

    yield start
    for port, threads, root_fd in started:
        pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))
        pytest_twisted.blockon(threads.stopService())
        os.close(root_fd)


@pytest.fixture
def start_mirror_server() -> Any:
    """``start(mirror_dir, **settings) -> (port, service)``: a mirror server on 127.0.0.1."""
    started: list[tuple[Any, MirrorService]] = []

    def start(mirror_dir: str, **settings: Any) -> tuple[int, MirrorService]:
        os.makedirs(mirror_dir, exist_ok=True)
        service = MirrorService(mirror_dir, MirrorSettings(**settings), reactor)
        service.startService()
        port = reactor.listenTCP(0, ControlFactory(service), interface="127.0.0.1")
        started.append((port, service))
        return port.getHost().port, service

    yield start
    for port, service in started:
        pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))
        pytest_twisted.blockon(defer.maybeDeferred(service.stopService))


def run_job(mirror_port: int, sources: list[SourceRequest],
            on_event: Callable[[Any], None] = lambda e: None,
            timeout: float = 60.0) -> defer.Deferred[JobResult]:
    """Submit a job as mirror-init does and fire with its result."""
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", mirror_port)
    return submit_job(reactor, endpoint, sources, on_event, timeout=timeout)


def source(port: int, path: str = "", delay: float = 0.0) -> SourceRequest:
    return SourceRequest("127.0.0.1", port, path, delay)


@pytest.fixture
def unused_port() -> int:
    """A loopback port with nothing listening on it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
