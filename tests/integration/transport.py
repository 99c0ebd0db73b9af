"""How the daemons of an integration test talk: plain TCP on loopback, or TLS 1.3 with node
identities (issue 11), as an operator sets them up with ``mirror-admin keygen``.

In TLS, every content server has the identity ``cs`` and accepts only the mirror server's
key; every mirror server has the identity ``ms``, accepts only the initiator's key (``init``)
and pins each content server's port; mirror-init shows ``init`` and pins the mirror server.
A secured daemon closes a connection that is not TLS with an authorized key, so a job that
succeeds in a "tls" test went over TLS on every hop.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Callable
from pathlib import Path

from mirror.initiator.client import connect
from mirror.initiator.secure import secure_opener
from mirror.security.identity import Identity, keygen
from mirror.security.known_hosts import known_hosts

Opener = Callable[[str, int, "float | None"], socket.socket]


class Identities:
    """The keys of a test session (EC P-256, made once: see the ``tls_identities`` fixture)
    and the authorized-keys files of the two daemons."""

    def __init__(self, directory: Path) -> None:
        self.cs = keygen(str(directory / "cs"), "cs")
        self.ms = keygen(str(directory / "ms"), "ms")
        self.init = keygen(str(directory / "init"), "init")
        self.cs_keys = directory / "cs_authorized_keys"  # the content servers let in ms
        self.cs_keys.write_text(f"{self.ms.fingerprint} ms\n")
        self.ms_keys = directory / "ms_authorized_keys"  # the mirror servers let in init
        self.ms_keys.write_text(f"{self.init.fingerprint} init\n")


class Transport:
    """Plain (no ``identities``), or TLS: the flags of each program, and the pins of the
    daemons started so far in ``known_hosts_file`` (one file per test, for the mirror
    servers and mirror-init alike; the daemons read it again when it changes)."""

    def __init__(self, name: str, identities: Identities | None = None,
                 known_hosts_file: Path | None = None) -> None:
        self.name = name
        self.ids = identities
        self.known_hosts = known_hosts_file
        if known_hosts_file is not None:
            known_hosts_file.write_text("")

    @property
    def tls(self) -> bool:
        return self.ids is not None

    def identity(self, plugin: str) -> Identity:
        """The identity of the daemon ``plugin`` (TLS only): a ValueError for any other
        than the two it knows, rather than such a daemon left in clear unnoticed."""
        assert self.ids is not None
        if plugin == "content-server":
            return self.ids.cs
        if plugin == "mirror-server":
            return self.ids.ms
        raise ValueError(f"no TLS set-up for twistd {plugin} in the tests")

    def daemon_args(self, plugin: str) -> list[str]:
        """The security flags of ``twistd PLUGIN``."""
        if self.ids is None:
            return []
        keys = self.ids.cs_keys if plugin == "content-server" else self.ids.ms_keys
        args = ["--identity", self.identity(plugin).paths.directory,
                "--authorized-keys", str(keys)]
        if plugin == "mirror-server":
            args += ["--known-hosts", str(self.known_hosts)]
        return args

    def init_args(self) -> list[str]:
        """mirror-init's: its identity and the pins."""
        if self.ids is None:
            return []
        return ["--identity", self.ids.init.paths.directory,
                "--known-hosts", str(self.known_hosts)]

    def pin(self, port: int, plugin: str) -> None:
        """Pin the daemon ``plugin`` that listens on 127.0.0.1:``port`` (TLS only)."""
        if self.ids is None or self.known_hosts is None:
            return
        with open(self.known_hosts, "a") as f:
            f.write(f"127.0.0.1:{port} {self.identity(plugin).fingerprint}\n")

    def opener(self) -> Opener:
        """How mirror-init's client opens its connections (`secure_opener` in TLS): for
        clients run in the test's own process."""
        if self.ids is None:
            return connect
        options = argparse.Namespace(
            pins=known_hosts(str(self.known_hosts)).load(),
            identity_paths=self.ids.init.paths, unix_socket=None, insecure=False)
        return secure_opener(options, connect)


PLAIN = Transport("plain")


def tls_transport(identities: Identities, directory: Path) -> Transport:
    """A TLS transport with a known-hosts file of its own in ``directory``."""
    os.makedirs(directory, exist_ok=True)
    return Transport("tls", identities, directory / "known_hosts")
