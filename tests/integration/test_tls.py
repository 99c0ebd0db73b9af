"""TLS and key identities on real loopback sockets (issue 11, part 1).

A peer without a client certificate, with a self-signed certificate of a familiar name but
an unknown key, with a revoked key, or outside --hosts-allow is refused before any request
is read (the daemon's protocol is never built), with one generic message; failures are
rate-limited per address. A server presenting the wrong key (a TLS proxy with its own
certificate) is refused by the mirror before anything is sent. The installed programs run a
pinned job end to end.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from twisted.internet import defer, reactor
from twisted.protocols import portforward
from twisted.protocols.tls import TLSMemoryBIOFactory

from mirror.content_server.factory import ContentServerFactory, open_root
from mirror.mirror_server.connections import QuietFactory
from mirror.mirror_server.content_client import ContentClientProtocol, TransferError
from mirror.mirror_server.service import MirrorService, MirrorSettings
from mirror.security.authorized_keys import authorized_keys
from mirror.security.hosts_access import HostsAccess, parse_networks
from mirror.security.identity import Identity, keygen, make_certificate, read_identity
from mirror.security.known_hosts import known_hosts
from mirror.security.options import Security, secure_factory
from mirror.security.tls import REFUSAL, ClientPolicy, server_creator
from mirror.threads import DiskThreads
from tests.integration import daemons as programs
from tests.integration.conftest import source
from tests.integration.waiting import wait_for


def write(path: Path, text: str) -> None:
    """Replace ``path`` as an editor does (a new inode), so that a reload sees it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def impostor(directory: Path, name: str) -> Identity:
    """An identity with a familiar name (the same common name) but a key of its own."""
    directory.mkdir(mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    (directory / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    os.chmod(directory / "key.pem", 0o600)
    cert = make_certificate(key, name, 30)
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return read_identity(str(directory))


class Rig:
    """A secured content server (in this process) and what a client needs to reach it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.root = tmp_path / "export"
        (self.root / "pub").mkdir(parents=True)
        (self.root / "pub" / "a.txt").write_text("hello")
        self.server_id = keygen(str(tmp_path / "cs"), "cs")
        self.client_id = keygen(str(tmp_path / "mirror1"), "mirror1")
        self.keys = tmp_path / "authorized_keys"
        write(self.keys, f"{self.client_id.fingerprint} mirror1\n")
        self.pins = tmp_path / "known_hosts"
        self.threads = DiskThreads(reactor, 2)
        self.threads.startService()
        self.root_fd = open_root(str(self.root))
        self.factory = ContentServerFactory(self.root_fd, self.threads)
        self.built = 0  # the content server's own protocols (admitted peers only)
        self.protocols: list[Any] = []
        build = self.factory.buildProtocol

        def counting(addr: Any) -> Any:
            self.built += 1
            proto = build(addr)
            self.protocols.append(proto)
            return proto

        self.factory.buildProtocol = counting
        self.ports: list[Any] = []

    def listen(self, allow: tuple[str, ...] = (), recheck: float = 5.0) -> int:
        keys = authorized_keys(str(self.keys))
        keys.load()
        security = Security(identity=self.server_id, keys=keys,
                            access=HostsAccess(parse_networks(allow), []))
        outer: Any = secure_factory(security, self.factory, self.threads, reactor)
        outer.inner.wrappedFactory.recheck_interval = recheck  # AcceptFilter, TLS, ...
        self.outer = outer
        port: Any = reactor.listenTCP(0, outer, interface="127.0.0.1")
        self.ports.append(port)
        self.port: int = port.getHost().port
        write(self.pins, f"127.0.0.1:{self.port} {self.server_id.fingerprint}\n")
        return self.port

    def policy(self, identity: Identity | None) -> ClientPolicy:
        pins = known_hosts(str(self.pins))
        pins.load()
        return ClientPolicy(reactor, identity.paths if identity else None, pins, self.threads)

    async def list_root(self, identity: Identity | None, port: int | None = None) -> Any:
        proto = ContentClientProtocol(reactor, "cs")
        endpoint = self.policy(identity).endpoint("127.0.0.1", port or self.port)
        await endpoint.connect(QuietFactory(proto))
        entries: list[Any] = []
        try:
            await proto.list("", entries.extend)
        finally:
            proto.close()
        return [e.name for e in entries]

    def stop(self) -> None:
        for port in self.ports:
            pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))
        pytest_twisted.blockon(self.threads.stopService())
        os.close(self.root_fd)


@pytest.fixture
def rig(tmp_path: Path) -> Any:
    r = Rig(tmp_path)
    yield r
    r.stop()


@pytest_twisted.ensureDeferred
async def test_pinned_and_authorized(rig: Rig) -> None:
    rig.listen()
    assert await rig.list_root(rig.client_id) == [b"pub", b"pub/a.txt"]
    assert rig.built == 1
    # The content server's protocol knows who its peer is.
    assert rig.protocols[0].peer_identity.fingerprint == rig.client_id.fingerprint


@pytest.mark.parametrize("who", ["no certificate", "familiar name, unknown key", "revoked"])
@pytest_twisted.ensureDeferred
async def test_refused_before_any_request(rig: Rig, who: str) -> None:
    rig.listen()
    identity: Identity | None = rig.client_id
    if who == "no certificate":
        identity = None
    elif who == "familiar name, unknown key":
        identity = impostor(rig.tmp / "impostor", "mirror1")
    else:
        assert await rig.list_root(rig.client_id)  # let in, then removed from the list
        write(rig.keys, "# mirror1 revoked\n")
        rig.built = 0
    with pytest.raises(TransferError) as refused:
        await rig.list_root(identity)
    assert str(refused.value) == f"LIST .: {REFUSAL}"
    assert rig.built == 0  # the content server's protocol never existed: nothing was read
    if who != "revoked":
        assert rig.factory.serving.requests == 0


@pytest_twisted.ensureDeferred
async def test_revoking_a_key_drops_its_open_connections(rig: Rig) -> None:
    other = keygen(str(rig.tmp / "mirror2"), "mirror2")
    write(rig.keys, f"{rig.client_id.fingerprint}\n{other.fingerprint}\n")
    rig.listen(recheck=0.05)
    conns = []
    for identity in (rig.client_id, other):
        proto = ContentClientProtocol(reactor, "cs")
        endpoint = rig.policy(identity).endpoint("127.0.0.1", rig.port)
        await endpoint.connect(QuietFactory(proto))
        await proto.list("pub", lambda entries: None)
        conns.append(proto)
    write(rig.keys, f"{other.fingerprint}\n")  # mirror1 revoked, no new connection made
    await wait_for(lambda: conns[0].lost_reason is not None, 10, "the revoked peer dropped")
    assert conns[1].lost_reason is None
    await conns[1].list("pub", lambda entries: None)  # the other one goes on
    conns[1].close()


@pytest_twisted.ensureDeferred
async def test_failures_are_rate_limited_per_address(rig: Rig) -> None:
    rig.listen()
    limiter = rig.outer.failures
    limiter.max_failures = 2
    for _ in range(2):
        with pytest.raises(TransferError, match=REFUSAL):
            await rig.list_root(None)
    # Now closed at accept, before any TLS: even the right key waits for the window.
    with pytest.raises(ConnectionError, match="TLS handshake failed"):
        await rig.list_root(rig.client_id)
    assert rig.outer.refused == 1
    assert rig.built == 0
    limiter.window = 0  # the failures age out
    assert await rig.list_root(rig.client_id)


@pytest_twisted.ensureDeferred
async def test_outside_hosts_allow(rig: Rig) -> None:
    rig.listen(allow=("10.0.0.0/8",))
    with pytest.raises(ConnectionError, match="TLS handshake failed"):
        await rig.list_root(rig.client_id)
    assert rig.outer.refused == 1
    assert rig.built == 0


@pytest_twisted.ensureDeferred
async def test_a_mirror_refuses_a_server_with_the_wrong_key(rig: Rig, tmp_path: Path,
                                                            start_content_server: Any) -> None:
    """A TLS proxy on loopback with its own certificate, in front of a real content server:
    the mirror server, which pins the content server's key, sends it nothing."""
    backend_port, backend = start_content_server(str(rig.root))
    forwarded: list[bytes] = []

    class Spy(portforward.ProxyServer):
        def dataReceived(self, data: bytes) -> None:
            forwarded.append(data)
            super().dataReceived(data)

    proxy_factory = portforward.ProxyFactory("127.0.0.1", backend_port)
    proxy_factory.protocol = Spy
    proxy_id = keygen(str(tmp_path / "proxy"), "cs")  # even the same name
    shown: list[Any] = []  # client certificates the proxy received

    def record(conn: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
        shown.append(cert)
        return True

    creator = server_creator(proxy_id.paths)
    creator.ctx.set_verify(SSL.VERIFY_PEER, record)  # type: ignore[attr-defined]
    tls: Any = TLSMemoryBIOFactory(creator, False, proxy_factory)
    port: Any = reactor.listenTCP(0, tls, interface="127.0.0.1")
    rig.ports.append(port)
    proxy_port = port.getHost().port
    write(rig.pins, f"127.0.0.1:{proxy_port} {rig.server_id.fingerprint}\n")  # the real key
    (tmp_path / "mirror").mkdir()
    service = MirrorService(str(tmp_path / "mirror"), MirrorSettings(fsync=False), reactor)
    service.endpoints = rig.policy(rig.client_id).endpoint
    service.startService()
    try:
        job_events: list[Any] = []
        job = service.submit([source(proxy_port, "pub")], _Observer(job_events))
        await wait_for(lambda: job_events and job_events[-1] == "done", 15, "the job")
    finally:
        await defer.maybeDeferred(service.stopService)
    assert not job.ok
    errors = " ".join(e for e in job_events if isinstance(e, str) and e != "done")
    assert f"presented key {proxy_id.fingerprint}, which matches no pin" in errors
    assert forwarded == []  # nothing reached the proxy in clear...
    assert shown == []  # the handshake stopped at the server's key: not even our certificate
    assert backend.serving.requests == 0  # ... so the content server behind it got nothing


class _Observer:
    """A `JobObserver` that keeps the errors and the end."""

    def __init__(self, events: list[Any]) -> None:
        self.events = events

    def job_started(self, job: Any) -> None:
        pass

    def progress(self, job: Any) -> None:
        pass

    def source_error(self, index: int, path: str | None, message: str) -> None:
        self.events.append(message)

    def source_done(self, run: Any) -> None:
        pass

    def link_skipped(self, index: int, path: str | None, message: str) -> None:
        self.events.append("link skipped")

    def job_done(self, job: Any) -> None:
        self.events.append("done")


def admin(*args: str) -> str:
    run = subprocess.run([str(programs.BIN / "mirror-admin"), *args], capture_output=True,
                         text=True, timeout=30, check=True)
    return run.stdout.split()[0]


def test_pinned_job_end_to_end(tmp_path: Path, daemons: Any) -> None:
    """mirror-init -> mirror-server -> content-server, every hop TLS 1.3 with pinned keys,
    from the installed programs; then mirror-init refuses a mirror server it has no pin
    for the key of."""
    root = tmp_path / "export"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f.bin").write_bytes(os.urandom(300_000))
    (root / "small.txt").write_text("small")
    fp = {name: admin("keygen", str(tmp_path / name), "--name", name)
          for name in ("cs", "ms", "init")}
    write(tmp_path / "cs_keys", f"{fp['ms']}\n")
    write(tmp_path / "ms_keys", f"{fp['init']}\n")
    cs = daemons(programs.content_server, root, tmp_path, "--identity", str(tmp_path / "cs"),
                 "--authorized-keys", str(tmp_path / "cs_keys"))
    write(tmp_path / "ms_known", f"127.0.0.1:{cs.port} {fp['cs']}\n")
    ms = daemons(programs.mirror_server, tmp_path / "mirror", tmp_path,
                 "--identity", str(tmp_path / "ms"), "--authorized-keys",
                 str(tmp_path / "ms_keys"), "--known-hosts", str(tmp_path / "ms_known"))
    write(tmp_path / "init_known", f"127.0.0.1:{ms.port} {fp['ms']}\n")
    run = programs.mirror_init("-n", "127.0.0.1", "-p", str(ms.port), "-s",
                               f"127.0.0.1:{cs.port}:.", "--identity", str(tmp_path / "init"),
                               "--known-hosts", str(tmp_path / "init_known"))
    assert run.returncode == 0, run.stdout + run.stderr
    mirrored = tmp_path / "mirror" / f"127.0.0.1_{cs.port}"
    assert (mirrored / "d" / "f.bin").read_bytes() == (root / "d" / "f.bin").read_bytes()
    assert (mirrored / "small.txt").read_text() == "small"
    assert "secured: TLS 1.3" in cs.log_text()
    # A key that is not the mirror server's: nothing is sent.
    write(tmp_path / "init_known", f"127.0.0.1:{ms.port} {fp['cs']}\n")
    bad = programs.mirror_init("-n", "127.0.0.1", "-p", str(ms.port), "-s",
                               f"127.0.0.1:{cs.port}:.", "--identity", str(tmp_path / "init"),
                               "--known-hosts", str(tmp_path / "init_known"))
    assert bad.returncode == 1
    assert f"presented key {fp['ms']}, which matches no pin" in bad.stderr
    assert "job 2" not in ms.log_text()
    # Without a client certificate: the one generic refusal.
    write(tmp_path / "init_known", f"127.0.0.1:{ms.port} {fp['ms']}\n")
    anonymous = programs.mirror_init("-n", "127.0.0.1", "-p", str(ms.port), "-s",
                                     f"127.0.0.1:{cs.port}:.", "--known-hosts",
                                     str(tmp_path / "init_known"))
    assert anonymous.returncode == 1
    assert f"refused the job: {REFUSAL}" in anonymous.stderr


def test_clear_text_off_the_loopback_needs_insecure(tmp_path: Path) -> None:
    run = subprocess.run([programs.TWISTD, "-n", "--pidfile=", "content-server", "--root",
                          str(tmp_path), "--listen", "tcp:0:interface=0.0.0.0"],
                         capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1
    assert "not a loopback address" in run.stderr and "--insecure" in run.stderr


@pytest_twisted.ensureDeferred
async def test_hosts_deny_in_open_mode(rig: Rig) -> None:
    """--hosts-deny applies without TLS too: the connection is closed at accept."""
    security = Security(access=HostsAccess([], parse_networks(["127.0.0.0/8"])))
    outer: Any = secure_factory(security, rig.factory, rig.threads, reactor)
    port: Any = reactor.listenTCP(0, outer, interface="127.0.0.1")
    rig.ports.append(port)
    proto = ContentClientProtocol(reactor, "cs")
    policy = ClientPolicy(reactor, None, None, rig.threads)  # plain: loopback, no pin
    await policy.endpoint("127.0.0.1", port.getHost().port).connect(QuietFactory(proto))
    with pytest.raises(TransferError):
        await proto.list("", lambda entries: None)
    assert outer.refused == 1
    assert rig.built == 0


@pytest_twisted.ensureDeferred
async def test_no_plain_text_off_the_loopback(rig: Rig) -> None:
    """Without a pin, a client daemon refuses to talk plain TCP off the loopback (it does
    not even connect), unless --insecure."""
    policy = ClientPolicy(reactor, rig.client_id.paths, None, rig.threads)
    with pytest.raises(ConnectionError, match=r"no pin for 192\.0\.2\.1:9000 in --known-hosts"):
        await policy.endpoint("192.0.2.1", 9000).connect(QuietFactory(ContentClientProtocol()))
