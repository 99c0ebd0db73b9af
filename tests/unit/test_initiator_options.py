"""mirror-init's --bwlimit and --connect (mirror/initiator/endpoint.py)."""

from __future__ import annotations

import io
import os
import socket
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from mirror.initiator import cli
from mirror.initiator.client import CONNECT_TIMEOUT, MirrorServerUnreachable
from mirror.initiator.endpoint import (
    ClientEndpoint,
    EndpointError,
    connect_unix,
    parse_client_endpoint,
)
from tests.unit.test_initiator import ScriptedServer, lines, success_events


def parse_error(argv: list[str]) -> str:
    err = io.StringIO()
    try:
        cli.parse_arguments(argv, err)
    except SystemExit as e:
        assert e.code == 2, e.code
        return err.getvalue()
    raise AssertionError(f"{argv} accepted")


class BwLimitOption(SynchronousTestCase):
    def test_values(self) -> None:
        for text, rate in (("500K", 512000), ("8m", 8 << 20), ("1000", 1000), ("0", 0)):
            options = cli.parse_arguments(["--bwlimit", text, "-s", "127.0.0.1:1:."])
            self.assertEqual(options.bwlimit, rate)
        self.assertEqual(cli.parse_arguments(["-s", "127.0.0.1:1:."]).bwlimit, 0)

    def test_bad_values(self) -> None:
        for text in ("1.5M", "fast", "-1", "5T"):
            message = parse_error(["--bwlimit", text, "-s", "127.0.0.1:1:."])
            self.assertIn("bad --bwlimit", message)
            self.assertIn("K, M or G suffix", message)
            self.assertEqual(message.count("\n"), 1)

    def run_job(self, argv: list[str]) -> list[bytes]:
        server = ScriptedServer(lines(*success_events()))
        options = cli.parse_arguments([*argv, "-s", "127.0.0.1:1:a,[::1]:2:."])
        status = cli.run(options, io.StringIO(), io.StringIO(), server.opener)
        self.assertEqual(status, 0)
        return server.received()

    def test_sent_before_go(self) -> None:
        self.assertEqual(self.run_job(["--bwlimit", "2M"]),
                         [b"SOURCE 127.0.0.1 1 a 0.0", b"SOURCE ::1 2 . 0.0", b"BWLIMIT 2097152",
                          b"LINKS safe", b"GO"])

    def test_none_sends_nothing(self) -> None:
        for argv in ([], ["--bwlimit", "0"]):
            self.assertNotIn(b"BWLIMIT", b"\n".join(self.run_job(argv)))


class ConnectParsing(SynchronousTestCase):
    def test_forms(self) -> None:
        for text, endpoint in [
            ("unix:/run/mirror.sock", ClientEndpoint(path="/run/mirror.sock")),
            ("unix:path=/run/m.sock", ClientEndpoint(path="/run/m.sock")),
            ("unix:rel/a:b", ClientEndpoint(path="rel/a:b")),
            ("tcp:mirror.example:9001", ClientEndpoint(host="mirror.example", port=9001)),
            ("tcp:127.0.0.1:1", ClientEndpoint(host="127.0.0.1", port=1)),
            ("tcp:[::1]:9001", ClientEndpoint(host="::1", port=9001)),
            ("tcp:::1:9001", ClientEndpoint(host="::1", port=9001)),
            ("tcp:\\:\\:1:9001", ClientEndpoint(host="::1", port=9001)),
        ]:
            with self.subTest(text=text):
                self.assertEqual(parse_client_endpoint(text), endpoint)

    def test_errors(self) -> None:
        for text, why in [
            ("", "expected unix:PATH or tcp:HOST:PORT"),
            ("/run/mirror.sock", "expected unix:PATH or tcp:HOST:PORT"),
            ("ssl:h:1", "expected unix:PATH or tcp:HOST:PORT"),
            ("unix:", "socket path is empty"),
            ("unix:a\0b", "NUL"),
            ("tcp:host", "expected tcp:HOST:PORT"),
            ("tcp::9001", "expected tcp:HOST:PORT"),
            ("tcp:h:0", "port must be 1 to 65535"),
            ("tcp:h:99999", "port must be 1 to 65535"),
            ("tcp:h:x", "port must be 1 to 65535"),
            ("tcp:a:b:9001", "'a:b' is not an IPv6 address"),
            ("tcp:bad host:1", "host"),
        ]:
            with self.subTest(text=text), self.assertRaises(EndpointError) as caught:
                parse_client_endpoint(text)
            self.assertIn(why, str(caught.exception))

    def test_command_line(self) -> None:
        options = cli.parse_arguments(["--connect", "tcp:[::1]:7000", "-s", "127.0.0.1:1:."])
        self.assertEqual((options.host, options.port, options.unix_socket), ("::1", 7000, None))
        options = cli.parse_arguments(["--connect", "unix:/run/m.sock", "-s", "127.0.0.1:1:."])
        self.assertEqual(options.unix_socket, "/run/m.sock")
        for argv in (["-n", "h"], ["-p", "1"], ["-m", "h"]):
            message = parse_error([*argv, "--connect", "unix:/x", "-s", "127.0.0.1:1:."])
            self.assertIn("without -n/-p", message)
        message = parse_error(["--connect", "udp:h:1", "-s", "127.0.0.1:1:."])
        self.assertIn("bad --connect 'udp:h:1': expected unix:PATH or tcp:HOST:PORT", message)

    def test_unix_socket_is_used(self) -> None:
        server = ScriptedServer(lines(*success_events()))
        used: list[tuple[str, float | None]] = []

        def fake_connect_unix(path: str, timeout: float | None) -> socket.socket:
            used.append((path, timeout))
            return server.client

        self.patch(cli, "connect_unix", fake_connect_unix)
        options = cli.parse_arguments(["--connect", "unix:/run/m.sock", "-s",
                                       "127.0.0.1:1:a,[::1]:2:."])
        self.assertEqual(cli.run(options, io.StringIO(), io.StringIO()), 0)
        self.assertEqual(used, [("/run/m.sock", CONNECT_TIMEOUT)])
        self.assertEqual(server.received()[-1], b"GO")


class ConnectUnix(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, self.dir)
        self.path = os.path.join(self.dir, "m.sock")

    def test_connects(self) -> None:
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(self.path)
            self.addCleanup(os.unlink, self.path)
            listener.listen(1)
            with connect_unix(self.path, 5.0) as sock:
                peer, _ = listener.accept()
                with peer:
                    sock.sendall(b"hi")
                    self.assertEqual(peer.recv(2), b"hi")

    def test_missing_socket_names_the_path(self) -> None:
        with self.assertRaises(MirrorServerUnreachable) as caught:
            connect_unix(self.path, 5.0)
        self.assertIn(f"cannot reach the mirror server at {self.path}: No such file",
                      str(caught.exception))
