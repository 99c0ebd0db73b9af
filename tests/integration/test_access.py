"""Users, groups and grants on real loopback sockets over TLS (issue 11, part 2).

A user in a group with a read grant on ``pub`` lists and fetches ``pub`` and sees nothing
of ``private``; ``anyone`` on ``pub`` works without a client certificate; a revoked grant
applies from the next request, a removed user's connections are dropped; the installed
programs refuse a job whose submitter has no ``mirror`` grant, and run one that has.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads

from mirror.admin import who_cli
from mirror.content_server.access import ReadAccess
from mirror.content_server.factory import ContentServerFactory, open_root
from mirror.mirror_server.connections import QuietFactory
from mirror.mirror_server.content_client import ContentClientProtocol, TransferError
from mirror.security.accounts import AccountsStore, AccountsWatch
from mirror.security.audit import AuditLog
from mirror.security.identity import Identity, keygen
from mirror.security.known_hosts import known_hosts
from mirror.security.options import AccessControl, Security, secure_factory
from mirror.security.presence import Presence
from mirror.security.tls import REFUSAL, ClientPolicy
from mirror.threads import DiskThreads
from mirror.wire import frames
from tests.integration import daemons as programs
from tests.integration.test_tls import write
from tests.integration.waiting import wait_for


class _Sink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def head(self, header: Any, flow: Any) -> None:
        pass

    def data(self, piece: memoryview) -> None:
        self.chunks.append(bytes(piece))


class Rig:
    """A content server with --accounts in this process, secured, and its clients."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        root = tmp / "export"
        for name in ("pub/a.txt", "pub/sub/b.txt", "private/secret.txt", "top.txt"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(name)
        self.server_id = keygen(str(tmp / "cs"), "cs")
        self.alice = keygen(str(tmp / "alice"), "alice")
        self.store = AccountsStore(str(tmp / "accounts.sqlite"))
        self.store.add_user("alice", self.alice.fingerprint)
        self.store.add_group("staff")
        self.store.add_member("staff", "alice")
        self.store.grant("@staff", "read", "pub")
        self.threads = DiskThreads(reactor, 2)
        self.threads.startService()
        self.root_fd = open_root(str(root))
        self.factory = ContentServerFactory(self.root_fd, self.threads)
        self.audit_path = tmp / "audit.log"
        daemon_store = AccountsStore(self.store.path, create=False)
        self.watch = AccountsWatch(daemon_store, self.threads)
        self.audit = AuditLog(str(self.audit_path), self.threads)
        access = AccessControl(self.watch, self.audit, Presence("content-server"))
        self.factory.access = ReadAccess(self.watch, self.audit, access.presence)
        outer: Any = secure_factory(Security(identity=self.server_id), self.factory,
                                    self.threads, reactor, access)
        outer.inner.wrappedFactory.recheck_interval = 0.05
        self.port: Any = reactor.listenTCP(0, outer, interface="127.0.0.1")
        self.number: int = self.port.getHost().port  # type: ignore[attr-defined]
        self.pins = tmp / "known_hosts"
        write(self.pins, f"127.0.0.1:{self.number} {self.server_id.fingerprint}\n")
        self.clients: list[ContentClientProtocol] = []

    async def connect(self, identity: Identity | None) -> ContentClientProtocol:
        pins = known_hosts(str(self.pins))
        pins.load()
        policy = ClientPolicy(reactor, identity.paths if identity else None, pins, self.threads)
        proto = ContentClientProtocol(reactor, "cs")
        await policy.endpoint("127.0.0.1", self.number).connect(QuietFactory(proto))
        self.clients.append(proto)
        return proto

    @staticmethod
    async def names(proto: ContentClientProtocol, path: str = "") -> list[str]:
        entries: list[Any] = []
        await proto.list(path, entries.extend)
        return [e.name.decode() for e in entries]

    @staticmethod
    async def fetch(proto: ContentClientProtocol, path: str) -> bytes:
        sink = _Sink()
        await proto.fetch(path, sink)
        return b"".join(sink.chunks)

    def stop(self) -> None:
        for proto in self.clients:
            if proto.lost_reason is None:  # closing a lost one would arm an abort timer
                proto.close()
        pytest_twisted.blockon(defer.maybeDeferred(self.port.stopListening))
        pytest_twisted.blockon(self.threads.stopService())
        os.close(self.root_fd)
        self.store.close()
        self.watch.store.close()
        self.audit.close()


@pytest.fixture
def rig(tmp_path: Path) -> Any:
    r = Rig(tmp_path)
    yield r
    r.stop()


@pytest_twisted.ensureDeferred
async def test_group_grant_reads_pub_and_nothing_else(rig: Rig) -> None:
    alice = await rig.connect(rig.alice)
    assert await rig.names(alice) == ["pub", "pub/a.txt", "pub/sub", "pub/sub/b.txt"]
    assert await rig.fetch(alice, "pub/a.txt") == b"pub/a.txt"
    for path in ("private/secret.txt", "private/none.txt"):
        with pytest.raises(TransferError) as refused:
            await rig.fetch(alice, path)
        assert refused.value.code == frames.E_NOT_FOUND
        assert "no such file or directory" in str(refused.value)
    with pytest.raises(TransferError) as listing:
        await rig.names(alice, "private")
    assert listing.value.code == frames.E_NOT_FOUND
    await wait_for(lambda: rig.audit_path.read_text().count("\n") == 3, 5, "3 audit lines")
    assert f"refused user alice ({rig.alice.fingerprint}) from 127.0.0.1: FETCH " \
           "private/secret.txt: no read grant" in rig.audit_path.read_text()


@pytest_twisted.ensureDeferred
async def test_anyone_without_a_client_certificate(rig: Rig) -> None:
    with pytest.raises(TransferError, match=REFUSAL):  # no anyone grant: refused at once
        await rig.names(await rig.connect(None))
    await wait_for(lambda: rig.audit_path.exists() and "connection: no client certificate"
                   in rig.audit_path.read_text(), 5, "the refusal audited")
    rig.store.grant("anyone", "read", "pub")
    anonymous = await rig.connect(None)
    assert await rig.names(anonymous) == ["pub", "pub/a.txt", "pub/sub", "pub/sub/b.txt"]
    assert await rig.fetch(anonymous, "pub/sub/b.txt") == b"pub/sub/b.txt"
    with pytest.raises(TransferError):
        await rig.fetch(anonymous, "top.txt")


@pytest_twisted.ensureDeferred
async def test_revoking_a_grant_then_the_user(rig: Rig) -> None:
    alice = await rig.connect(rig.alice)
    assert await rig.fetch(alice, "pub/a.txt") == b"pub/a.txt"
    rig.store.revoke("@staff", "read", "pub")
    with pytest.raises(TransferError) as refused:  # the next request, same connection
        await rig.fetch(alice, "pub/a.txt")
    assert refused.value.code == frames.E_NOT_FOUND
    with pytest.raises(TransferError) as listing:  # nothing to read: not even the root
        await rig.names(alice)
    assert listing.value.code == frames.E_NOT_FOUND
    rig.store.remove_user("alice")
    await wait_for(lambda: alice.lost_reason is not None, 10, "the removed user dropped")
    with pytest.raises(TransferError, match=REFUSAL):
        await rig.names(await rig.connect(rig.alice))


def test_a_submitter_needs_the_mirror_right(tmp_path: Path, daemons: Any) -> None:
    """The installed programs: the mirror server may read everything on the content server,
    but fetches for a submitter only under that submitter's mirror grant."""
    root = tmp_path / "export"
    for name in ("pub/a.txt", "private/secret.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    # Set up in this process (mirror-admin's commands have unit tests): saves a second.
    fp = {name: keygen(str(tmp_path / name), name).fingerprint
          for name in ("cs", "ms", "alice", "mallory")}
    cs_db, ms_db = AccountsStore(str(tmp_path / "cs.sqlite")), AccountsStore(
        str(tmp_path / "ms.sqlite"))
    cs_db.add_user("ms", fp["ms"])
    cs_db.grant("ms", "read", ".")
    cs = daemons(programs.content_server, root, tmp_path, "--identity", str(tmp_path / "cs"),
                 "--accounts", cs_db.path)
    server = f"127.0.0.1:{cs.port}"
    ms_db.add_user("alice", fp["alice"])
    ms_db.add_user("mallory", fp["mallory"])
    ms_db.grant("alice", "mirror", "pub", server)
    cs_db.close()
    ms_db.close()
    write(tmp_path / "ms_known", f"{server} {fp['cs']}\n")
    audit = tmp_path / "ms-audit.log"
    ms = daemons(programs.mirror_server, tmp_path / "mirror", tmp_path,
                 "--identity", str(tmp_path / "ms"), "--accounts", ms_db.path,
                 "--known-hosts", str(tmp_path / "ms_known"), "--audit-log", str(audit))
    write(tmp_path / "init_known", f"127.0.0.1:{ms.port} {fp['ms']}\n")

    def submit(user: str, path: str) -> Any:
        return programs.mirror_init("-n", "127.0.0.1", "-p", str(ms.port), "-s",
                                    f"{server}:{path}", "--identity", str(tmp_path / user),
                                    "--known-hosts", str(tmp_path / "init_known"))

    refused = submit("mallory", "private")
    assert refused.returncode == 1
    assert f"not allowed to mirror {server}:private (no mirror grant)" in refused.stderr
    assert submit("alice", "private").returncode == 1  # her grant is on pub only
    ok = submit("alice", "pub")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    mirrored = tmp_path / "mirror" / f"127.0.0.1_{cs.port}"
    assert (mirrored / "pub" / "a.txt").read_text() == "pub/a.txt"
    assert not (mirrored / "private").exists()
    lines = audit.read_text().splitlines()
    assert len(lines) == 2
    assert f"refused user mallory ({fp['mallory']})" in lines[0]
    assert f"job {server}:private: no mirror grant" in lines[0]


@pytest_twisted.ensureDeferred
async def test_who_is_for_administrators(rig: Rig) -> None:
    """mirror-admin who's client (blocking, in a thread) against the secured server."""
    boss = keygen(str(rig.tmp / "boss"), "boss")
    rig.store.add_user("boss", boss.fingerprint)
    rig.store.add_group("admin")
    rig.store.add_member("admin", "boss")
    alice = await rig.connect(rig.alice)
    assert await rig.names(alice, "pub/sub") == ["pub/sub", "pub/sub/b.txt"]

    def ask(identity: Identity) -> Any:
        options = argparse.Namespace(identity=str(identity.paths.cert.rsplit("/", 1)[0]),
                                     known_hosts=str(rig.pins), timeout=10.0)
        return who_cli.ask("127.0.0.1", rig.number, options)

    answer = await threads.deferToThread(ask, boss)
    users = {c["user"]: c for c in answer["connections"]}
    assert set(users) == {"alice", "boss"}
    assert users["alice"]["fingerprint"] == rig.alice.fingerprint
    assert users["alice"]["address"] == "127.0.0.1"
    assert "request(s) in flight" in users["alice"]["activity"]
    with pytest.raises(who_cli.WhoError, match="the daemon refused: WHO: access denied"):
        await threads.deferToThread(ask, rig.alice)
    await wait_for(lambda: "WHO .: not an administrator" in rig.audit_path.read_text(), 5,
                   "the refusal audited")
