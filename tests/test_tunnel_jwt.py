"""JWT end to end, with keys and tokens minted by the Go reference implementation."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio

from reverse_http.auth.jwt import issue_token
from reverse_http.auth.keys import load_private_key
from reverse_http.config import AgentCredentials
from reverse_http.devcerts import CertFiles
from tests.tunnel_helpers import (
    agent_config,
    basic,
    echo_target,
    jwt_proxy_auth,
    open_connect,
    tunnel,
)

GO = Path(__file__).parent / "data" / "go-reference-jwt"


def go_token(name: str) -> str:
    return (GO / name).read_text().strip()


def agent_jwt(agent_id: str) -> dict[str, object]:
    token = go_token(f"auth-agent-jwt-{agent_id}.b64")
    return {"credentials": AgentCredentials(type="jwt", token=token)}


def tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["agent_id"] = claims["sub"] = "4712"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def alg_none(agent_id: str) -> str:
    def seg(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{seg({'alg': 'none', 'typ': 'JWT'})}.{seg({'agent_id': agent_id, 'role': 'client'})}."


async def test_go_minted_tokens_work_and_misuse_is_refused(certs: CertFiles) -> None:
    proxy_auth = jwt_proxy_auth(GO / "auth-key-public.pem")
    private = load_private_key(GO / "auth-key-private.pem")
    expired = issue_token(
        private,
        "4711",
        "client",
        duration=timedelta(minutes=1),
        now=datetime.now(UTC) - timedelta(hours=1),
    )
    with_audience = issue_token(private, "4711", "client", audience="other-cluster")
    async with (
        echo_target() as target,
        tunnel(
            certs,
            agent_ids=("4711",),
            proxy_overrides={"auth": proxy_auth},
            agent_overrides=agent_jwt("4711"),
        ) as t,
    ):
        dest = f"127.0.0.1:{target.port}"

        async def status(user: str, password: str) -> int:
            with trio.fail_after(10):
                return (await open_connect(t.http_port, dest, basic(user, password))).status

        assert t.proxy.registry.get("4711") is not None  # Go agent token accepted
        assert await status("4711", go_token("auth-client-jwt-4711.b64")) == 200
        assert await status("4711", go_token("auth-client-jwt-4712.b64")) == 407  # other agent's
        assert await status("4712", go_token("auth-client-jwt-4711.b64")) == 407
        assert await status("4711", go_token("auth-agent-jwt-4711.b64")) == 407  # wrong role
        assert await status("4711", tamper(go_token("auth-client-jwt-4711.b64"))) == 407
        assert await status("4711", alg_none("4711")) == 407
        assert await status("4711", expired) == 407
        assert await status("4711", "not-a-jwt") == 407
        # no audience configured: a token that carries one is still fine (as in Go)
        assert await status("4711", with_audience) == 200


async def test_audience_is_enforced_when_configured(certs: CertFiles) -> None:
    private = load_private_key(GO / "auth-key-private.pem")
    right = issue_token(private, "4711", "client", audience="cluster-a")
    wrong = issue_token(private, "4711", "client", audience="cluster-b")
    agent_token = issue_token(private, "4711", "agent", audience="cluster-a")
    async with (
        echo_target() as target,
        tunnel(
            certs,
            proxy_overrides={"auth": jwt_proxy_auth(GO / "auth-key-public.pem", "cluster-a")},
            agent_overrides={"credentials": AgentCredentials(type="jwt", token=agent_token)},
        ) as t,
    ):
        dest = f"127.0.0.1:{target.port}"
        assert (await open_connect(t.http_port, dest, basic("4711", right))).status == 200
        assert (await open_connect(t.http_port, dest, basic("4711", wrong))).status == 407
        no_aud = go_token("auth-client-jwt-4711.b64")
        assert (await open_connect(t.http_port, dest, basic("4711", no_aud))).status == 407


async def test_agent_with_a_bad_token_is_refused_with_code_500(certs: CertFiles) -> None:
    client_token = go_token("auth-client-jwt-4711.b64")  # a client token is no agent token
    async with tunnel(
        certs,
        agent_ids=(),
        proxy_overrides={"auth": jwt_proxy_auth(GO / "auth-key-public.pem")},
    ) as t:
        cfg = agent_config(
            certs,
            t.agent_port,
            credentials=AgentCredentials(type="jwt", token=client_token),
        )
        handle = await t.start_agent(cfg)
        # the proxy closes the connection with 500; the agent says why and never registers
        with trio.fail_after(10):
            while "refused authentication: wrong role" not in handle.last_state:
                await trio.sleep(0.02)
        assert t.proxy.registry.get("4711") is None
        assert not handle.connected.is_set()
