"""PEM key loading, generation and serialization compatible with the Go reference.

The reference (grepplabs/cert-source keyutil) writes EC keys as ``EC PRIVATE KEY``
(SEC1) plus ``EC PUBLIC KEY`` (a SubjectPublicKeyInfo under a non-standard label) and
RSA keys as ``RSA PRIVATE KEY`` (PKCS#1) plus ``PUBLIC KEY`` (SPKI). Those labels are not
all understood by ``cryptography``'s PEM loaders, so PEM armour is parsed here and
only the DER is handed to ``cryptography``.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm as UnsupportedAlgorithmError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    PrivateKeyTypes,
    PublicKeyTypes,
)

__all__ = [
    "DEFAULT_RSA_BITS",
    "MIN_RSA_BITS",
    "Algorithm",
    "KeyFileError",
    "PrivateKey",
    "PublicKey",
    "algorithm_for_key",
    "generate_private_key",
    "load_private_key",
    "load_private_key_pem",
    "load_public_key",
    "load_public_key_pem",
    "private_key_to_pem",
    "public_key_of",
    "public_key_to_pem",
]

Algorithm: TypeAlias = Literal["ES256", "RS256"]
PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

MIN_RSA_BITS = 2048
DEFAULT_RSA_BITS = 4096
"""The reference's ``keyutil.GenerateRSAKeys`` uses 4096-bit keys."""

_EC_PRIVATE = "EC PRIVATE KEY"
_RSA_PRIVATE = "RSA PRIVATE KEY"
_PKCS8_PRIVATE = "PRIVATE KEY"
_SPKI_PUBLIC = "PUBLIC KEY"
_EC_PUBLIC = "EC PUBLIC KEY"
_RSA_PUBLIC = "RSA PUBLIC KEY"
_CERTIFICATE = "CERTIFICATE"
_PRIVATE_LABELS = frozenset({_EC_PRIVATE, _RSA_PRIVATE, _PKCS8_PRIVATE})
_PUBLIC_LABELS = frozenset({_SPKI_PUBLIC, _EC_PUBLIC, _RSA_PUBLIC, _CERTIFICATE})

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----",
    re.DOTALL,
)


