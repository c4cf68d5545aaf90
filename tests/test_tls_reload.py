"""Certificate rotation: new handshakes get new material, live connections keep working."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
from pathlib import Path

import trio

from reverse_http.config import TcpTls
from reverse_http.devcerts import CertFiles, make_dev_certs
from reverse_http.quic import ClientTls, ServerTls
from tests.tunnel_helpers import agent_config, echo_target, noauth, tunnel


def install(src: CertFiles, cert: Path, key: Path) -> None:
    """Replace the files the way an operator (or certbot) would: write, then rename."""
    for source, dest in ((src.cert, cert), (src.key, key)):
        tmp = dest.with_suffix(".new")
        shutil.copyfile(source, tmp)
        os.replace(tmp, dest)


async def test_rotation_on_sighup_keeps_old_connections(certs: CertFiles, tmp_path: Path) -> None:
    other = make_dev_certs(tmp_path / "other-ca")
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "server.pem", live / "server-key.pem"
    shutil.copyfile(certs.cert, cert)
    shutil.copyfile(certs.key, key)
    overrides = {
        "agent_tls": ServerTls(cert_file=cert, key_file=key),
        "http_tls": TcpTls(cert_file=cert, key_file=key),
    }
    async with echo_target() as target, tunnel(certs, proxy_overrides=overrides) as t:
        old_agent = t.agents[0]
        old_conn = old_agent.connection
        install(other, cert, key)
        os.kill(os.getpid(), signal.SIGHUP)
        # a new agent that trusts only the new CA gets in
        new_agent = await t.start_agent(
            agent_config(
                other,
                t.agent_port,
                "4712",
                tls=ClientTls(root_ca_file=other.ca_cert, server_name="localhost"),
            )
        )
        with trio.fail_after(10):
            await new_agent.connected.wait()
        # the old connection was never interrupted and still carries traffic
        assert old_agent.connection is old_conn and old_conn is not None
        assert not old_conn.is_closed
        assert await _https_connect_status(t.http_port, other.ca_cert, target.port) == 200
        # a garbage file keeps the current (new) material
        cert.write_text("not a certificate")
        os.kill(os.getpid(), signal.SIGHUP)
        third = await t.start_agent(
            agent_config(
                other,
                t.agent_port,
                "4713",
                tls=ClientTls(root_ca_file=other.ca_cert, server_name="localhost"),
            )
        )
        with trio.fail_after(10):
            await third.connected.wait()


async def _https_connect_status(port: int, ca: Path, target: int) -> int:
    """CONNECT over TLS to the proxy (an "HTTPS proxy"), verifying with ``ca``."""
    ctx = ssl.create_default_context(cafile=str(ca))
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_hostname="localhost")
    async with stream:
        await stream.send_all(
            f"CONNECT 127.0.0.1:{target} HTTP/1.1\r\nHost: 127.0.0.1:{target}\r\n"
            f"Proxy-Authorization: {noauth()}\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(4096)
        return int(head.split()[1])
