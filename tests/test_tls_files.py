"""Loading TLS files: encrypted keys, key/certificate mismatch, CRLs (issue 12, issue 13)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from reverse_http.devcerts import CertFiles, issue_cert, make_ca, make_dev_certs
from reverse_http.tlsfiles import (
    TlsConfigError,
    load_client_authority,
    load_key_pair,
    read_private_key,
    server_ssl_context,
)


def _encrypted(key_file: Path, out: Path, *, traditional: bool) -> Path:
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    fmt = (
        serialization.PrivateFormat.TraditionalOpenSSL
        if traditional
        else serialization.PrivateFormat.PKCS8
    )
    out.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, fmt, serialization.BestAvailableEncryption(b"s3cret")
        )
    )
    return out


def make_crl(ca_cert: Path, ca_key: Path, out: Path, revoked: list[Path]) -> Path:
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(now + dt.timedelta(days=1))
    )
    for path in revoked:
        serial = x509.load_pem_x509_certificate(path.read_bytes()).serial_number
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    crl = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
    out.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return out


@pytest.mark.parametrize("traditional", [False, True])
def test_encrypted_keys_need_their_password(
    certs: CertFiles, tmp_path: Path, traditional: bool
) -> None:
    enc = _encrypted(certs.key, tmp_path / "enc.pem", traditional=traditional)
    flag = "--http-proxy.tls.key-password"
    assert read_private_key(enc, "s3cret", password_flag=flag) is not None
    with pytest.raises(TlsConfigError, match=f"{enc}: the private key is encrypted.*{flag}"):
        read_private_key(enc, None, password_flag=flag)
    with pytest.raises(TlsConfigError, match=f"{enc}: cannot decrypt.*wrong password.*{flag}"):
        read_private_key(enc, "wrong", password_flag=flag)
    # ssl contexts take the password as well
    server_ssl_context(certs.cert, enc, key_password="s3cret", password_flag=flag)


def test_a_key_of_another_certificate_is_refused(certs: CertFiles, tmp_path: Path) -> None:
    other = make_dev_certs(tmp_path / "other")
    with pytest.raises(TlsConfigError) as info:
        load_key_pair(certs.cert, other.key)
    assert str(other.key) in str(info.value) and str(certs.cert) in str(info.value)


def test_quic_server_configuration_refuses_a_mismatched_key(
    certs: CertFiles, tmp_path: Path
) -> None:
    from reverse_http.quic.settings import ServerSettings, ServerTls, server_configuration

    other = make_dev_certs(tmp_path / "other")
    with pytest.raises(TlsConfigError, match="is not the private key of the certificate"):
        server_configuration(
            ServerSettings(tls=ServerTls(cert_file=certs.cert, key_file=other.key))
        )


def test_crl_checks(certs: CertFiles, tmp_path: Path) -> None:
    good, _ = issue_cert(tmp_path, certs.ca_cert, certs.ca_key, "good", ["good"], client=True)
    bad, _ = issue_cert(tmp_path, certs.ca_cert, certs.ca_key, "bad", ["bad"], client=True)
    crl = make_crl(certs.ca_cert, certs.ca_key, tmp_path / "crl.pem", [bad])
    authority = load_client_authority(certs.ca_cert, crl)
    load = x509.load_pem_x509_certificate
    assert authority.revocation_problem(load(good.read_bytes())) is None
    assert "revoked" in (authority.revocation_problem(load(bad.read_bytes())) or "")
    # a CRL that is not signed by the client CA, and a file that is no CRL
    rogue_dir = tmp_path / "rogue"
    rogue_dir.mkdir()
    rogue_ca, rogue_key = make_ca(rogue_dir)
    rogue_crl = make_crl(rogue_ca, rogue_key, tmp_path / "rogue-crl.pem", [])
    with pytest.raises(TlsConfigError, match="not signed by a CA in"):
        load_client_authority(certs.ca_cert, rogue_crl)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a crl\n")
    with pytest.raises(TlsConfigError, match=f"{junk}: no PEM CRL"):
        load_client_authority(certs.ca_cert, junk)