class KeyFileError(ValueError):
    """A key file or PEM blob is unreadable or holds an unsupported key.

    The message always names the source (file path or ``<stdin>``) and the reason,
    so the CLI can print it as a single line.
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class _PemBlock:
    label: str
    der: bytes


def _pem_blocks(data: bytes, source: str) -> list[_PemBlock]:
    """Split PEM armour; encrypted blocks are refused since no passphrase is taken."""
    blocks: list[_PemBlock] = []
    for match in _PEM_BLOCK.finditer(data):
        label = match.group(1).decode("ascii")
        body = match.group(2)
        lines = [line.strip() for line in body.splitlines() if line.strip()]
        if any(b":" in line for line in lines):
            if any(line.startswith(b"Proc-Type:") and b"ENCRYPTED" in line for line in lines):
                raise KeyFileError(source, f"{label} block is encrypted (not supported)")
            lines = [line for line in lines if b":" not in line]
        try:
            der = base64.b64decode(b"".join(lines), validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError(source, f"{label} block has invalid base64") from None
        blocks.append(_PemBlock(label, der))
    if not blocks:
        raise KeyFileError(source, "no PEM block found")
    return blocks


def _check_private(key: PrivateKeyTypes, source: str) -> PrivateKey:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        _check_curve(key.curve, source)
        return key
    if isinstance(key, rsa.RSAPrivateKey):
        _check_rsa_size(key.key_size, source)
        return key
    raise KeyFileError(source, f"unsupported key type {_type_name(key)} (need EC P-256 or RSA)")


def _check_public(key: PublicKeyTypes, source: str) -> PublicKey:
    if isinstance(key, ec.EllipticCurvePublicKey):
        _check_curve(key.curve, source)
        return key
    if isinstance(key, rsa.RSAPublicKey):
        _check_rsa_size(key.key_size, source)
        return key
    raise KeyFileError(source, f"unsupported key type {_type_name(key)} (need EC P-256 or RSA)")


def _check_curve(curve: ec.EllipticCurve, source: str) -> None:
    if not isinstance(curve, ec.SECP256R1):
        raise KeyFileError(source, f"unsupported EC curve {curve.name} (only P-256 for ES256)")


def _check_rsa_size(bits: int, source: str) -> None:
    if bits < MIN_RSA_BITS:
        raise KeyFileError(source, f"RSA key is {bits} bits (minimum {MIN_RSA_BITS})")


def _type_name(key: object) -> str:
    return type(key).__name__.removeprefix("_")


def _private_from_block(block: _PemBlock, source: str) -> PrivateKey:
    try:
        key = serialization.load_der_private_key(block.der, password=None)
    except TypeError:
        raise KeyFileError(source, f"{block.label} block is encrypted (not supported)") from None
    except (ValueError, UnsupportedAlgorithmError):
        raise KeyFileError(source, f"{block.label} block is not a valid private key") from None
    if block.label == _EC_PRIVATE and not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(source, f"{block.label} block does not hold an EC key")
    if block.label == _RSA_PRIVATE and not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFileError(source, f"{block.label} block does not hold an RSA key")
    return _check_private(key, source)


def _public_from_block(block: _PemBlock, source: str) -> PublicKey:
    if block.label == _CERTIFICATE:
        try:
            cert = x509.load_der_x509_certificate(block.der)
            key = cert.public_key()
        except (ValueError, UnsupportedAlgorithmError):
            raise KeyFileError(source, "CERTIFICATE block is not a valid certificate") from None
        return _check_public(key, source)
    try:
        # load_der_public_key accepts SPKI and, as a fallback, PKCS#1 RSAPublicKey.
        pub = serialization.load_der_public_key(block.der)
    except (ValueError, UnsupportedAlgorithmError):
        raise KeyFileError(source, f"{block.label} block is not a valid public key") from None
    if block.label == _EC_PUBLIC and not isinstance(pub, ec.EllipticCurvePublicKey):
        raise KeyFileError(source, f"{block.label} block does not hold an EC key")
    if block.label == _RSA_PUBLIC and not isinstance(pub, rsa.RSAPublicKey):
        raise KeyFileError(source, f"{block.label} block does not hold an RSA key")
    return _check_public(pub, source)


def load_private_key_pem(data: bytes | str, source: str = "<pem>") -> PrivateKey:
    """Load the first private key block (SEC1, PKCS#8 or PKCS#1) from PEM data."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    blocks = _pem_blocks(raw, source)
    for block in blocks:
        if block.label in _PRIVATE_LABELS:
            return _private_from_block(block, source)
    if any(b.label == "ENCRYPTED PRIVATE KEY" for b in blocks):
        raise KeyFileError(source, "ENCRYPTED PRIVATE KEY is not supported")
    raise KeyFileError(
        source, "no private key block (EC PRIVATE KEY, PRIVATE KEY, RSA PRIVATE KEY)"
    )


def load_public_key_pem(data: bytes | str, source: str = "<pem>") -> PublicKey:
    """Load the first public key from PEM data.

    Like the reference, a private key or a certificate is accepted too and its public
    half is used, so a verifier may be pointed at the signing key file.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    for block in _pem_blocks(raw, source):
        if block.label in _PUBLIC_LABELS:
            return _public_from_block(block, source)
        if block.label in _PRIVATE_LABELS:
            return public_key_of(_private_from_block(block, source))
    raise KeyFileError(
        source, "no public key block (PUBLIC KEY, EC PUBLIC KEY, RSA PUBLIC KEY, CERTIFICATE)"
    )


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(str(path), exc.strerror or type(exc).__name__) from None


def load_private_key(path: str | Path) -> PrivateKey:
    """Read a private key file; errors name the file."""
    return load_private_key_pem(_read(path), str(path))


def load_public_key(path: str | Path) -> PublicKey:
    """Read a public key (or private key / certificate) file; errors name the file."""
    return load_public_key_pem(_read(path), str(path))


def public_key_of(key: PrivateKey) -> PublicKey:
    """Public half of a private key, typed to the supported key kinds."""
    return key.public_key()


def algorithm_for_key(key: PrivateKey | PublicKey) -> Algorithm:
    """JWS algorithm bound to a key: the only one a token for this key may carry."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        _check_curve(key.curve, "<key>")
        return "ES256"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        _check_rsa_size(key.key_size, "<key>")
        return "RS256"
    raise KeyFileError("<key>", f"unsupported key type {_type_name(key)} (need EC P-256 or RSA)")


def generate_private_key(
    algorithm: Algorithm = "ES256", rsa_bits: int = DEFAULT_RSA_BITS
) -> PrivateKey:
    """New signing key: P-256 for ES256, RSA (e=65537) for RS256."""
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "RS256":
        if rsa_bits < MIN_RSA_BITS:
            raise ValueError(f"RSA key size {rsa_bits} is below the minimum {MIN_RSA_BITS}")
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    raise ValueError(f"unsupported algorithm {algorithm!r} (ES256 or RS256)")


def _pem(label: str, der: bytes) -> bytes:
    """PEM armour exactly as Go's ``pem.EncodeToMemory`` (64-column lines, LF)."""
    b64 = base64.b64encode(der)
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    head = f"-----BEGIN {label}-----\n".encode("ascii")
    tail = f"-----END {label}-----\n".encode("ascii")
    return head + b"".join(line + b"\n" for line in lines) + tail


def private_key_to_pem(key: PrivateKey) -> bytes:
    """``EC PRIVATE KEY`` (SEC1) or ``RSA PRIVATE KEY`` (PKCS#1), as the reference writes."""
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    label = _EC_PRIVATE if isinstance(key, ec.EllipticCurvePrivateKey) else _RSA_PRIVATE
    return _pem(label, der)


def public_key_to_pem(key: PublicKey) -> bytes:
    """SPKI DER labelled ``EC PUBLIC KEY`` for EC and ``PUBLIC KEY`` for RSA."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    label = _EC_PUBLIC if isinstance(key, ec.EllipticCurvePublicKey) else _SPKI_PUBLIC
    return _pem(label, der)
