"""An identity is the SHA-256 of a public key (its DER SubjectPublicKeyInfo): renewing a
certificate with the same key keeps who it is.

Standard library only, so that mirror-init (which imports no Twisted and no ``cryptography``)
can compute the fingerprint of the certificate a server presents: `spki_of_certificate` walks
the certificate's DER encoding just far enough to find the key. It decodes no key and
verifies nothing; the TLS library has already checked the peer holds the key.
"""

from __future__ import annotations

import re

PREFIX = "sha256:"
_HEX = re.compile(r"[0-9a-f]{64}")


class FingerprintError(ValueError):
    """Text that is not a fingerprint, or a certificate whose key cannot be found."""


def fingerprint_of_spki(spki_der: bytes) -> str:
    """``sha256:`` and 64 hex digits: the fingerprint of a DER SubjectPublicKeyInfo."""
    import hashlib  # here: mirror-init imports this module, and most jobs pin nothing

    return PREFIX + hashlib.sha256(spki_der).hexdigest()


def fingerprint_of_certificate(cert_der: bytes) -> str:
    """The fingerprint of the public key of a DER certificate."""
    return fingerprint_of_spki(spki_of_certificate(cert_der))


def parse_fingerprint(text: str) -> str:
    """The canonical form (``sha256:`` and lowercase hex) of ``text``; `FingerprintError`
    if it is not one."""
    value = text.strip()
    if value[:len(PREFIX)].lower() != PREFIX or not _HEX.fullmatch(value[len(PREFIX):].lower()):
        raise FingerprintError(f"{value[:80]!r} is not a key fingerprint "
                               "(sha256: and 64 hex digits, as mirror-admin prints it)")
    return PREFIX + value[len(PREFIX):].lower()


def _element(der: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """The DER element at ``pos``: its tag, where its contents start, where it ends."""
    if pos + 2 > end:
        raise FingerprintError("truncated certificate")
    tag = der[pos]
    first = der[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise FingerprintError("bad length in certificate")
        length = int.from_bytes(der[pos:pos + count], "big")
        pos += count
    if pos + length > end:
        raise FingerprintError("truncated certificate")
    return tag, pos, pos + length


_SEQUENCE = 0x30
#: tbsCertificate's optional ``version [0] EXPLICIT``.
_VERSION = 0xA0


def spki_of_certificate(cert_der: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of a DER X.509 certificate (RFC 5280, 4.1): the seventh
    element of tbsCertificate, after version, serial, signature, issuer, validity, subject."""
    tag, start, end = _element(cert_der, 0, len(cert_der))
    if tag != _SEQUENCE:
        raise FingerprintError("not a certificate")
    tag, pos, tbs_end = _element(cert_der, start, end)
    if tag != _SEQUENCE:
        raise FingerprintError("not a certificate")
    if pos < tbs_end and cert_der[pos] == _VERSION:
        pos = _element(cert_der, pos, tbs_end)[2]
    for _ in range(5):  # serialNumber, signature, issuer, validity, subject
        pos = _element(cert_der, pos, tbs_end)[2]
    tag, _, spki_end = _element(cert_der, pos, tbs_end)
    if tag != _SEQUENCE:
        raise FingerprintError("no public key in certificate")
    return cert_der[pos:spki_end]
