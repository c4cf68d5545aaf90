"""``Proxy-Authorization: Basic`` parsing."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reverse_http.auth.basic import AuthError, parse_proxy_authorization


def basic(credentials: str | bytes, scheme: str = "Basic") -> str:
    raw = credentials.encode() if isinstance(credentials, str) else credentials
    return f"{scheme} {base64.b64encode(raw).decode()}"


def test_user_and_password() -> None:
    assert parse_proxy_authorization(basic("4711:noauth")) == ("4711", "noauth")


def test_splits_on_first_colon() -> None:
    assert parse_proxy_authorization(basic("4711:a:b::c")) == ("4711", "a:b::c")


def test_empty_password_and_empty_user_are_returned() -> None:
    assert parse_proxy_authorization(basic("4711:")) == ("4711", "")
    assert parse_proxy_authorization(basic(":pw")) == ("", "pw")


@pytest.mark.parametrize("scheme", ["Basic", "basic", "BASIC", "bAsIc"])
def test_scheme_is_case_insensitive(scheme: str) -> None:
    assert parse_proxy_authorization(basic("u:p", scheme)) == ("u", "p")


def test_surrounding_whitespace_tolerated() -> None:
    value = f"  Basic   {base64.b64encode(b'u:p').decode()}  "
    assert parse_proxy_authorization(value) == ("u", "p")


def test_bytes_header_value() -> None:
    assert parse_proxy_authorization(basic("u:p").encode()) == ("u", "p")


def test_utf8_credentials() -> None:
    assert parse_proxy_authorization(basic("agent-é:pässword")) == ("agent-é", "pässword")


def test_jwt_password() -> None:
    token = "eyJhbGciOiJFUzI1NiJ9.eyJhZ2VudF9pZCI6IjQ3MTEifQ.c2ln"
    assert parse_proxy_authorization(basic(f"4711:{token}")) == ("4711", token)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "missing Proxy-Authorization"),
        ("", "missing Proxy-Authorization"),
        ("   ", "missing Proxy-Authorization"),
        ("Basic", "missing Basic credentials"),
        ("Basic   ", "missing Basic credentials"),
        ("Bearer abc", "unsupported auth scheme: Bearer"),
        ("Digest username=x", "unsupported auth scheme: Digest"),
        ("Basi\u00e7 abc", "unsupported auth scheme: unrecognized"),
        # a bare token sent without a scheme is the secret: never repeat it
        ("s3cr3tT0k3n", "unsupported auth scheme: unrecognized"),
        ("Basic !!!!", "malformed Basic credentials: invalid base64"),
        ("Basic dTpw=", "malformed Basic credentials: invalid base64"),
        ("Basic dTpwdw", "malformed Basic credentials: invalid base64"),
        ("Basic dTp wdw==", "malformed Basic credentials: invalid base64"),
        ("Basic dTpwdw-_", "malformed Basic credentials: invalid base64"),
        ("Basic d\u00e9pw", "malformed Basic credentials: invalid base64"),
        (basic(b"\xff\xfe:x"), "malformed Basic credentials: not UTF-8"),
        (basic("nocolon"), "malformed Basic credentials: missing ':'"),
        (basic(""), "missing Basic credentials"),
        (b"Basic \xff", "malformed Proxy-Authorization"),
    ],
)
def test_refusals(value: str | bytes | None, reason: str) -> None:
    with pytest.raises(AuthError) as info:
        parse_proxy_authorization(value)
    assert str(info.value) == reason


def test_error_never_contains_the_password() -> None:
    secret = "s3cr3t-token"
    for value in [basic(f"{secret}"), f"Basic {secret}!", basic(b"\xff" + secret.encode())]:
        with pytest.raises(AuthError) as info:
            parse_proxy_authorization(value)
        assert secret not in str(info.value)


@given(st.text().filter(lambda u: ":" not in u), st.text())
def test_round_trip(user: str, password: str) -> None:
    assert parse_proxy_authorization(basic(f"{user}:{password}")) == (user, password)


@given(st.text(max_size=60))
def test_arbitrary_input_only_raises_auth_error(value: str) -> None:
    try:
        user, password = parse_proxy_authorization(value)
    except AuthError:
        return
    assert isinstance(user, str) and isinstance(password, str)
