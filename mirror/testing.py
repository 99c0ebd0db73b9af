"""Test doubles for code built on this package (as `treq.testing` is for treq's users).

`MemoryNetwork` stands in for TCP: its `~MemoryNetwork.endpoint` method is an endpoint
factory (`mirror.mirror_server.connections.EndpointFactory`) whose endpoints join the client
protocol to a server protocol in memory with `twisted.test.iosim`, so that the code under
test makes its connections exactly as it does over TCP, on a fake clock.
"""

from __future__ import annotations

import errno
import itertools
import os
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.test import iosim
from zope.interface import implementer

__all__ = ["MemoryEndpoint", "MemoryNetwork"]


class _Refusing(Protocol):
    """What a client meets when the server's factory builds no protocol: TCP accepts the
    connection, then the server closes it at once."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """An endpoint to ``(host, port)`` on a `MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, host: str, port: int) -> None:
        self.network = network
        self.host = host
        self.port = port

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return self.network._connect(self.host, self.port, protocolFactory)


class MemoryNetwork:
    """Servers listening at ``(host, port)`` addresses, and client endpoints to them.

    As over TCP, a connection attempt ends later, never within ``connect``: attempts made
    meanwhile complete (or fail) at the next `pump`, which also moves the bytes written on
    every open connection. An address nobody listens on refuses connections
    (`twisted.internet.error.ConnectionRefusedError`, with its errno as a real refusal has);
    `fail` makes an address fail attempts with any other error (a timeout, a DNS failure).
    """

    def __init__(self, clock: Clock | None = None) -> None:
        #: Pumping runs its calls that are due; `run_until` advances it.
        self.clock = clock if clock is not None else Clock()
        #: Every connection attempt, in order, as ``(host, port)``.
        self.attempts: list[tuple[str, int]] = []
        self.pumps: list[iosim.IOPump] = []
        self._servers: dict[tuple[str, int], IProtocolFactory] = {}
        self._failures: dict[tuple[str, int], Exception] = {}
        self._connecting: list[tuple[str, int, IProtocolFactory, Deferred[IProtocol]]] = []
        self._client_ports = itertools.count(40001)

    # -- the servers -----------------------------------------------------------------------

    def listen(self, host: str, port: int, factory: IProtocolFactory) -> None:
        """Serve ``factory``'s protocols at ``(host, port)`` from now on."""
        self._failures.pop((host, port), None)
        self._servers[(host, port)] = factory

    def stop_listening(self, host: str, port: int) -> None:
        """Refuse new connections to ``(host, port)``; open ones stay (as with TCP)."""
        self._servers.pop((host, port), None)

    def crash(self, host: str, port: int) -> None:
        """The server at ``(host, port)`` dies: it refuses new connections, and its open ones
        are closed (their protocols hear of it at the next `pump`)."""
        self.stop_listening(host, port)
        address = IPv4Address("TCP", host, port)
        for pump in self.pumps:
            if pump.serverIO.hostAddress == address:
                pump.serverIO.loseConnection()

    def fail(self, host: str, port: int, reason: Exception) -> None:
        """Make connection attempts to ``(host, port)`` fail with ``reason``."""
        self._servers.pop((host, port), None)
        self._failures[(host, port)] = reason

    def endpoint(self, host: str, port: int) -> MemoryEndpoint:
        """An endpoint to ``(host, port)``: this method is an endpoint factory."""
        return MemoryEndpoint(self, host, port)

    # -- moving things ---------------------------------------------------------------------

    def _connect(self, host: str, port: int,
                 factory: IProtocolFactory) -> Deferred[IProtocol]:
        self.attempts.append((host, port))

        def cancel(d: Deferred[IProtocol]) -> None:
            self._connecting = [c for c in self._connecting if c[3] is not d]
            d.errback(error.ConnectingCancelledError(IPv4Address("TCP", host, port)))

        d: Deferred[IProtocol] = Deferred(cancel)
        self._connecting.append((host, port, factory, d))
        return d

    def _complete(self, host: str, port: int, factory: IProtocolFactory,
                  d: Deferred[IProtocol]) -> None:
        failure = self._failures.get((host, port))
        server_factory = self._servers.get((host, port))
        if failure is None and server_factory is None:
            failure = error.getConnectError(
                (errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED)))
        if failure is not None:
            d.errback(failure)
            return
        assert server_factory is not None
        server_address = IPv4Address("TCP", host, port)
        client_address = IPv4Address("TCP", "127.0.0.1", next(self._client_ports))
        client = factory.buildProtocol(server_address)
        if client is None:
            d.errback(error.NoProtocol())
            return
        server = server_factory.buildProtocol(client_address) or _Refusing()
        server_io = iosim.FakeTransport(server, isServer=True, hostAddress=server_address,
                                        peerAddress=client_address)
        client_io = iosim.FakeTransport(client, isServer=False, hostAddress=client_address,
                                        peerAddress=server_address)
        self.pumps.append(iosim.connect(server, server_io, client, client_io,
                                        greet=False, clock=self.clock))
        d.callback(client)

    def pump(self) -> bool:
        """Complete pending connection attempts and move the bytes written on every open
        connection (one round); whether anything happened."""
        connecting, self._connecting = self._connecting, []
        for attempt in connecting:
            self._complete(*attempt)
        moved = [pump.pump() for pump in list(self.pumps)]
        # Connections closed on both sides are forgotten: the list stays bounded.
        self.pumps = [p for p in self.pumps
                      if not (p.clientIO.disconnected and p.serverIO.disconnected)]
        return bool(connecting) or any(moved)

    def flush(self, max_rounds: int = 10000) -> None:
        """`pump` until nothing moves (time does not pass)."""
        for _ in range(max_rounds):
            if not self.pump():
                return
        raise AssertionError("the network never went quiet")

    def run_until(self, done: Deferred[Any], max_rounds: int = 20000,
                  step: float = 0.1) -> None:
        """`pump` until ``done`` fires; let ``step`` seconds of fake time pass only when
        nothing moves."""
        for _ in range(max_rounds):
            if done.called:
                return
            if not self.pump():
                self.clock.advance(step)
        raise AssertionError(f"not done after {max_rounds} rounds")
