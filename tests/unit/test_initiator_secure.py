"""mirror-init's TLS (the standard library's ``ssl``): which connections get TLS, plain TCP
only to loopback, and a pinned server's key checked before anything is sent."""

from __future__ import annotations

import io
import os
import shutil
import socket
import ssl
import tempfile
import threading
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mirror.initiator.cli import parse_arguments
from mirror.initiator.client import ConnectionLostBeforeDone, MirrorServerUnreachable
from mirror.initiator.secure import ServerKeyMismatch, explain, secure_opener
from mirror.security.identity import Identity, keygen


class SecureOpenerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="test-initiator-secure-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.server = keygen(os.path.join(self.dir, "server"), "ms")
        self.opened: list[tuple[str, int]] = []

    def options(self, *args: str) -> Any:
        return parse_arguments([*args, "-s", "127.0.0.1:9000:."], stderr=io.StringIO())

    def plain(self, host: str, port: int, timeout: float | None) -> socket.socket:
        self.opened.append((host, port))
        a, b = socket.socketpair()
        self.addCleanup(b.close)
        return a

    def pins(self, identity: Identity, host: str = "mirror.example:9001") -> str:
        path = os.path.join(self.dir, "known_hosts")
        with open(path, "w") as f:
            f.write(f"{host} {identity.fingerprint}\n")
        return path

    def test_plain_only_to_loopback(self) -> None:
        options = self.options("-n", "mirror.example", "-p", "9001")
        with self.assertRaisesRegex(MirrorServerUnreachable, "no pin for mirror.example:9001"):
            secure_opener(options, self.plain)("mirror.example", 9001, 1.0)
        self.assertEqual(self.opened, [])  # not even connected
        for host in ("127.0.0.1", "localhost", "::1"):
            secure_opener(self.options("-n", host), self.plain)(host, 9001, 1.0).close()
        options = self.options("-n", "mirror.example", "--insecure")
        secure_opener(options, self.plain)("mirror.example", 9001, 1.0).close()
        self.assertFalse(options.tls_used)
        self.assertEqual(len(self.opened), 4)

    def serve_tls(self, identity: Identity
                  ) -> tuple[socket.socket, list[Any], threading.Thread]:
        """One end of a socket pair; a TLS server with ``identity`` on the other."""
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        seen: list[Any] = []
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(identity.paths.cert, identity.paths.key)

        def serve() -> None:
            try:
                with ctx.wrap_socket(b, server_side=True) as tls:
                    seen.append(tls.recv(100))
            except (OSError, ssl.SSLError) as e:
                seen.append(e)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 10)
        return a, seen, thread

    def test_pinned_server(self) -> None:
        options = self.options("-n", "mirror.example", "-p", "9001", "--known-hosts",
                               self.pins(self.server))
        end, seen, server = self.serve_tls(self.server)
        tls = secure_opener(options, lambda h, p, t: end)("mirror.example", 9001, 5.0)
        tls.sendall(b"GO\r\n")
        server.join(10)
        tls.close()
        self.assertTrue(options.tls_used)
        self.assertEqual(seen, [b"GO\r\n"])

    def test_wrong_key_sends_nothing(self) -> None:
        other = keygen(os.path.join(self.dir, "other"), "ms")  # the same name
        options = self.options("-n", "mirror.example", "-p", "9001", "--known-hosts",
                               self.pins(self.server))
        end, seen, server = self.serve_tls(other)
        with self.assertRaisesRegex(ServerKeyMismatch,
                                    f"presented key {other.fingerprint}, which matches no pin"):
            secure_opener(options, lambda h, p, t: end)("mirror.example", 9001, 5.0)
        server.join(10)
        self.assertEqual(len(seen), 1)
        # The end of the connection, or an error: no byte of the job.
        self.assertTrue(seen[0] == b"" or isinstance(seen[0], OSError), seen)

    def test_identity_and_pins_checked_with_the_arguments(self) -> None:
        """An unsafe key or a missing file is a usage error (one line, exit 2)."""
        os.chmod(self.server.paths.key, 0o644)
        for args, words in (
                (["--identity", self.server.paths.directory], "chmod 600"),
                (["--identity", os.path.join(self.dir, "none")], "mirror-admin keygen"),
                (["--known-hosts", os.path.join(self.dir, "none")], "--known-hosts: ")):
            err = io.StringIO()
            with self.assertRaises(SystemExit) as exit:
                parse_arguments([*args, "-s", "127.0.0.1:9000:."], stderr=err)
            self.assertEqual(exit.exception.code, 2)
            self.assertEqual(err.getvalue().count("\n"), 1)
            self.assertIn(words, err.getvalue())

    def test_hint_for_a_plain_connection_closed_at_once(self) -> None:
        options = self.options("-n", "127.0.0.1")
        secure_opener(options, self.plain)("127.0.0.1", 9001, 1.0).close()
        error = ConnectionLostBeforeDone("lost the connection")
        self.assertIn("pin its key in --known-hosts", explain(error, options))
        options.tls_used = True
        self.assertEqual(explain(error, options), "lost the connection")

