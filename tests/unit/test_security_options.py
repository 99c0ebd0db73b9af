"""The daemons' security flags: which mode they put a daemon in, and the errors that say
what to do (issue 11: open on loopback, TLS with --identity, --insecure for clear text off
the loopback)."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from contextlib import redirect_stderr
from typing import Any

from twisted.internet.protocol import ServerFactory
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import provider

from mirror.content_server import tap as content_tap
from mirror.mirror_server import tap as mirror_tap
from mirror.security.identity import keygen
from mirror.security.options import secure_factory
from mirror.testing import InlineThreads


class SecurityOptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="test-security-options-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.identity = keygen(os.path.join(self.dir, "id"), "cs")
        self.keys = os.path.join(self.dir, "keys")
        with open(self.keys, "w") as f:
            f.write(self.identity.fingerprint + "\n")

    def parse(self, *args: str, tap=content_tap) -> tuple[Any, str]:
        options = tap.Options()
        flag = "--root" if tap is content_tap else "--mirror-dir"
        err = io.StringIO()
        with redirect_stderr(err):
            try:
                options.parseOptions([flag, self.dir, *args])
            except SystemExit as e:
                self.assertEqual(e.code, 2)
                return None, err.getvalue()
        return options, err.getvalue()

    def test_open_mode_binds_a_bare_port_to_loopback(self) -> None:
        options, _ = self.parse("-p", "9000", "--listen", r"tcp:9001:interface=\:\:1")
        self.assertEqual(options["listen"], ["tcp:9000:interface=127.0.0.1",
                                             r"tcp:9001:interface=\:\:1"])
        self.assertFalse(options.security.secured)
        options, _ = self.parse()
        self.assertEqual(options["listen"], ["tcp:9000:interface=127.0.0.1"])

    def test_accounts(self) -> None:
        from mirror.security.accounts import AccountsStore

        db = os.path.join(self.dir, "accounts.sqlite")
        ident = os.path.join(self.dir, "id")
        options, err = self.parse("--accounts", db)
        self.assertIn("--accounts needs --identity DIR (TLS)", err)
        options, err = self.parse("--identity", ident, "--accounts", db)
        self.assertIn(f"--accounts: {db}: no such file", err)
        AccountsStore(db).close()
        for tap in (content_tap, mirror_tap):
            options, err = self.parse("--identity", ident, "--accounts", db, "--audit-log",
                                      os.path.join(self.dir, "audit"), tap=tap)
            self.assertTrue(options.security.secured)
            self.assertEqual(options.security.accounts.path, db)
            options.security.accounts.close()

    def test_clear_text_off_the_loopback_needs_insecure(self) -> None:
        for tap in (content_tap, mirror_tap):
            options, err = self.parse("--listen", "tcp:9000:interface=0.0.0.0", tap=tap)
            self.assertIsNone(options)
            self.assertIn("not a loopback address", err)
            self.assertIn("--insecure", err)
            self.assertIn("--identity", err)
            self.assertEqual(len(err.splitlines()), 1)
        options, _ = self.parse("--listen", "tcp:9000:interface=0.0.0.0", "-p", "9001",
                                "--insecure")
        self.assertEqual(options["listen"], ["tcp:9000:interface=0.0.0.0", "tcp:9001"])
        self.assertEqual(options.security.clear_listeners, options["listen"])

    def test_clear_listeners_are_warned_about(self) -> None:
        options, _ = self.parse("--listen", "tcp:9000:interface=0.0.0.0", "--insecure")
        events: list[dict[str, Any]] = []

        @provider(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            events.append(event)

        globalLogPublisher.addObserver(observe)
        try:
            factory = ServerFactory()
            self.assertIs(secure_factory(options.security, factory, InlineThreads(), Clock()),
                          factory)  # open mode without host rules: the factory itself
        finally:
            globalLogPublisher.removeObserver(observe)
        warnings = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("listening on tcp:9000:interface=0.0.0.0 in clear (--insecure)",
                      warnings[0])

    def test_secured_with_an_identity(self) -> None:
        options, _ = self.parse("-p", "9000", "--identity", self.identity.paths.directory,
                                "--authorized-keys", self.keys)
        self.assertTrue(options.security.secured)
        self.assertEqual(options["listen"], ["tcp:9000"])  # every address, over TLS
        self.assertEqual(options.security.identity.fingerprint, self.identity.fingerprint)

    def test_identity_errors(self) -> None:
        _, err = self.parse("--identity", self.identity.paths.directory)
        self.assertIn("--identity needs --authorized-keys", err)
        _, err = self.parse("--authorized-keys", self.keys)
        self.assertIn("--authorized-keys needs --identity", err)
        _, err = self.parse("--identity", os.path.join(self.dir, "none"),
                            "--authorized-keys", self.keys)
        self.assertIn("mirror-admin keygen", err)
        _, err = self.parse("--identity", self.identity.paths.directory,
                            "--authorized-keys", os.path.join(self.dir, "none"))
        self.assertIn("--authorized-keys: ", err)
        os.chmod(self.identity.paths.key, 0o644)
        _, err = self.parse("--identity", self.identity.paths.directory,
                            "--authorized-keys", self.keys)
        self.assertIn("chmod 600", err)

    def test_hosts_rules(self) -> None:
        options, _ = self.parse("--hosts-allow", "10.0.0.0/8,192.0.2.1", "--hosts-deny", "::/0")
        self.assertTrue(options.security.access.allows("192.0.2.1"))
        self.assertFalse(options.security.access.allows("2001:db8::1"))
        _, err = self.parse("--hosts-allow", "10.0.0.300")
        self.assertIn("--hosts-allow: '10.0.0.300' is not", err)

    def test_known_hosts_of_the_mirror_server(self) -> None:
        pins = os.path.join(self.dir, "pins")
        with open(pins, "w") as f:
            f.write(f"files.example:9000 {self.identity.fingerprint}\n")
        options, _ = self.parse("--known-hosts", pins, tap=mirror_tap)
        self.assertEqual(options.pins.value["files.example:9000"], {self.identity.fingerprint})
        with open(pins, "w") as f:
            f.write("files.example:9000 nonsense\n")
        _, err = self.parse("--known-hosts", pins, tap=mirror_tap)
        self.assertIn(f"--known-hosts: {pins}:1: ", err)
