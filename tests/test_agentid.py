"""The agent id rule, and that every way in (auth, minting, store keys) applies it."""

from __future__ import annotations

import string
from typing import Any

import aiomcache
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from jose import jwt as jose_jwt

from conftest import Memcached
from reverse_http import agentid
from reverse_http.auth.authenticator import Authenticator, AuthError
from reverse_http.auth.jwt import TokenVerifier, issue_token
from reverse_http.auth.keys import PrivateKey, generate_private_key
from reverse_http.store.base import InvalidRouteKey, MemoryStore, route_key
from reverse_http.store.memcached import MemcachedStore, memcached_key, open_memcached_store
from tests.tunnel_helpers import basic

ALPHABET = string.ascii_letters + string.digits + "-_.:@"
valid_ids = st.text(alphabet=ALPHABET, min_size=1, max_size=agentid.MAX_LENGTH)

GOOD = [
    "4711",
    "a",
    "agent-01.eu-west.example.com",
    "ops@example.org",
    "team:build_runner",
    "6f1c7a9e-2b3d-4e5f-8a9b-0c1d2e3f4a5b",
    "x" * agentid.MAX_LENGTH,
]
BAD = [
    ("", "must not be empty"),
    ("bad id", "a space at position 4"),
    ("a\x00b", "a control character ('\\x00') at position 2"),
    ("line\n", "a control character ('\\n') at position 5"),
    ("tab\there", "a control character ('\\t')"),
    ("del\x7f", "a control character ('\\x7f')"),
    ("agent/1", "'/' at position 6"),
    ("agenté", "'\\xe9' at position 6"),
    ("x" * (agentid.MAX_LENGTH + 1), f"129 characters long, at most {agentid.MAX_LENGTH}"),
    ("x" * 251, "251 characters long"),
]


@pytest.mark.parametrize("agent_id", GOOD)
def test_valid_ids(agent_id: str) -> None:
    assert agentid.problem(agent_id) is None
    assert agentid.check(agent_id) == agent_id


@pytest.mark.parametrize(("agent_id", "reason"), BAD)
def test_invalid_ids_say_why(agent_id: str, reason: str) -> None:
    problem = agentid.problem(agent_id)
    assert problem is not None and reason in problem
    with pytest.raises(agentid.InvalidAgentId, match="invalid agent id") as caught:
        agentid.check(agent_id)
    assert reason in str(caught.value)


def test_the_bound_fits_memcached_keys() -> None:
    assert agentid.MAX_KEY_BYTES == 250
    assert len(memcached_key("x" * agentid.MAX_LENGTH)) <= agentid.MAX_KEY_BYTES


@given(st.text(max_size=agentid.MAX_LENGTH + 20))
@example("bad id")
@example("x" * (agentid.MAX_LENGTH + 1))
def test_rule_is_exactly_the_alphabet_and_the_length(agent_id: str) -> None:
    expected = 0 < len(agent_id) <= agentid.MAX_LENGTH and all(c in ALPHABET for c in agent_id)
    assert agentid.is_valid(agent_id) is expected


@given(valid_ids)
def test_every_valid_id_is_a_key_memcached_accepts(agent_id: str) -> None:
    key = memcached_key(agent_id)
    assert key.decode("ascii") == agent_id == route_key(agent_id)
    assert len(key) <= agentid.MAX_KEY_BYTES
    aiomcache.Client("127.0.0.1", 1)._validate_key(key)  # raises for a key memcached refuses


@given(st.text())
def test_invalid_ids_never_become_store_keys(agent_id: str) -> None:
    if agentid.is_valid(agent_id):
        return
    with pytest.raises(InvalidRouteKey):
        route_key(agent_id)
    with pytest.raises(InvalidRouteKey):
        memcached_key(agent_id)


@given(st.text(max_size=400))
def test_shown_ids_are_safe_for_a_log_line(agent_id: str) -> None:
    text = agentid.shown(agent_id)
    assert text.isascii() and text.isprintable()
    assert len(text) < 100


# --- authentication ----------------------------------------------------------------


@pytest.fixture(scope="module")
def key() -> PrivateKey:
    return generate_private_key("ES256")


def raw_token(key: PrivateKey, agent_id: str, role: str) -> str:
    """A validly signed token for any id: what ``issue_token`` now refuses to mint."""
    claims: dict[str, Any] = {"agent_id": agent_id, "role": role, "sub": agent_id}
    return str(jose_jwt.encode(claims, key, algorithm="ES256"))


