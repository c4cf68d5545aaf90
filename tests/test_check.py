"""``--check`` on proxy, agent and lb: a good configuration, and each kind of bad file.

Exit 0 with notes on stdout, or 1 with one line per problem on stderr naming the flag;
never a bound port or a connection (the checks run with the ports taken and nothing
listening on the memcached port).
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from conftest import free_port
from reverse_http.auth.jwt import issue_token
from reverse_http.auth.keys import (
    generate_private_key,
    private_key_to_pem,
    public_key_of,
    public_key_to_pem,
)
from reverse_http.cli.main import app
from reverse_http.devcerts import CertFiles, make_dev_certs
from tests.test_tls_files import _encrypted, make_crl


def run(*args: str) -> tuple[int, list[str], list[str]]:
    result = CliRunner().invoke(app, [*args, "--check", "--config", ""])
    return result.exit_code, result.stdout.splitlines(), result.stderr.splitlines()


@pytest.fixture
def taken() -> Iterator[int]:
    """A TCP port someone else listens on: --check must not try to bind it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield int(sock.getsockname()[1])
    sock.close()


@pytest.fixture
def jwt_keys(tmp_path: Path) -> tuple[Path, Path]:
    key = generate_private_key()
    private, public = tmp_path / "auth-key-private.pem", tmp_path / "auth-key-public.pem"
    private.write_bytes(private_key_to_pem(key))
    public.write_bytes(public_key_to_pem(public_key_of(key)))
    return private, public


