"""``reverse-http auth ...``: reference defaults, output formats, one-line errors, what
each command says it did, and no silent replacement of a signing key."""

from __future__ import annotations

import base64
import json
import re
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from typer.testing import CliRunner, Result

from reverse_http.auth.jwt import TokenVerifier
from reverse_http.auth.keys import load_private_key_pem, load_public_key, load_public_key_pem
from reverse_http.cli.auth_cmd import auth_app

GO = Path(__file__).parent / "data" / "go-reference-jwt"
GO_PRIVATE = GO / "auth-key-private.pem"
GO_PUBLIC = GO / "auth-key-public.pem"


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunFn:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str, input: bytes | None = None) -> Result:
        return runner.invoke(auth_app, list(args), input=input)

    return invoke


class RunFn(Protocol):
    def __call__(self, *args: str, input: bytes | None = None) -> Result: ...


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def payload(token: str) -> dict[str, object]:
    seg = token.split(".")[1]
    result = json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))
    assert isinstance(result, dict)
    return result


def assert_usage_error(result: Result, *fragments: str) -> None:
    """One line naming the command (as the daemons' errors do), exit status 1 (Go's)."""
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert re.match(r"^\S*auth (key private|key public|jwt token): ", lines[0]), lines[0]
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


# --- auth key private --------------------------------------------------------------


def test_key_private_defaults(run: RunFn, tmp_path: Path) -> None:
    result = run("key", "private")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr == (
        "wrote ES256 (EC P-256) private key to auth-key-private.pem (mode 0600)\n"
    )
    out = tmp_path / "auth-key-private.pem"
    data = out.read_bytes()
    assert data.startswith(b"-----BEGIN EC PRIVATE KEY-----\n")
    key = load_private_key_pem(data)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert mode(out) == 0o600


def test_key_private_to_stdout(run: RunFn, tmp_path: Path) -> None:
    result = run("key", "private", "--out", "-")
    assert result.exit_code == 0
    assert result.stdout.startswith("-----BEGIN EC PRIVATE KEY-----\n")
    assert result.stdout.endswith("-----END EC PRIVATE KEY-----\n")
    assert result.stderr == ""  # stdout carries the key and nothing else is said
    assert list(tmp_path.iterdir()) == []


def test_key_private_rs256(run: RunFn, tmp_path: Path) -> None:
    result = run("key", "private", "--algo", "RS256", "-o", "rsa.pem")
    assert result.exit_code == 0, result.output
    data = (tmp_path / "rsa.pem").read_bytes()
    assert data.startswith(b"-----BEGIN RSA PRIVATE KEY-----\n")
    key = load_private_key_pem(data)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 4096
    assert result.stderr == "wrote RS256 (RSA 4096 bits) private key to rsa.pem (mode 0600)\n"


def test_key_private_algo_case_insensitive(run: RunFn) -> None:
    result = run("key", "private", "--algo", "es256", "--out", "-")
    assert result.exit_code == 0
    assert "EC PRIVATE KEY" in result.stdout


def test_key_private_refuses_to_replace_a_key(run: RunFn, tmp_path: Path) -> None:
    """A new signing key silently invalidates every token made with the old one."""
    assert run("key", "private").exit_code == 0
    out = tmp_path / "auth-key-private.pem"
    before = out.read_bytes()
    assert_usage_error(run("key", "private"), "--out auth-key-private.pem: file exists", "--force")
    assert out.read_bytes() == before
    # also for a dangling symlink: O_EXCL would not follow it, nor does the check
    (tmp_path / "link.pem").symlink_to(tmp_path / "nowhere.pem")
    assert_usage_error(run("key", "private", "-o", "link.pem"), "link.pem: file exists")
    assert not (tmp_path / "nowhere.pem").exists()


def test_key_private_force_replaces_and_tightens_existing_file(run: RunFn, tmp_path: Path) -> None:
    out = tmp_path / "auth-key-private.pem"
    out.write_text("old content that is much longer than nothing" * 20)
    out.chmod(0o644)
    result = run("key", "private", "--force")
    assert result.exit_code == 0, result.output
    assert "private key to auth-key-private.pem" in result.stderr
    assert mode(out) == 0o600
    assert load_private_key_pem(out.read_bytes())


