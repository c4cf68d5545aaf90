"""Reading TLS files: certificates, (encrypted) private keys, client CAs and CRLs.

One place checks what OpenSSL and aioquic would accept silently or explain badly:
a key that is not the certificate's key (agents would fail every handshake with
``decrypt_error`` while the server looks healthy), an encrypted key without its
password, a CRL not signed by the client CA. Every error names the file; the
caller adds the flag.

Revocation follows OpenSSL's ``X509_V_FLAG_CRL_CHECK`` on the leaf, which is what the
``ssl`` module applies to TLS listeners, so the QUIC agent server and the HTTP proxy
listener decide alike: with CRLs configured, a client certificate needs a current CRL
from its issuer that does not list it.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # cryptography.x509 costs ~50 ms to import, imported where a file is read: the
    # typed configuration (and so every command) imports this module, the lb reads no
    # certificate unless it has TLS.
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import (
        CertificateIssuerPublicKeyTypes,
        PrivateKeyTypes,
    )

__all__ = [
    "ClientAuthority",
    "TlsConfigError",
    "flag_of_file",
    "load_client_authority",
    "load_key_pair",
    "read_certificates",
    "read_private_key",
    "server_ssl_context",
]

log = logging.getLogger(__name__)

_CRL_BEGIN = b"-----BEGIN X509 CRL-----"
_CRL_END = b"-----END X509 CRL-----"


class TlsConfigError(ValueError):
    """A certificate, key, CA or CRL file cannot be used; the message names the file."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise TlsConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None


def read_certificates(path: Path) -> list[x509.Certificate]:
    """Every PEM certificate in ``path`` (a chain: the leaf first)."""
    from cryptography import x509

    data = _read(path, "certificates")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsConfigError(f"{path}: no PEM certificate in the file") from None


def read_private_key(
    path: Path, password: str | None = None, *, password_flag: str | None = None
) -> PrivateKeyTypes:
    """The PEM private key in ``path``, decrypted with ``password`` if it is encrypted.

    PKCS#8 (``ENCRYPTED PRIVATE KEY``) and traditional OpenSSL encryption
    (``Proc-Type: 4,ENCRYPTED``) are both understood. A password given for a key that
    is not encrypted is ignored, as the Go reference ignores it. ``password_flag``
    names the flag that takes the password, for the messages.
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    data = _read(path, "the private key")
    encrypted = b"ENCRYPTED PRIVATE KEY" in data or b"Proc-Type: 4,ENCRYPTED" in data
    if encrypted and not password:
        hint = (
            f"give its password with {password_flag}"
            if password_flag
            else "this listener takes no key password; store the key decrypted"
        )
        raise TlsConfigError(f"{path}: the private key is encrypted; {hint}")
    secret = password.encode("utf-8") if encrypted and password else None
    try:
        return serialization.load_pem_private_key(data, password=secret)
    except ValueError:
        if encrypted:
            raise TlsConfigError(
                f"{path}: cannot decrypt the private key: wrong password"
                + (f" ({password_flag})" if password_flag else "")
            ) from None
        raise TlsConfigError(f"{path}: no usable PEM private key in the file") from None
    except (TypeError, UnsupportedAlgorithm) as exc:
        raise TlsConfigError(f"{path}: unsupported private key: {exc}") from None


def _spki(key: CertificateIssuerPublicKeyTypes | object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    public_bytes = getattr(key, "public_bytes", None)
    if public_bytes is None:
        return b""
    der: bytes = public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def load_key_pair(
    cert_path: Path,
    key_path: Path,
    password: str | None = None,
    *,
    password_flag: str | None = None,
) -> tuple[list[x509.Certificate], PrivateKeyTypes]:
    """The certificate chain and its private key, refused unless the key is the leaf's."""
    chain = read_certificates(cert_path)
    key = read_private_key(key_path, password, password_flag=password_flag)
    public = getattr(key, "public_key", None)
    if public is None or _spki(public()) != _spki(chain[0].public_key()):
        raise TlsConfigError(f"{key_path} is not the private key of the certificate in {cert_path}")
    return chain, key


@dataclass(frozen=True, eq=False)
class ClientAuthority:
    """What client certificates are checked against: CA certificates and their CRLs."""

    ca_file: Path
    #: The CA certificates as loaded, re-encoded as plain PEM (a later edit of the file
    #: waits for a reload).
    ca_pem: bytes
    ca_certs: tuple[x509.Certificate, ...]
    crl_file: Path | None = None
    crls: tuple[x509.CertificateRevocationList, ...] = ()

    def revocation_problem(
        self, cert: x509.Certificate, now: dt.datetime | None = None
    ) -> str | None:
        """Why ``cert`` (a chain-verified leaf) must be refused by its CRL; None if it may pass."""
        if self.crl_file is None:
            return None
        crls = [crl for crl in self.crls if crl.issuer == cert.issuer]
        if not crls:
            return "no certificate revocation list from its issuer"
        now = now or dt.datetime.now(dt.UTC)
        current = [c for c in crls if c.next_update_utc is None or c.next_update_utc >= now]
        if not current:
            return "the revocation list of its issuer has expired"
        for crl in current:
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                return f"certificate {cert.serial_number:x} is revoked"
        return None