@pytest.mark.parametrize(("agent_id", "reason"), BAD[1:])
def test_noauth_agents_with_a_bad_id_are_refused(agent_id: str, reason: str) -> None:
    with pytest.raises(AuthError, match="invalid agent id") as caught:
        Authenticator(None).agent_id_for(agent_id)
    assert reason in str(caught.value)


def test_empty_noauth_id_is_left_to_the_proxy_close_code() -> None:
    assert Authenticator(None).agent_id_for("") == ""


@pytest.mark.parametrize(("agent_id", "reason"), BAD[1:])
def test_jwt_agents_with_a_bad_id_are_refused(key: PrivateKey, agent_id: str, reason: str) -> None:
    auth = Authenticator(TokenVerifier(key))
    with pytest.raises(AuthError, match="invalid agent id") as caught:
        auth.agent_id_for(raw_token(key, agent_id, "agent"))
    assert reason in str(caught.value)
    assert auth.agent_id_for(raw_token(key, "4711", "agent")) == "4711"


@pytest.mark.parametrize(("agent_id", "reason"), BAD[1:])
def test_clients_naming_a_bad_id_are_refused(key: PrivateKey, agent_id: str, reason: str) -> None:
    for auth, password in [
        (Authenticator(None), "noauth"),
        (Authenticator(TokenVerifier(key)), raw_token(key, agent_id, "client")),
    ]:
        with pytest.raises(
            AuthError, match=r"invalid agent id .* in proxy authorization"
        ) as caught:
            auth.check_client(basic(agent_id, password))
        assert reason in str(caught.value)


@pytest.mark.parametrize("agent_id", GOOD)
def test_good_ids_pass_both_auth_types(key: PrivateKey, agent_id: str) -> None:
    jwt_auth = Authenticator(TokenVerifier(key))
    assert Authenticator(None).agent_id_for(agent_id) == agent_id
    assert jwt_auth.agent_id_for(issue_token(key, agent_id, "agent")) == agent_id
    if ":" in agent_id:
        return  # see test_a_colon_cannot_be_named_in_basic_credentials
    assert Authenticator(None).check_client(basic(agent_id, "noauth")) == agent_id
    assert jwt_auth.check_client(basic(agent_id, issue_token(key, agent_id, "client"))) == agent_id


def test_a_colon_cannot_be_named_in_basic_credentials(key: PrivateKey) -> None:
    """Basic credentials end the user at the first colon (RFC 7617, and the reference)."""
    assert Authenticator(None).check_client(basic("team:build_runner", "noauth")) == "team"
    token = issue_token(key, "team:build_runner", "client")
    with pytest.raises(AuthError):
        Authenticator(TokenVerifier(key)).check_client(basic("team:build_runner", token))


@pytest.mark.parametrize(("agent_id", "reason"), BAD[1:])
def test_tokens_are_not_minted_for_bad_ids(key: PrivateKey, agent_id: str, reason: str) -> None:
    with pytest.raises(ValueError, match="agent_id") as caught:
        issue_token(key, agent_id, "agent")
    assert reason in str(caught.value)


# --- stores ------------------------------------------------------------------------


async def test_memory_store_refuses_bad_keys() -> None:
    store = MemoryStore()
    with pytest.raises(InvalidRouteKey, match="a space"):
        await store.set_route("bad id", "proxy-a:3128")
    with pytest.raises(InvalidRouteKey):
        await store.refresh_route("bad id", "proxy-a:3128")
    assert await store.get_route("bad id") is None
    assert await store.delete_route("bad id", "proxy-a:3128") is False


async def test_bad_keys_never_reach_memcached(
    memcached: Memcached, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[bytes] = []
    real_call = MemcachedStore._call

    async def recording(self: MemcachedStore, key: bytes, method: str, *a: Any, **k: Any) -> Any:
        sent.append(key)
        return await real_call(self, key, method, *a, **k)

    monkeypatch.setattr(MemcachedStore, "_call", recording)
    async with open_memcached_store((memcached.address,), request_timeout=1, ttl=30) as store:
        for agent_id, _ in BAD:
            with pytest.raises(InvalidRouteKey):
                await store.set_route(agent_id, "proxy-a:3128")
            with pytest.raises(InvalidRouteKey):
                await store.refresh_route(agent_id, "proxy-a:3128")
            assert await store.get_route(agent_id) is None
            assert await store.delete_route(agent_id, "proxy-a:3128") is False
        assert sent == []
        # nothing was torn down: the same connections serve valid keys, the longest too
        for agent_id in GOOD:
            await store.set_route(agent_id, "proxy-a:3128")
            assert await store.get_route(agent_id) == "proxy-a:3128"
