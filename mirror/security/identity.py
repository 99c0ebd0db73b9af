"""Making and reading identities with the ``cryptography`` package: an EC key pair (P-256)
and a self-signed certificate, in an identity directory (`identity_files`).

The identity is the fingerprint of the public key (`fingerprint`), not of the certificate:
`renew` signs a new certificate for the same key, and every pin and allow-list entry stays
valid.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mirror.security.fingerprint import fingerprint_of_spki
from mirror.security.identity_files import (
    CERT_FILE,
    KEY_FILE,
    IdentityError,
    IdentityPaths,
    identity_paths,
)

DEFAULT_DAYS = 825


@dataclass(frozen=True)
class Identity:
    """A checked identity directory: its files, fingerprint, name and expiry."""

    paths: IdentityPaths
    fingerprint: str
    name: str
    not_after: datetime.datetime


def key_fingerprint(key: ec.EllipticCurvePublicKey | x509.Certificate) -> str:
    """The fingerprint of a public key, or of a certificate's key."""
    public = key.public_key() if isinstance(key, x509.Certificate) else key
    spki = public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return fingerprint_of_spki(spki)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _subject(name: str) -> x509.Name:
    try:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    except ValueError:
        raise IdentityError(f"bad name {name[:80]!r}: 1 to 64 characters") from None


def make_certificate(key: ec.EllipticCurvePrivateKey, name: str, days: int,
                     now: datetime.datetime | None = None) -> x509.Certificate:
    """A self-signed certificate for ``key``, named ``name`` (common name and DNS name),
    valid from a minute ago (clock skew) for ``days`` days."""
    now = now or _now()
    subject = _subject(name)
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    try:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]),
                                        critical=False)
    except ValueError:
        pass  # a name that is not a DNS name: the common name alone
    return builder.sign(key, hashes.SHA256())


def _write(path: str, data: bytes, mode: int, replace: bool = False) -> None:
    """Write ``data`` to ``path`` created with ``mode`` (never wider first, whatever the
    umask): beside it and renamed when ``replace``, else refusing an existing file."""
    target = path + ".new" if replace else path
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(target, flags, mode)
    except FileExistsError:
        raise IdentityError(f"{target}: already exists (mirror-admin renew keeps the key "
                            "and renews the certificate)") from None
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if replace:
        os.replace(target, path)


def keygen(directory: str, name: str | None = None, days: int = DEFAULT_DAYS) -> Identity:
    """Create ``directory`` (mode 0700) with a new key (0600) and certificate (0644)."""
    name = name or socket.gethostname()[:64] or "mirror"
    _subject(name)  # a bad name is an error before anything is written
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as e:
        raise IdentityError(f"{directory}: {(e.strerror or str(e)).lower()}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    key_path = os.path.join(directory, KEY_FILE)
    cert_path = os.path.join(directory, CERT_FILE)
    if os.path.lexists(cert_path):
        raise IdentityError(f"{cert_path}: already exists (mirror-admin renew keeps the key "
                            "and renews the certificate)")
    _write(key_path, pem, 0o600)
    cert = make_certificate(key, name, days)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return read_identity(directory)


def renew(directory: str, days: int = DEFAULT_DAYS) -> Identity:
    """A new certificate for the key of ``directory``, with the same name: the fingerprint,
    and so every pin and allow-list entry, stays the same."""
    paths = identity_paths(directory)
    key = _load_key(paths)
    old = _load_cert(paths)
    names = old.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else "mirror"
    cert = make_certificate(key, name, days)
    _write(paths.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644, replace=True)
    return read_identity(directory)


def _load_key(paths: IdentityPaths) -> ec.EllipticCurvePrivateKey:
    try:
        with open(paths.key, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise IdentityError(f"{paths.key}: not a readable unencrypted PEM key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IdentityError(f"{paths.key}: not an EC key")
    return key


def _load_cert(paths: IdentityPaths) -> x509.Certificate:
    try:
        with open(paths.cert, "rb") as f:
            return x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as e:
        raise IdentityError(f"{paths.cert}: not a readable PEM certificate ({e})") from None


def read_identity(directory: str, now: datetime.datetime | None = None) -> Identity:
    """The checked identity of ``directory``: files present and safe (`identity_paths`),
    the certificate for the key, and not expired."""
    paths = identity_paths(directory)
    key = _load_key(paths)
    cert = _load_cert(paths)
    fingerprint = key_fingerprint(cert)
    if fingerprint != key_fingerprint(key.public_key()):
        raise IdentityError(f"{paths.cert}: the certificate is not for the key in {paths.key}")
    not_after = cert.not_valid_after_utc
    if not_after <= (now or _now()):
        raise IdentityError(f"{paths.cert}: expired on {not_after:%Y-%m-%d}: renew it with "
                            f"mirror-admin renew {directory}")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return Identity(paths, fingerprint, str(names[0].value) if names else "", not_after)


def certificate_file_fingerprint(path: str) -> str:
    """The key fingerprint of a PEM (or DER) certificate file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise IdentityError(f"{path}: {(e.strerror or str(e)).lower()}") from None
    try:
        cert = (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                else x509.load_der_x509_certificate(data))
    except ValueError as e:
        raise IdentityError(f"{path}: not a certificate ({e})") from None
    return key_fingerprint(cert)