def test_key_private_bad_algo(run: RunFn) -> None:
    assert_usage_error(run("key", "private", "--algo", "HS256"), "--algo", "HS256", "ES256")


def test_key_private_unwritable(run: RunFn, tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "k.pem"
    assert_usage_error(run("key", "private", "-o", str(target)), "--out", str(target))


# --- auth key public ---------------------------------------------------------------


def test_key_public_from_go_key_matches_go_output(run: RunFn, tmp_path: Path) -> None:
    (tmp_path / "auth-key-private.pem").write_bytes(GO_PRIVATE.read_bytes())
    result = run("key", "public")
    assert result.exit_code == 0, result.output
    out = tmp_path / "auth-key-public.pem"
    assert out.read_bytes() == GO_PUBLIC.read_bytes()
    assert result.stderr == (
        "wrote ES256 (EC P-256) public key of auth-key-private.pem to auth-key-public.pem\n"
    )
    assert mode(out) & 0o077 in (0o044, 0o004, 0o040, 0o000)


def test_key_public_stdin_to_stdout(run: RunFn) -> None:
    result = run("key", "public", "--in", "-", "--out", "-", input=GO_PRIVATE.read_bytes())
    assert result.exit_code == 0, result.output
    assert result.stdout == GO_PUBLIC.read_text()
    assert result.stderr == ""


def test_key_public_from_generated_rsa_key(run: RunFn, tmp_path: Path) -> None:
    assert run("key", "private", "--algo", "RS256").exit_code == 0
    result = run("key", "public", "-i", "auth-key-private.pem", "-o", "pub.pem")
    assert result.exit_code == 0, result.output
    data = (tmp_path / "pub.pem").read_bytes()
    assert data.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert isinstance(load_public_key_pem(data), rsa.RSAPublicKey)


def test_key_public_missing_input(run: RunFn) -> None:
    assert_usage_error(
        run("key", "public"), "--in auth-key-private.pem", "No such file or directory"
    )


def test_key_public_rejects_public_key_input(run: RunFn) -> None:
    result = run("key", "public", "-i", str(GO_PUBLIC), "-o", "-")
    assert_usage_error(result, f"--in {GO_PUBLIC}", "no private key block")


def test_key_public_bad_stdin(run: RunFn) -> None:
    result = run("key", "public", "-i", "-", "-o", "-", input=b"garbage")
    assert_usage_error(result, "--in <stdin>: no PEM block found")


# --- auth jwt token ----------------------------------------------------------------


def test_jwt_token_defaults(run: RunFn, tmp_path: Path) -> None:
    (tmp_path / "auth-key-private.pem").write_bytes(GO_PRIVATE.read_bytes())
    result = run("jwt", "token", "--agent-id", "4711")
    assert result.exit_code == 0, result.output
    out = tmp_path / "jwt.b64"
    token = out.read_text()
    assert not token.endswith("\n")
    assert mode(out) == 0o600
    claims = TokenVerifier(load_public_key(GO_PUBLIC)).verify_client(token, "4711")
    assert claims.role == "client"
    assert claims.audience == ()
    body = payload(token)
    assert body["exp"] == body["iat"] + 24 * 3600  # type: ignore[operator]
    assert "aud" not in body
    assert isinstance(body["exp"], int)
    expires = datetime.fromtimestamp(body["exp"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert result.stdout == ""
    assert result.stderr == (
        f"wrote client token for agent 4711 (ES256, expires {expires}) to jwt.b64 (mode 0600)\n"
    )


def test_jwt_token_all_flags_to_stdout(run: RunFn) -> None:
    result = run(
        "jwt", "token",
        "--agent-id", "4712",
        "--role", "agent",
        "--audience", "proxy-a",
        "--duration", "1h30m",
        "-i", str(GO_PRIVATE),
        "-o", "-",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    token = result.stdout
    assert token.count(".") == 2 and not token.endswith("\n")
    assert result.stderr == ""  # $(reverse-http auth jwt token ... -o -) gets the token only
    verifier = TokenVerifier(load_public_key(GO_PUBLIC), audience="proxy-a")
    claims = verifier.verify(token, "agent")
    assert claims.agent_id == "4712"
    assert claims.audience == ("proxy-a",)
    body = payload(token)
    assert body["exp"] == body["iat"] + 5400  # type: ignore[operator]
    assert body["aud"] == ["proxy-a"]


def test_jwt_token_with_rsa_key(run: RunFn, tmp_path: Path) -> None:
    assert run("key", "private", "--algo", "RS256", "-o", "rsa.pem").exit_code == 0
    assert run("key", "public", "-i", "rsa.pem", "-o", "rsa.pub").exit_code == 0
    result = run("jwt", "token", "--agent-id", "a1", "-i", "rsa.pem", "-o", "-")
    assert result.exit_code == 0, result.output
    verifier = TokenVerifier(load_public_key(tmp_path / "rsa.pub"))
    assert verifier.algorithm == "RS256"
    assert verifier.verify_client(result.stdout, "a1").agent_id == "a1"


def test_jwt_token_key_from_stdin(run: RunFn) -> None:
    result = run(
        "jwt", "token", "--agent-id", "x", "-i", "-", "-o", "-", input=GO_PRIVATE.read_bytes()
    )
    assert result.exit_code == 0, result.output
    TokenVerifier(load_public_key(GO_PUBLIC)).verify_client(result.stdout, "x")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        ([], ("--agent-id is required",)),
        (["--agent-id", ""], ("--agent-id is required",)),
        # ids no proxy would accept (and memcached could not store): refused at minting
        (["--agent-id", "a b"], ("--agent-id 'a b'", "a space at position 2")),
        (["--agent-id", "a\tb"], ("--agent-id", "a control character ('\\t')")),
        (["--agent-id", "x" * 129], ("--agent-id", "129 characters long, at most 128")),
        (["--agent-id", "agent/1"], ("--agent-id 'agent/1'", "'/' at position 6")),
        (["--agent-id", "a", "--role", "admin"], ("--role", "'admin'", "agent, client")),
        (["--agent-id", "a", "--duration", "1d"], ("--duration", "unknown unit 'd'")),
        (["--agent-id", "a", "--duration", "24"], ("--duration", "missing unit")),
        (["--agent-id", "a", "--duration", "-1h"], ("--duration", "must be positive")),
        (["--agent-id", "a", "--duration", "0"], ("--duration", "must be positive")),
        (["--agent-id", "a"], ("--in auth-key-private.pem", "No such file or directory")),
    ],
)
def test_jwt_token_usage_errors(run: RunFn, args: list[str], fragments: tuple[str, ...]) -> None:
    assert_usage_error(run("jwt", "token", *args), *fragments)


def test_jwt_token_bad_key_file(run: RunFn, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n")
    result = run("jwt", "token", "--agent-id", "a", "-i", str(bad))
    assert_usage_error(result, f"--in {bad}", "not a valid private key")
    assert not (tmp_path / "jwt.b64").exists()


def test_jwt_token_unsupported_key(run: RunFn, tmp_path: Path) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    from cryptography.hazmat.primitives import serialization

    key_file = tmp_path / "p384.pem"
    key_file.write_bytes(
        p384.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    result = run("jwt", "token", "--agent-id", "a", "-i", str(key_file))
    assert_usage_error(result, "secp384r1", "only P-256")


def test_help_lists_commands(run: RunFn) -> None:
    result = run("--help")
    assert result.exit_code == 0
    assert "key" in result.stdout and "jwt" in result.stdout
    for args in (["key", "private", "--help"], ["jwt", "token", "--help"]):
        text = run(*args).stdout
        assert "--out" in text


def test_jwt_token_accepts_every_allowed_punctuation(run: RunFn) -> None:
    agent_id = "Agent-7_x.y:z@example.com"
    result = run("jwt", "token", "--agent-id", agent_id, "-i", str(GO_PRIVATE), "-o", "-")
    assert result.exit_code == 0, result.output
    assert TokenVerifier(load_public_key(GO_PUBLIC)).verify(result.stdout, "client").agent_id == (
        agent_id
    )
