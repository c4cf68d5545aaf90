"""A ``file:`` token is read again before every connection attempt and on SIGHUP (issue 13,
defect 3): a token renewed on disk is used without restarting the agent."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from conftest import free_port
from reverse_http.agent.client import AgentHandle, run_agent
from reverse_http.auth.jwt import issue_token
from reverse_http.auth.keys import generate_private_key, public_key_of, public_key_to_pem
from reverse_http.auth.tokenfile import TokenFile
from reverse_http.config import AgentCredentials, ListenAddress
from reverse_http.devcerts import CertFiles
from reverse_http.proxy.server import ProxyServer, run_proxy
from tests.tunnel_helpers import (
    LOOPBACK,
    agent_config,
    basic,
    echo_target,
    jwt_proxy_auth,
    open_connect,
    proxy_config,
)


def write_atomically(path: Path, text: str) -> None:
    """As a renewal job would: write a new file, rename it over the old one."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


async def wait_until(check: Callable[[], bool]) -> None:
    with trio.fail_after(15):
        while not check():
            await trio.sleep(0.02)


async def test_agent_uses_renewed_token_file_after_key_rotation(
    certs: CertFiles, tmp_path: Path
) -> None:
    old_key, new_key = generate_private_key(), generate_private_key()
    old_pub, new_pub = tmp_path / "old.pem", tmp_path / "new.pem"
    old_pub.write_bytes(public_key_to_pem(public_key_of(old_key)))
    new_pub.write_bytes(public_key_to_pem(public_key_of(new_key)))
    token_file = tmp_path / "agent.jwt"
    write_atomically(token_file, issue_token(old_key, "4711", "agent") + "\n")
    udp = free_port(socket.SOCK_DGRAM)

    def proxy_with(public_key: Path) -> object:
        return proxy_config(
            certs, agent_listen=ListenAddress(LOOPBACK, udp), auth=jwt_proxy_auth(public_key)
        )

    credentials = AgentCredentials(
        type="jwt", token=token_file.read_text().strip(), token_file=token_file
    )
    async with echo_target() as target, trio.open_nursery() as nursery:
        proxy: ProxyServer = await nursery.start(run_proxy, proxy_with(old_pub))
        agent: AgentHandle = await nursery.start(
            run_agent,
            agent_config(certs, udp, credentials=credentials, reconnect_max_backoff=0.2),
        )
        with trio.fail_after(10):
            await agent.connected.wait()
        # the proxy's key is rotated: the agent's token no longer passes
        proxy.shutdown()
        await proxy.wait_stopped()
        proxy = await nursery.start(run_proxy, proxy_with(new_pub))
        await wait_until(lambda: "refused authentication" in agent.last_state)
        assert agent.connects == 1
        # the renewal job writes a token from the new key: the next attempt uses it
        write_atomically(token_file, issue_token(new_key, "4711", "agent") + "\n")
        await wait_until(lambda: agent.connects == 2 and agent.is_connected)
        assert agent.token_file is not None and agent.token_file.reloads == 1
        client = basic("4711", issue_token(new_key, "4711", "client"))
        result = await open_connect(proxy.http_port, f"127.0.0.1:{target.port}", client)
        assert result.status == 200, result.head
        assert result.stream is not None
        await result.stream.aclose()
        nursery.cancel_scope.cancel()


def test_reload_keeps_last_good_token_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What SIGHUP does to a token file: a new token is used, a broken file keeps the old."""
    key = generate_private_key()
    path = tmp_path / "agent.jwt"
    first, second = issue_token(key, "4711", "agent"), issue_token(key, "4711", "agent")
    path.write_text(first)
    source = TokenFile(path, first)
    caplog.set_level(logging.INFO, "reverse_http.auth.tokenfile")
    assert source.reload(force=True) is False
    assert "re-read: unchanged" in caplog.text
    path.write_text(second + "\n")
    assert source.reload(force=True) is True
    assert source.token == second
    assert 'new token in use (agent id "4711", expires ' in caplog.text
    path.unlink()
    assert source.reload(force=True) is False
    assert source.token == second
    assert "does not exist; keeping the token read before" in caplog.text
    assert first not in caplog.text and second not in caplog.text
