"""JWT issue/verify: Go-minted tokens verify, forgeries and misuse are refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jose import jwt as jose_jwt
from joserfc import jwt as rfc_jwt
from joserfc.jwk import ECKey, RSAKey

from reverse_http.auth.basic import AuthError
from reverse_http.auth.jwt import Claims, TokenVerifier, issue_token
from reverse_http.auth.keys import (
    PrivateKey,
    generate_private_key,
    load_private_key,
    load_public_key,
    public_key_of,
)

GO = Path(__file__).parent / "data" / "go-reference-jwt"
GO_PRIVATE_FILE = GO / "auth-key-private.pem"
GO_PUBLIC_FILE = GO / "auth-key-public.pem"
GO_HEADER_SEGMENT = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9"
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def go_token(role: str, agent_id: str) -> str:
    return (GO / f"auth-{role}-jwt-{agent_id}.b64").read_text()


@pytest.fixture(scope="module")
def go_private() -> PrivateKey:
    return load_private_key(GO_PRIVATE_FILE)


@pytest.fixture(scope="module")
def verifier() -> TokenVerifier:
    return TokenVerifier(load_public_key(GO_PUBLIC_FILE))


@pytest.fixture(scope="module")
def rsa_private() -> PrivateKey:
    return generate_private_key("RS256", rsa_bits=2048)


def clock_at(moment: datetime, offset: float = 0.0) -> TokenVerifier:
    public = load_public_key(GO_PUBLIC_FILE)
    return TokenVerifier(public, clock=lambda: moment.timestamp() + offset)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def decode_segment(seg: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))


def sign_claims(key: PrivateKey, claims: dict[str, Any], algorithm: str = "ES256") -> str:
    token = jose_jwt.encode(claims, key, algorithm=algorithm)
    assert isinstance(token, str)
    return token


def go_like_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "agent_id": "4711",
        "role": "client",
        "iss": "reverse-http",
        "sub": "4711",
        "exp": now + 3600,
        "nbf": now,
        "iat": now,
        "jti": str(uuid.uuid4()),
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def refused(verifier: TokenVerifier, token: str, role: str, reason: str) -> None:
    with pytest.raises(AuthError) as info:
        verifier.verify(token, role)  # type: ignore[arg-type]
    assert str(info.value) == reason
    assert token not in str(info.value) or not token


# --- the Go reference's tokens -----------------------------------------------------


@pytest.mark.parametrize("agent_id", ["4711", "4712"])
@pytest.mark.parametrize("role", ["agent", "client"])
def test_go_tokens_verify(verifier: TokenVerifier, role: str, agent_id: str) -> None:
    claims = verifier.verify(go_token(role, agent_id), role)  # type: ignore[arg-type]
    assert claims.agent_id == agent_id
    assert claims.role == role
    assert claims.issuer == "reverse-http"
    assert claims.subject == agent_id
    assert claims.audience == ()
    assert claims.expires_at == 2023133615
    assert claims.not_before == claims.issued_at == 1707773615
    assert claims.token_id is not None and uuid.UUID(claims.token_id).version == 4


def test_go_token_layout(verifier: TokenVerifier) -> None:
    header, payload, signature = go_token("client", "4711").split(".")
    assert decode_segment(header) == {"alg": "ES256", "typ": "JWT"}
    names = ["agent_id", "role", "iss", "sub", "exp", "nbf", "iat", "jti"]
    assert list(decode_segment(payload)) == names
    assert len(base64.urlsafe_b64decode(signature + "==")) == 64


def test_go_files_hold_the_jwt_itself_without_newline() -> None:
    raw = (GO / "auth-agent-jwt-4711.b64").read_bytes()
    assert raw.count(b".") == 2
    assert not raw.endswith(b"\n")


@pytest.mark.parametrize("agent_id", ["4711", "4712"])
def test_go_agent_tokens_refused_as_client(verifier: TokenVerifier, agent_id: str) -> None:
    refused(verifier, go_token("agent", agent_id), "client", "wrong role: expected client")
    with pytest.raises(AuthError, match="wrong role: expected client"):
        verifier.verify_client(go_token("agent", agent_id), agent_id)


@pytest.mark.parametrize("agent_id", ["4711", "4712"])
def test_go_client_tokens_refused_as_agent(verifier: TokenVerifier, agent_id: str) -> None:
    refused(verifier, go_token("client", agent_id), "agent", "wrong role: expected agent")


def test_verify_client_checks_username(verifier: TokenVerifier) -> None:
    assert verifier.verify_client(go_token("client", "4711"), "4711").agent_id == "4711"
    with pytest.raises(AuthError, match=r"^agent_id does not match username$"):
        verifier.verify_client(go_token("client", "4711"), "4712")
    with pytest.raises(AuthError, match=r"^agent_id does not match username$"):
        verifier.verify_client(go_token("client", "4711"), "")


def test_go_tokens_refused_with_another_key() -> None:
    other = TokenVerifier(public_key_of(generate_private_key("ES256")))
    refused(other, go_token("agent", "4711"), "agent", "invalid signature")


def test_verifier_accepts_private_key_and_pem_forms(go_private: PrivateKey) -> None:
    token = go_token("agent", "4711")
    assert TokenVerifier(go_private).verify(token, "agent").agent_id == "4711"
    assert TokenVerifier(GO_PUBLIC_FILE.read_bytes()).verify(token, "agent").agent_id == "4711"
    assert TokenVerifier(GO_PRIVATE_FILE.read_text()).verify(token, "agent").agent_id == "4711"


def test_pinned_algorithm_follows_key(rsa_private: PrivateKey, verifier: TokenVerifier) -> None:
    assert verifier.algorithm == "ES256"
    assert TokenVerifier(public_key_of(rsa_private)).algorithm == "RS256"


# --- forgeries ---------------------------------------------------------------------


def test_tampered_payload_refused(verifier: TokenVerifier) -> None:
    header, payload, signature = go_token("client", "4711").split(".")
    claims = decode_segment(payload)
    claims["agent_id"] = claims["sub"] = "4712"
    forged = f"{header}.{segment(claims)}.{signature}"
    refused(verifier, forged, "client", "invalid signature")


def test_payload_swapped_between_go_tokens_refused(verifier: TokenVerifier) -> None:
    header, _, signature = go_token("agent", "4711").split(".")
    _, payload, _ = go_token("agent", "4712").split(".")
    refused(verifier, f"{header}.{payload}.{signature}", "agent", "invalid signature")


def test_tampered_signature_refused(verifier: TokenVerifier) -> None:
    header, payload, signature = go_token("client", "4711").split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[10] ^= 0x01
    refused(verifier, f"{header}.{payload}.{b64url(bytes(raw))}", "client", "invalid signature")
    refused(verifier, f"{header}.{payload}.", "client", "invalid signature")
    refused(
        verifier, f"{header}.{payload}.{b64url(bytes(raw[:63]))}", "client", "invalid signature"
    )


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_refused(verifier: TokenVerifier, alg: str) -> None:
    _, payload, _ = go_token("client", "4711").split(".")
    unsigned = f"{segment({'alg': alg, 'typ': 'JWT'})}.{payload}."
    refused(verifier, unsigned, "client", f"algorithm not allowed: {alg}")


def test_missing_or_odd_alg_refused(verifier: TokenVerifier) -> None:
    _, payload, signature = go_token("client", "4711").split(".")
    refused(
        verifier,
        f"{segment({'typ': 'JWT'})}.{payload}.{signature}",
        "client",
        "algorithm not allowed: missing",
    )
    refused(
        verifier,
        f"{segment({'alg': 'ES256 '})}.{payload}.{signature}",
        "client",
        "algorithm not allowed: unrecognized",
    )
    refused(
        verifier,
        f"{segment({'alg': ['ES256']})}.{payload}.{signature}",
        "client",
        "algorithm not allowed: unrecognized",
    )
    refused(
        verifier,
        f"{segment({'alg': 'x' * 200})}.{payload}.{signature}",
        "client",
        "algorithm not allowed: unrecognized",
    )


def test_hs256_with_public_key_as_secret_refused(verifier: TokenVerifier) -> None:
    """The classic key-confusion forgery: HMAC keyed with the public key PEM."""
    payload = segment(go_like_claims())
    header = segment({"alg": "HS256", "typ": "JWT"})
    secrets = [
        GO_PUBLIC_FILE.read_bytes(),
        load_public_key(GO_PUBLIC_FILE).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    ]
    for secret in secrets:
        mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        refused(
            verifier, f"{header}.{payload}.{b64url(mac)}", "client", "algorithm not allowed: HS256"
        )


def test_rs256_header_refused_for_ec_key(verifier: TokenVerifier, rsa_private: PrivateKey) -> None:
    token = sign_claims(rsa_private, go_like_claims(), "RS256")
    refused(verifier, token, "client", "algorithm not allowed: RS256")


def test_es256_header_refused_for_rsa_key(go_private: PrivateKey, rsa_private: PrivateKey) -> None:
    rsa_verifier = TokenVerifier(public_key_of(rsa_private))
    refused(rsa_verifier, go_token("client", "4711"), "client", "algorithm not allowed: ES256")
    token = sign_claims(go_private, go_like_claims())
    refused(rsa_verifier, token, "client", "algorithm not allowed: ES256")


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "empty token"),
        ("abc", "malformed token"),
        ("a.b", "malformed token"),
        ("a.b.c.d", "malformed token"),
        ("!!!!.e30.", "malformed token"),
        ("e30=.e30.", "malformed token"),
        ("a.e30.", "malformed token"),
        ("bm90IGpzb24.e30.", "malformed token header"),
        ("W10.e30.", "malformed token header"),
    ],
)
def test_malformed_refused(verifier: TokenVerifier, token: str, reason: str) -> None:
    refused(verifier, token, "client", reason)


def test_deeply_nested_header_refused(verifier: TokenVerifier) -> None:
    header = b64url(b"[" * 100_000 + b"]" * 100_000)
    refused(verifier, f"{header}.e30.", "client", "malformed token header")


def test_signed_non_object_payload_refused(go_private: PrivateKey, verifier: TokenVerifier) -> None:
    header = segment({"alg": "ES256", "typ": "JWT"})
    payload = b64url(b"[1,2,3]")
    signing_input = f"{header}.{payload}".encode()
    from jose import jwk

    signature = jwk.construct(go_private, "ES256").sign(signing_input)
    refused(
        verifier, f"{header}.{payload}.{b64url(signature)}", "client", "malformed token payload"
    )


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_input_only_raises_auth_error(text: str) -> None:
    verifier = TokenVerifier(load_public_key(GO_PUBLIC_FILE))
    with pytest.raises(AuthError):
        verifier.verify(text, "client")


# --- time, audience, issuer and claim shapes ---------------------------------------


def test_expiry_has_five_second_leeway(go_private: PrivateKey) -> None:
    token = issue_token(go_private, "4711", "client", duration=timedelta(seconds=60), now=T0)
    expiry = T0 + timedelta(seconds=60)
    assert clock_at(expiry, -1).verify(token, "client").agent_id == "4711"
    assert clock_at(expiry, 4.9).verify(token, "client").agent_id == "4711"
    refused(clock_at(expiry, 5), token, "client", "token expired")
    refused(clock_at(expiry, 3600), token, "client", "token expired")


def test_expired_with_real_clock(go_private: PrivateKey, verifier: TokenVerifier) -> None:
    past = datetime.now(UTC) - timedelta(hours=2)
    token = issue_token(go_private, "4711", "client", duration=timedelta(hours=1), now=past)
    refused(verifier, token, "client", "token expired")
    recent = datetime.now(UTC) - timedelta(seconds=62)
    token = issue_token(go_private, "4711", "client", duration=timedelta(seconds=60), now=recent)
    assert verifier.verify(token, "client").agent_id == "4711"


def test_not_before_in_future_refused(go_private: PrivateKey) -> None:
    token = issue_token(go_private, "4711", "agent", now=T0)
    refused(clock_at(T0, -60), token, "agent", "token not yet valid")
    refused(clock_at(T0, -5.1), token, "agent", "token not yet valid")
    assert clock_at(T0, -4.9).verify(token, "agent").agent_id == "4711"
    assert clock_at(T0).verify(token, "agent").agent_id == "4711"


def test_not_before_in_future_with_real_clock(
    go_private: PrivateKey, verifier: TokenVerifier
) -> None:
    future = datetime.now(UTC) + timedelta(minutes=5)
    token = issue_token(go_private, "4711", "agent", now=future)
    refused(verifier, token, "agent", "token not yet valid")


def test_exp_and_nbf_are_optional_like_go(go_private: PrivateKey, verifier: TokenVerifier) -> None:
    token = sign_claims(go_private, go_like_claims(exp=None, nbf=None, iat=None))
    claims = verifier.verify(token, "client")
    assert claims.expires_at is None and claims.not_before is None


def test_audience(go_private: PrivateKey) -> None:
    public = load_public_key(GO_PUBLIC_FILE)
    with_aud = issue_token(go_private, "4711", "client", audience="proxy-a")
    without_aud = issue_token(go_private, "4711", "client")
    expecting_a = TokenVerifier(public, audience="proxy-a")
    expecting_b = TokenVerifier(public, audience="proxy-b")
    assert expecting_a.verify(with_aud, "client").audience == ("proxy-a",)
    refused(expecting_b, with_aud, "client", "invalid audience")
    refused(expecting_a, without_aud, "client", "missing audience")
    refused(expecting_a, go_token("client", "4711"), "client", "missing audience")
    assert TokenVerifier(public).verify(with_aud, "client").audience == ("proxy-a",)
    assert TokenVerifier(public, audience="").verify(without_aud, "client").agent_id == "4711"


def test_audience_string_or_list(go_private: PrivateKey) -> None:
    verifier = TokenVerifier(load_public_key(GO_PUBLIC_FILE), audience="a")
    assert verifier.verify(sign_claims(go_private, go_like_claims(aud="a")), "client")
    assert verifier.verify(sign_claims(go_private, go_like_claims(aud=["x", "a"])), "client")
    refused(
        verifier, sign_claims(go_private, go_like_claims(aud=["x"])), "client", "invalid audience"
    )
    refused(verifier, sign_claims(go_private, go_like_claims(aud=[])), "client", "missing audience")
    refused(
        verifier, sign_claims(go_private, go_like_claims(aud=7)), "client", "malformed claim: aud"
    )


def test_issuer(go_private: PrivateKey, verifier: TokenVerifier) -> None:
    refused(
        verifier,
        sign_claims(go_private, go_like_claims(iss="someone-else")),
        "client",
        "invalid issuer",
    )
    assert verifier.verify(sign_claims(go_private, go_like_claims(iss=None)), "client")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"agent_id": ""}, "missing or empty agent_id"),
        ({"agent_id": None}, "missing or empty agent_id"),
        ({"agent_id": 4711}, "missing or empty agent_id"),
        ({"role": None}, "wrong role: expected client"),
        ({"role": "admin"}, "wrong role: expected client"),
        ({"exp": "2030-01-01"}, "malformed claim: exp"),
        ({"exp": True}, "malformed claim: exp"),
        ({"exp": 10**400}, "malformed claim: exp"),
        ({"nbf": -(10**400)}, "malformed claim: nbf"),
        ({"nbf": [1]}, "malformed claim: nbf"),
        ({"iat": "now"}, "malformed claim: iat"),
        ({"iss": 1}, "malformed claim: iss"),
        ({"sub": 1}, "malformed claim: sub"),
        ({"jti": 1}, "malformed claim: jti"),
    ],
)
def test_claim_shapes(
    go_private: PrivateKey, verifier: TokenVerifier, overrides: dict[str, Any], reason: str
) -> None:
    refused(verifier, sign_claims(go_private, go_like_claims(**overrides)), "client", reason)


@pytest.mark.parametrize("wrapped", ["{}\n", "{}\r\n", "\n{}\n\n", "  {}\t", "{} \r\n"])
def test_surrounding_whitespace_accepted(verifier: TokenVerifier, wrapped: str) -> None:
    """A token file written by `echo` ends in a newline; the Go proxy accepts it (its base64
    decoder skips CR/LF), so a Go agent reading such a file must get through ours too."""
    token = wrapped.format(go_token("agent", "4711"))
    assert verifier.verify(token, "agent").agent_id == "4711"
    client = wrapped.format(go_token("client", "4711"))
    assert verifier.verify_client(client, "4711").agent_id == "4711"


@pytest.mark.parametrize("token", [" \t", "\n", "\r\n\t "])
def test_whitespace_only_is_an_empty_token(verifier: TokenVerifier, token: str) -> None:
    refused(verifier, token, "agent", "empty token")


def test_inner_whitespace_still_refused(verifier: TokenVerifier) -> None:
    header, payload, signature = go_token("agent", "4711").split(".")
    refused(verifier, f"{header}.{payload}.\n{signature}", "agent", "malformed token")
    refused(verifier, f"{header} .{payload}.{signature}", "agent", "malformed token")


@pytest.mark.parametrize("agent_id", [None, ""])
def test_agent_token_without_agent_id_is_an_empty_id(
    go_private: PrivateKey, verifier: TokenVerifier, agent_id: str | None
) -> None:
    """The reference closes such an agent with 400 "empty agent id", not 500."""
    from reverse_http.auth.authenticator import Authenticator
    from reverse_http.auth.jwt import EmptyAgentId

    token = sign_claims(go_private, go_like_claims(role="agent", agent_id=agent_id))
    with pytest.raises(EmptyAgentId):
        verifier.verify(token, "agent")
    assert Authenticator(verifier).agent_id_for(token) == ""
    # a wrong role is decided first, as by the reference: that is an auth failure
    with pytest.raises(AuthError, match="wrong role") as info:
        Authenticator(verifier).agent_id_for(sign_claims(go_private, go_like_claims(agent_id="")))
    assert not isinstance(info.value, EmptyAgentId)
    # a non-string id is malformed, not empty (golang-jwt cannot decode it either)
    with pytest.raises(AuthError) as info:
        Authenticator(verifier).agent_id_for(
            sign_claims(go_private, go_like_claims(role="agent", agent_id=4711))
        )
    assert not isinstance(info.value, EmptyAgentId)


def test_float_times_accepted(go_private: PrivateKey, verifier: TokenVerifier) -> None:
    now = time.time()
    token = sign_claims(go_private, go_like_claims(exp=now + 60.5, nbf=now - 0.5, iat=now))
    assert verifier.verify(token, "client").expires_at == now + 60.5


def test_error_never_contains_the_token(go_private: PrivateKey) -> None:
    verifier = TokenVerifier(load_public_key(GO_PUBLIC_FILE), audience="x")
    token = issue_token(go_private, "4711", "agent", now=T0 - timedelta(days=2))
    _, payload, signature = token.split(".")
    for bad in [token, f"{segment({'alg': 'none'})}.{payload}.", f"e30.{payload}.{signature}"]:
        with pytest.raises(AuthError) as info:
            verifier.verify(bad, "client")
        message = str(info.value)
        assert payload not in message and signature not in message


# --- tokens we issue ---------------------------------------------------------------


def test_issued_token_layout_matches_go(go_private: PrivateKey) -> None:
    token = issue_token(go_private, "4711", "agent", audience="aud-1", now=T0)
    header, payload, _ = token.split(".")
    assert header == GO_HEADER_SEGMENT
    claims = decode_segment(payload)
    iat = int(T0.timestamp())
    assert list(claims) == ["agent_id", "role", "iss", "sub", "aud", "exp", "nbf", "iat", "jti"]
    assert claims["agent_id"] == claims["sub"] == "4711"
    assert claims["role"] == "agent"
    assert claims["iss"] == "reverse-http"
    assert claims["aud"] == ["aud-1"]
    assert claims["iat"] == claims["nbf"] == iat
    assert claims["exp"] == iat + 24 * 3600
    assert uuid.UUID(claims["jti"]).version == 4


def test_issued_without_audience_has_no_aud(go_private: PrivateKey) -> None:
    claims = decode_segment(issue_token(go_private, "4711", "client").split(".")[1])
    assert "aud" not in claims


def test_issued_times_are_truncated_seconds(go_private: PrivateKey) -> None:
    moment = T0 + timedelta(microseconds=999_999)
    token = issue_token(go_private, "a", "client", duration=timedelta(minutes=90), now=moment)
    claims = decode_segment(token.split(".")[1])
    assert claims["iat"] == int(T0.timestamp())
    assert claims["exp"] - claims["iat"] == 5400


def test_jti_is_unique(go_private: PrivateKey) -> None:
    tokens = {
        decode_segment(issue_token(go_private, "a", "client").split(".")[1])["jti"]
        for _ in range(5)
    }
    assert len(tokens) == 5


@pytest.mark.parametrize("role", ["agent", "client"])
def test_issued_ec_token_verifies_with_us_and_joserfc(go_private: PrivateKey, role: str) -> None:
    token = issue_token(go_private, "4711", role, audience="aud-1")  # type: ignore[arg-type]
    ours = TokenVerifier(load_public_key(GO_PUBLIC_FILE), audience="aud-1").verify(token, role)  # type: ignore[arg-type]
    assert isinstance(ours, Claims) and ours.role == role

    public = load_public_key(GO_PUBLIC_FILE)
    rfc_key = ECKey.import_key(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    decoded = rfc_jwt.decode(token, rfc_key, algorithms=["ES256"])
    assert decoded.header == {"alg": "ES256", "typ": "JWT"}
    registry = rfc_jwt.JWTClaimsRegistry(
        leeway=5,
        iss={"essential": True, "value": "reverse-http"},
        sub={"essential": True, "value": "4711"},
        aud={"essential": True, "value": "aud-1"},
        exp={"essential": True},
        nbf={"essential": True},
        iat={"essential": True},
        jti={"essential": True},
    )
    registry.validate(decoded.claims)
    assert decoded.claims["agent_id"] == "4711"
    assert decoded.claims["role"] == role


def test_issued_rsa_token_verifies_with_us_and_joserfc(rsa_private: PrivateKey) -> None:
    assert isinstance(rsa_private, rsa.RSAPrivateKey)
    token = issue_token(rsa_private, "4712", "client")
    header = decode_segment(token.split(".")[0])
    assert header == {"alg": "RS256", "typ": "JWT"}
    verifier = TokenVerifier(public_key_of(rsa_private))
    assert verifier.verify_client(token, "4712").agent_id == "4712"
    rfc_key = RSAKey.import_key(
        rsa_private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    decoded = rfc_jwt.decode(token, rfc_key, algorithms=["RS256"])
    rfc_jwt.JWTClaimsRegistry(leeway=5, exp={"essential": True}).validate(decoded.claims)
    assert decoded.claims["sub"] == "4712"


def test_joserfc_minted_token_verifies_with_us(
    go_private: PrivateKey, verifier: TokenVerifier
) -> None:
    assert isinstance(go_private, ec.EllipticCurvePrivateKey)
    rfc_key = ECKey.import_key(
        go_private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    token = rfc_jwt.encode({"alg": "ES256"}, go_like_claims(role="agent"), rfc_key)
    assert verifier.verify(token, "agent").agent_id == "4711"
    refused(verifier, token, "client", "wrong role: expected client")


def test_issue_accepts_pem(go_private: PrivateKey, verifier: TokenVerifier) -> None:
    for pem in (GO_PRIVATE_FILE.read_bytes(), GO_PRIVATE_FILE.read_text()):
        assert verifier.verify(issue_token(pem, "4711", "agent"), "agent").agent_id == "4711"


def test_issue_rejects_bad_arguments(go_private: PrivateKey) -> None:
    with pytest.raises(ValueError, match="agent_id"):
        issue_token(go_private, "", "client")
    with pytest.raises(ValueError, match="role"):
        issue_token(go_private, "a", "admin")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        issue_token(go_private, "a", "client", duration=timedelta(0))
    with pytest.raises(ValueError, match="timezone"):
        issue_token(go_private, "a", "client", now=datetime(2030, 1, 1))