def _split_crls(path: Path, data: bytes) -> list[x509.CertificateRevocationList]:
    from cryptography import x509

    crls = []
    rest = data
    while (start := rest.find(_CRL_BEGIN)) >= 0:
        end = rest.find(_CRL_END, start)
        if end < 0:
            raise TlsConfigError(f"{path}: truncated PEM CRL")
        block = rest[start : end + len(_CRL_END)] + b"\n"
        rest = rest[end + len(_CRL_END) :]
        try:
            crls.append(x509.load_pem_x509_crl(block))
        except ValueError as exc:
            raise TlsConfigError(f"{path}: invalid CRL: {exc}") from None
    if not crls:
        raise TlsConfigError(f"{path}: no PEM CRL (-----BEGIN X509 CRL-----) in the file")
    return crls


def load_client_authority(ca_file: Path, crl_file: Path | None = None) -> ClientAuthority:
    """The client CA certificates and, optionally, CRLs each signed by one of them."""
    from cryptography.hazmat.primitives import serialization

    ca_certs = tuple(read_certificates(ca_file))
    ca_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in ca_certs)
    if crl_file is None:
        return ClientAuthority(ca_file, ca_pem, ca_certs)
    crls = _split_crls(crl_file, _read(crl_file, "the CRL"))
    now = dt.datetime.now(dt.UTC)
    for crl in crls:
        issuer = crl.issuer.rfc4514_string()
        signers = [ca for ca in ca_certs if ca.subject == crl.issuer]
        if not any(_signed_by(crl, ca) for ca in signers):
            raise TlsConfigError(
                f"{crl_file}: the CRL of {issuer!r} is not signed by a CA in {ca_file}"
            )
        if crl.next_update_utc is not None and crl.next_update_utc < now:
            log.warning(
                "%s: the CRL of %r expired at %s; clients of that CA are refused until it "
                "is renewed",
                crl_file,
                issuer,
                crl.next_update_utc.isoformat(),
            )
    return ClientAuthority(ca_file, ca_pem, ca_certs, crl_file, tuple(crls))


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError, UnsupportedAlgorithm):
        return False


def server_ssl_context(
    cert_file: Path,
    key_file: Path,
    *,
    key_password: str | None = None,
    password_flag: str | None = None,
    client_ca_file: Path | None = None,
    client_crl_file: Path | None = None,
) -> ssl.SSLContext:
    """A TLS server context; with ``client_ca_file``, clients must present a certificate
    from that CA (and, with ``client_crl_file``, one its CRL does not revoke)."""
    load_key_pair(cert_file, key_file, key_password, password_flag=password_flag)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file, password=key_password or None)
    if client_ca_file is not None:
        load_client_authority(client_ca_file, client_crl_file)
        try:
            ctx.load_verify_locations(cafile=str(client_ca_file))
            if client_crl_file is not None:
                ctx.load_verify_locations(cafile=str(client_crl_file))
        except ssl.SSLError as exc:
            raise TlsConfigError(f"{client_crl_file or client_ca_file}: {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
        if client_crl_file is not None:
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def flag_of_file(message: str, files: Mapping[str, Path | None], fallback: str) -> str:
    """The flag (a key of ``files``) whose file a :class:`TlsConfigError` is about.

    Messages start with the file's name; the longest matching name wins.
    """
    matches = [
        (len(str(path)), flag)
        for flag, path in files.items()
        if path is not None and message.startswith(str(path))
    ]
    return max(matches)[1] if matches else fallback


def present(*paths: Path | None) -> list[Path]:
    """The files of a TLS setup that are configured (a reload re-reads these)."""
    return [p for p in paths if p is not None]


def tls_file_flag(
    message: str,
    prefix: str,
    *,
    cert: Path | None,
    key: Path | None,
    client_ca: Path | None,
    client_crl: Path | None,
) -> str:
    """The ``{prefix}.tls.file.*`` flag whose file a :class:`TlsConfigError` is about."""
    files = {
        f"{prefix}.tls.file.{part}": path
        for part, path in (
            ("cert", cert),
            ("key", key),
            ("client-ca", client_ca),
            ("client-crl", client_crl),
        )
    }
    return flag_of_file(message, files, f"{prefix}.tls.file.cert/key")
