"""Identities, fingerprints, pins, allow-lists and host rules (issue 11, part 1): the
standard-library pieces and the ``cryptography`` ones, without a network."""

from __future__ import annotations

import datetime
import os
import shutil
import stat
import tempfile

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.trial.unittest import SynchronousTestCase

from mirror.security.authorized_keys import authorized_keys
from mirror.security.fingerprint import (
    FingerprintError,
    fingerprint_of_certificate,
    parse_fingerprint,
    spki_of_certificate,
)
from mirror.security.hosts_access import FailureLimiter, HostsAccess, parse_networks
from mirror.security.identity import (
    key_fingerprint,
    keygen,
    make_certificate,
    read_identity,
    renew,
)
from mirror.security.identity_files import IdentityError, identity_paths
from mirror.security.known_hosts import host_key, is_loopback_host, known_hosts
from mirror.security.watched import ConfigFileError

FP_A = "sha256:" + "a" * 64
FP_B = "sha256:" + "b" * 64


def scratch(case: SynchronousTestCase) -> str:
    d = tempfile.mkdtemp(prefix="test-security-")
    case.addCleanup(shutil.rmtree, d, True)
    return d


def write(path: str, text: str) -> None:
    """Replace ``path`` as an editor does (a new inode): what a reload must notice."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


class FingerprintTests(SynchronousTestCase):
    def test_spki_walk_matches_cryptography(self) -> None:
        """The standard-library walk finds the same key as ``cryptography``, for P-256 and
        P-384 keys and a long name (long-form DER lengths)."""
        for curve, name in ((ec.SECP256R1(), "cs1"), (ec.SECP384R1(), "x" * 64)):
            key = ec.generate_private_key(curve)
            cert = make_certificate(key, name, 10)
            der = cert.public_bytes(serialization.Encoding.DER)
            spki = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            self.assertEqual(spki_of_certificate(der), spki)
            self.assertEqual(fingerprint_of_certificate(der), key_fingerprint(cert))

    def test_truncated_certificate(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        der = make_certificate(key, "n", 1).public_bytes(serialization.Encoding.DER)
        for cut in (0, 1, 10, len(der) // 2):
            with self.assertRaises(FingerprintError):
                spki_of_certificate(der[:cut])

    def test_parse(self) -> None:
        self.assertEqual(parse_fingerprint(" SHA256:" + "AB" * 32 + "\n"), "sha256:" + "ab" * 32)
        for bad in ("", "sha256:", "sha1:" + "a" * 64, "sha256:" + "g" * 64, FP_A + "0"):
            with self.assertRaises(FingerprintError):
                parse_fingerprint(bad)


class IdentityTests(SynchronousTestCase):
    def test_keygen_modes_whatever_the_umask(self) -> None:
        base = scratch(self)
        old = os.umask(0)
        try:
            identity = keygen(os.path.join(base, "id"), "cs1", days=30)
        finally:
            os.umask(old)
        mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
        self.assertEqual(mode(os.path.join(base, "id")), 0o700)
        self.assertEqual(mode(identity.paths.key), 0o600)
        self.assertEqual(mode(identity.paths.cert), 0o644)
        self.assertEqual(identity.name, "cs1")
        self.assertTrue(identity.fingerprint.startswith("sha256:"))

    def test_keygen_never_overwrites(self) -> None:
        directory = os.path.join(scratch(self), "id")
        first = keygen(directory, "a")
        with self.assertRaises(IdentityError):
            keygen(directory, "a")
        self.assertEqual(read_identity(directory).fingerprint, first.fingerprint)

    def test_bad_name(self) -> None:
        with self.assertRaisesRegex(IdentityError, "1 to 64 characters"):
            keygen(os.path.join(scratch(self), "id"), "x" * 65)

    def test_renew_keeps_the_fingerprint(self) -> None:
        directory = os.path.join(scratch(self), "id")
        first = keygen(directory, "cs1", days=1)
        with open(first.paths.cert, "rb") as f:
            old_cert = f.read()
        again = renew(directory, days=400)
        with open(first.paths.cert, "rb") as f:
            self.assertNotEqual(f.read(), old_cert)
        self.assertEqual(again.fingerprint, first.fingerprint)
        self.assertEqual(again.name, "cs1")
        self.assertGreater(again.not_after, first.not_after)

    def test_missing_files(self) -> None:
        base = scratch(self)
        with self.assertRaisesRegex(IdentityError, "no such directory"):
            identity_paths(os.path.join(base, "nothing"))
        directory = os.path.join(base, "id")
        keygen(directory, "a")
        os.unlink(os.path.join(directory, "cert.pem"))
        with self.assertRaisesRegex(IdentityError, "cert.pem: no such file"):
            identity_paths(directory)

    def test_key_readable_by_others(self) -> None:
        directory = os.path.join(scratch(self), "id")
        identity = keygen(directory, "a")
        for mode in (0o640, 0o604, 0o644):
            os.chmod(identity.paths.key, mode)
            with self.assertRaisesRegex(IdentityError, f"mode {mode:04o}.*chmod 600"):
                identity_paths(directory)
        os.chmod(identity.paths.key, 0o400)
        identity_paths(directory)

    def test_expired(self) -> None:
        directory = os.path.join(scratch(self), "id")
        keygen(directory, "a", days=1)
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2)
        with self.assertRaisesRegex(IdentityError, "expired.*mirror-admin renew"):
            read_identity(directory, now=later)

    def test_certificate_of_another_key(self) -> None:
        base = scratch(self)
        a = keygen(os.path.join(base, "a"), "a")
        b = keygen(os.path.join(base, "b"), "b")
        os.replace(b.paths.cert, a.paths.cert)
        with self.assertRaisesRegex(IdentityError, "not for the key"):
            read_identity(os.path.join(base, "a"))


class KnownHostsTests(SynchronousTestCase):
    def test_host_keys(self) -> None:
        self.assertEqual(host_key("Files.Example", 9000), "files.example:9000")
        self.assertEqual(host_key("::1", 9000), "[::1]:9000")
        self.assertEqual(host_key("[0:0::1]", 9000), "[::1]:9000")
        self.assertEqual(host_key("127.0.0.1", 1), "127.0.0.1:1")

    def test_parse_and_reload(self) -> None:
        path = os.path.join(scratch(self), "known_hosts")
        write(path, f"# pins\n\nFILES.example:9000 {FP_A} old key\n"
                    f"files.example:9000 {FP_B}\n[::1]:9001 {FP_A}\nunix:/run/m.sock {FP_B}\n")
        pins = known_hosts(path)
        value = pins.load()
        self.assertEqual(value["files.example:9000"], {FP_A, FP_B})
        self.assertEqual(value["[::1]:9001"], {FP_A})
        self.assertEqual(value["unix:/run/m.sock"], {FP_B})
        self.assertFalse(pins.refresh())
        write(path, f"files.example:9000 {FP_B}\nnot-a-line\n")
        self.assertTrue(pins.refresh())
        self.assertEqual(pins.value, {"files.example:9000": {FP_B}})
        self.assertEqual(len(pins.problems), 1)
        self.assertIn(f"{path}:2:", pins.problems[0])

    def test_vanished_file_keeps_its_pins(self) -> None:
        """A pinned host must never become one reached in clear because the file went."""
        path = os.path.join(scratch(self), "known_hosts")
        write(path, f"h:9000 {FP_A}\n")
        pins = known_hosts(path)
        pins.load()
        os.unlink(path)
        with self.assertRaises(OSError):
            pins.refresh()
        self.assertEqual(pins.value, {"h:9000": {FP_A}})

    def test_bad_lines_on_first_load(self) -> None:
        base = scratch(self)
        for text in (f"files.example {FP_A}", f"::1:9000 {FP_A}", "h:9000 sha256:xyz",
                     "h:0 " + FP_A, "h:9000"):
            path = os.path.join(base, "kh")
            write(path, text + "\n")
            with self.assertRaisesRegex(ConfigFileError, f"{path}:1: "):
                known_hosts(path).load()
        with self.assertRaisesRegex(ConfigFileError, "no such file"):
            known_hosts(os.path.join(base, "missing")).load()

    def test_loopback(self) -> None:
        for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"):
            self.assertTrue(is_loopback_host(host), host)
        for host in ("10.0.0.1", "::", "0.0.0.0", "files.example", "localhost.evil"):
            self.assertFalse(is_loopback_host(host), host)


class AuthorizedKeysTests(SynchronousTestCase):
    def test_revocation_by_removing_a_line(self) -> None:
        path = os.path.join(scratch(self), "authorized")
        write(path, f"{FP_A} mirror1\n# {FP_B}\n")
        keys = authorized_keys(path)
        self.assertEqual(keys.load(), {FP_A})
        write(path, f"{FP_B}\n")
        self.assertTrue(keys.refresh())
        self.assertEqual(keys.value, {FP_B})

    def test_vanished_file_lets_nobody_in(self) -> None:
        path = os.path.join(scratch(self), "authorized")
        write(path, f"{FP_A}\n")
        keys = authorized_keys(path)
        keys.load()
        os.unlink(path)
        with self.assertRaises(OSError):
            keys.refresh()
        self.assertEqual(keys.value, frozenset())

    def test_bad_line(self) -> None:
        path = os.path.join(scratch(self), "authorized")
        write(path, f"{FP_A}\nssh-ed25519 AAAA...\n")
        with self.assertRaisesRegex(ConfigFileError, ":2: "):
            authorized_keys(path).load()


class HostsAccessTests(SynchronousTestCase):
    def test_rsync_rules(self) -> None:
        nets = parse_networks
        only = HostsAccess(nets(["10.0.0.0/8, 192.0.2.7"]), [])
        self.assertTrue(only.allows("10.1.2.3"))
        self.assertTrue(only.allows("192.0.2.7"))
        self.assertFalse(only.allows("192.0.2.8"))
        self.assertTrue(only.allows("::ffff:10.0.0.1"))  # a dual-stack socket's IPv4 peer
        self.assertTrue(only.allows("unix"))  # a UNIX socket: local
        deny = HostsAccess([], nets(["10.0.0.0/8"]))
        self.assertFalse(deny.allows("10.0.0.1"))
        self.assertTrue(deny.allows("127.0.0.1"))
        both = HostsAccess(nets(["10.1.0.0/16"]), nets(["10.0.0.0/8"]))
        self.assertTrue(both.allows("10.1.0.1"))
        self.assertFalse(both.allows("10.2.0.1"))
        self.assertTrue(both.allows("192.0.2.1"))
        six = HostsAccess(nets(["2001:db8::/32"]), [])
        self.assertTrue(six.allows("2001:db8::1"))
        self.assertFalse(six.allows("2001:db9::1"))
        self.assertFalse(HostsAccess([], []).active)

    def test_bad_network(self) -> None:
        with self.assertRaisesRegex(ValueError, "'10.0.0.0/33' is not"):
            parse_networks(["10.0.0.0/33"])

    def test_failures_limited_per_address_then_forgotten(self) -> None:
        now = [0.0]
        limiter = FailureLimiter(lambda: now[0], max_failures=3, window=60.0, max_hosts=2)
        for _ in range(5):
            limiter.failed("unix")
        self.assertFalse(limiter.blocked("unix"))  # local peers share one key: not counted
        for _ in range(2):
            limiter.failed("192.0.2.1")
        self.assertFalse(limiter.blocked("192.0.2.1"))
        limiter.failed("192.0.2.1")
        self.assertTrue(limiter.blocked("192.0.2.1"))
        self.assertFalse(limiter.blocked("192.0.2.2"))
        now[0] = 61.0
        self.assertFalse(limiter.blocked("192.0.2.1"))
        for host in ("192.0.2.10", "192.0.2.11", "192.0.2.12"):
            for _ in range(3):
                limiter.failed(host)
        self.assertFalse(limiter.blocked("192.0.2.10"))  # forgotten: max_hosts remembered
        self.assertTrue(limiter.blocked("192.0.2.12"))