def expired_pair(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old.example")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "old.pem", directory / "old-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def proxy_args(certs: CertFiles, taken: int, *extra: str) -> list[str]:
    return [
        "proxy",
        f"--agent-server.listen-address=127.0.0.1:{taken}",
        f"--agent-server.tls.file.cert={certs.cert}",
        f"--agent-server.tls.file.key={certs.key}",
        f"--http-proxy.listen-address=127.0.0.1:{taken}",
        *extra,
    ]


def test_good_proxy_configuration(
    certs: CertFiles, taken: int, jwt_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    crl = make_crl(certs.ca_cert, certs.ca_key, tmp_path / "crl.pem", [])
    encrypted = _encrypted(certs.key, tmp_path / "enc.pem", traditional=False)
    code, out, err = run(
        *proxy_args(
            certs,
            taken,
            "--http-proxy.tls.enable",
            f"--http-proxy.tls.file.cert={certs.cert}",
            f"--http-proxy.tls.file.key={encrypted}",
            "--http-proxy.tls.key-password=s3cret",
            f"--http-proxy.tls.file.client-ca={certs.ca_cert}",
            f"--http-proxy.tls.file.client-crl={crl}",
            "--auth.type=jwt",
            f"--auth.jwt.public-key={jwt_keys[1]}",
            "--http-proxy.host-whitelist=*.example.com:443,10.0.0.0/8",
            "--store.type=memcached",
            f"--store.memcached.address=127.0.0.1:{free_port()}",
        )
    )
    assert (code, err) == (0, []), (out, err)
    text = "\n".join(out)
    assert f"--agent-server.tls.file.cert {certs.cert}: certificate for localhost" in text
    assert f"key {certs.key} matches" in text
    assert f"--http-proxy.tls.file.client-ca {certs.ca_cert}: clients need a certificate" in text
    assert f"revocation list {crl}" in text
    assert f"--auth.jwt.public-key {jwt_keys[1]}" in text
    assert "--http-proxy.host-whitelist: 2 pattern(s)" in text
    assert "(not contacted)" in text
    assert out[-1] == "reverse-http proxy: configuration OK"


def test_proxy_problems_one_line_each(certs: CertFiles, taken: int, tmp_path: Path) -> None:
    other = make_dev_certs(tmp_path / "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM at all\n")
    foreign_crl = make_crl(other.ca_cert, other.ca_key, tmp_path / "foreign-crl.pem", [])
    code, _out, err = run(
        "proxy",
        f"--agent-server.listen-address=127.0.0.1:{taken}",
        f"--agent-server.tls.file.cert={certs.cert}",
        f"--agent-server.tls.file.key={other.key}",  # not the certificate's key
        "--http-proxy.tls.enable",
        f"--http-proxy.tls.file.cert={certs.cert}",
        f"--http-proxy.tls.file.key={_encrypted(certs.key, tmp_path / 'e.pem', traditional=True)}",
        f"--http-proxy.tls.file.client-ca={certs.ca_cert}",
        f"--http-proxy.tls.file.client-crl={foreign_crl}",
        "--auth.type=jwt",
        f"--auth.jwt.public-key={garbage}",
    )
    assert code == 1
    assert len(err) == 4, err
    assert err[0].startswith(
        f"reverse-http proxy: --agent-server.tls.file.key: {other.key} is not the private key"
    )
    assert err[1].startswith("reverse-http proxy: --http-proxy.tls.file.key: ")
    assert "encrypted; give its password with --http-proxy.tls.key-password" in err[1]
    assert err[2].startswith("reverse-http proxy: --auth.jwt.public-key: ")
    assert err[3] == "reverse-http proxy: configuration check failed: 3 problem(s)"


@pytest.mark.parametrize(
    ("flag", "expect"),
    [
        ("client-ca", "--http-proxy.tls.file.client-ca: "),
        ("client-crl", "--http-proxy.tls.file.client-crl: "),
    ],
)
def test_proxy_bad_client_ca_and_crl(
    certs: CertFiles, taken: int, tmp_path: Path, flag: str, expect: str
) -> None:
    other = make_dev_certs(tmp_path / "other")
    files = {
        "client-ca": certs.ca_cert,
        "client-crl": make_crl(other.ca_cert, other.ca_key, tmp_path / "crl.pem", []),
    }
    if flag == "client-ca":
        files["client-ca"] = tmp_path / "ca.pem"
        files["client-ca"].write_text("-----BEGIN CERTIFICATE-----\nbroken\n")
    code, _out, err = run(
        *proxy_args(
            certs,
            taken,
            "--http-proxy.tls.enable",
            f"--http-proxy.tls.file.cert={certs.cert}",
            f"--http-proxy.tls.file.key={certs.key}",
            f"--http-proxy.tls.file.client-ca={files['client-ca']}",
            f"--http-proxy.tls.file.client-crl={files['client-crl']}",
        )
    )
    assert code == 1
    assert err[0].startswith(f"reverse-http proxy: {expect}"), err
    assert len(err) == 2


def test_expired_certificate_is_a_problem(taken: int, tmp_path: Path) -> None:
    cert, key = expired_pair(tmp_path)
    code, _out, err = run(
        "proxy",
        f"--agent-server.listen-address=127.0.0.1:{taken}",
        f"--agent-server.tls.file.cert={cert}",
        f"--agent-server.tls.file.key={key}",
    )
    assert code == 1
    assert err[0].endswith(": certificate for old.example expired on " + _yesterday()), err


def _yesterday() -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).strftime("%Y-%m-%d")


def test_a_bad_value_is_one_problem_not_a_traceback(certs: CertFiles, taken: int) -> None:
    code, _out, err = run(*proxy_args(certs, taken, "--http-proxy.host-whitelist=exa mple:99999"))
    assert code == 1
    assert err[0].startswith("reverse-http proxy: --http-proxy.host-whitelist: "), err
    assert err[-1] == "reverse-http proxy: configuration check failed: 1 problem(s)"


def agent_args(certs: CertFiles, token: str) -> list[str]:
    return [
        "agent",
        "--agent-client.server-address=127.0.0.1:1",
        f"--agent-client.tls.file.root-ca={certs.ca_cert}",
        "--auth.type=jwt",
        f"--auth.jwt.token={token}",
    ]


def test_good_agent_shows_token_expiry(
    certs: CertFiles, jwt_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    token_file = tmp_path / "agent.jwt"
    token_file.write_text(issue_token(jwt_keys[0].read_bytes(), "4711", "agent") + "\n")
    code, out, err = run(*agent_args(certs, f"file:{token_file}"))
    assert (code, err) == (0, []), (out, err)
    text = "\n".join(out)
    assert f'token file {token_file}: agent id "4711", expires ' in text
    assert "(in 23h5" in text or "(in 24h00m)" in text
    assert f"--agent-client.tls.file.root-ca {certs.ca_cert}: 1 CA certificate(s)" in text
    assert token_file.read_text().strip() not in text  # the token itself is never shown


def test_check_names_allow_list_entries_the_go_reference_decides_differently(
    certs: CertFiles, jwt_keys: tuple[Path, Path]
) -> None:
    """A note (not a problem: the list is valid) per entry that a first-match reading,
    the Go reference's, shadows."""
    token = issue_token(jwt_keys[0].read_bytes(), "4711", "agent")
    whitelist = "--agent-client.host-whitelist=10.0.0.0/8:80,10.1.2.3:443,*.a.com,a.com:22"
    code, out, err = run(*agent_args(certs, token), whitelist)
    assert (code, err) == (0, []), (out, err)
    notes = [line for line in out if "shadowed in the Go reference" in line]
    assert notes == [
        "reverse-http agent: ok: --agent-client.host-whitelist: WARNING: entry '10.1.2.3:443'"
        " is shadowed in the Go reference"
        " by '10.0.0.0/8:80' (Go decides by the first matching host pattern, so it refuses"
        " ports of '10.1.2.3:443' that '10.0.0.0/8:80' lacks; this program allows them)"
    ], out


@pytest.mark.parametrize("kind", ["missing", "malformed", "expired", "client", "bad-ca"])
def test_agent_bad_files(
    certs: CertFiles, jwt_keys: tuple[Path, Path], tmp_path: Path, kind: str
) -> None:
    key = jwt_keys[0].read_bytes()
    token_file = tmp_path / "agent.jwt"
    tokens = {
        "malformed": "not.a-jwt",
        "expired": issue_token(
            key,
            "4711",
            "agent",
            duration=dt.timedelta(hours=1),
            now=dt.datetime.now(dt.UTC) - dt.timedelta(days=2),
        ),
        "client": issue_token(key, "4711", "client"),
    }
    if kind in tokens:
        token_file.write_text(tokens[kind])
    elif kind == "bad-ca":
        token_file.write_text(issue_token(key, "4711", "agent"))
    args = agent_args(certs, f"file:{token_file}")
    if kind == "bad-ca":
        args[2] = f"--agent-client.tls.file.root-ca={certs.key}"
    code, _out, err = run(*args)
    assert code == 1, err
    if kind == "missing":
        # the builder reads the file first: one problem, naming flag and file
        assert err[0] == (
            f'reverse-http agent: --auth.jwt.token: token file "{token_file}" does not exist'
        )
        return
    assert len(err) == 2, err
    expected = {
        "malformed": f"--auth.jwt.token: token file {token_file}: not a well-formed",
        "expired": f'--auth.jwt.token: token file {token_file}: agent id "4711", EXPIRED at',
        "client": f"--auth.jwt.token: token file {token_file}: not an agent token",
        "bad-ca": "--agent-client.tls.file.root-ca: ",
    }[kind]
    assert err[0].startswith(f"reverse-http agent: {expected}"), err


def test_lb_good_and_bad_connector_ca(certs: CertFiles, taken: int) -> None:
    base = [
        "lb",
        f"--http-proxy.listen-address=127.0.0.1:{taken}",
        f"--store.memcached.address=127.0.0.1:{free_port()}",
        "--http-connector.tls.enable",
    ]
    code, out, err = run(*base, f"--http-connector.tls.file.root-ca={certs.ca_cert}")
    assert (code, err) == (0, []), (out, err)
    assert any("--http-connector.allowed-proxies: dials only 127.0.0.0/8" in n for n in out)
    assert any("--http-connector.tls.file.root-ca" in n and "1 CA certificate" in n for n in out)
    code, _out, err = run(*base, f"--http-connector.tls.file.root-ca={certs.key}")
    assert code == 1
    assert err[0].startswith("reverse-http lb: --http-connector.tls.file."), err


def test_lb_connector_ca_of_crls_only(certs: CertFiles, taken: int, tmp_path: Path) -> None:
    """OpenSSL loads a file of CRLs as a CA file without complaint; --check does not."""
    crl = make_crl(certs.ca_cert, certs.ca_key, tmp_path / "crl.pem", [])
    code, _out, err = run(
        "lb",
        f"--http-proxy.listen-address=127.0.0.1:{taken}",
        "--http-connector.tls.enable",
        f"--http-connector.tls.file.root-ca={crl}",
    )
    assert code == 1
    assert err[0] == (
        f"reverse-http lb: --http-connector.tls.file.root-ca: {crl}: no PEM certificate in the file"
    )


def test_lb_without_tls_verification_choice(taken: int) -> None:
    code, _out, err = run(
        "lb", f"--http-proxy.listen-address=127.0.0.1:{taken}", "--http-connector.tls.enable"
    )
    assert code == 1
    assert "--http-connector.tls.file.root-ca" in err[0]


def test_a_bad_file_named_in_a_config_file_is_blamed_on_its_key(
    certs: CertFiles, taken: int, tmp_path: Path
) -> None:
    other = make_dev_certs(tmp_path / "other")
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"agent-server.tls.file.cert: {certs.cert}\n"
        f"agent-server.tls.file.key: {other.key}\n"
        f"agent-server.listen-address: 127.0.0.1:{taken}\n"
    )
    result = CliRunner().invoke(app, ["proxy", "--check", "--config", str(config)])
    assert result.exit_code == 1
    assert f"reverse-http proxy: ok: configuration file {config} loaded" in result.stdout
    assert result.stderr.splitlines()[0] == (
        f"reverse-http proxy: {config}: agent-server.tls.file.key: {other.key} is not the "
        f"private key of the certificate in {certs.cert}"
    )
