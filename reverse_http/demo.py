"""`reverse-http demo`: proxy, agent and a local web target in one process.

For newcomers: no certificates, flags or services to prepare. Development
certificates are generated on the fly; everything listens on loopback only.
"""

from __future__ import annotations

import functools
import logging
import signal
import tempfile
from pathlib import Path

import trio

from .agent.client import run_agent
from .config import AgentConfig, AgentCredentials, ListenAddress, ProxyConfig
from .devcerts import make_dev_certs
from .errors import ConfigError
from .proxy.server import run_proxy
from .quic import ClientTls, ServerTls

log = logging.getLogger(__name__)

AGENT_ID = "demo"
PAGE = b"Hello from behind the agent! This page came through a QUIC tunnel.\n"


async def _web(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                request += chunk
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (len(PAGE), PAGE)
            )
        except trio.BrokenResourceError:
            pass


async def _fetch_through(proxy_port: int, target: str) -> bytes:
    """What curl -p -x would do: CONNECT, then a plain GET inside the tunnel."""
    auth = "ZGVtbzpub2F1dGg="  # base64("demo:noauth")
    stream = await trio.open_tcp_stream("127.0.0.1", proxy_port)
    async with stream:
        await stream.send_all(
            f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
            f"Proxy-Authorization: Basic {auth}\r\n\r\n"
            f"GET / HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


#: The proxy's listen flags, as the demo's own flags name them.
_DEMO_FLAGS = {
    "--http-proxy.listen-address": "--http-port",
    "--agent-server.listen-address": "--agent-port",
}


def _as_demo_flags(message: str) -> str:
    """The proxy blames its own flags (``--http-proxy.listen-address 127.0.0.1:3128``);
    the demo user typed ``--http-port 3128``."""
    for proxy_flag, demo_flag in _DEMO_FLAGS.items():
        prefix = f"{proxy_flag} 127.0.0.1:"
        if message.startswith(prefix):
            return f"{demo_flag} {message[len(prefix):]}"
    return message


async def run_demo(
    http_port: int = 3128, agent_port: int = 4242, *, once: bool = False, out: object = print
) -> bool:
    """Run the demo; with ``once``, check one request end to end and return whether it worked."""
    say = out if callable(out) else print
    with tempfile.TemporaryDirectory(prefix="reverse-http-demo-") as tmp:
        certs = make_dev_certs(Path(tmp))
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, host="127.0.0.1"), _web, 0
            )
            web_port = listeners[0].socket.getsockname()[1]
            try:
                proxy = await nursery.start(
                    functools.partial(run_proxy, handle_signals=False),
                    ProxyConfig(
                        agent_listen=ListenAddress("127.0.0.1", agent_port),
                        agent_tls=ServerTls(cert_file=certs.cert, key_file=certs.key),
                        http_listen=ListenAddress("127.0.0.1", http_port),
                        shutdown_grace_period=2.0,
                    ),
                )
            except ConfigError as exc:
                raise ConfigError(_as_demo_flags(str(exc))) from None
            agent = await nursery.start(
                functools.partial(run_agent, handle_signals=False),
                AgentConfig(
                    credentials=AgentCredentials(type="noauth", agent_id=AGENT_ID),
                    server_host="127.0.0.1",
                    server_port=proxy.agent_port,
                    tls=ClientTls(root_ca_file=certs.ca_cert, server_name="localhost"),
                ),
            )
            with trio.fail_after(15):
                await agent.connected.wait()
            target = f"127.0.0.1:{web_port}"
            answer = await _fetch_through(proxy.http_port, target)
            ok = answer.startswith(b"HTTP/1.1 200") and answer.endswith(PAGE)
            say(
                f"proxy:  clients on 127.0.0.1:{proxy.http_port}, "
                f"agents on udp 127.0.0.1:{proxy.agent_port}"
            )
            say(f"agent:  id {AGENT_ID!r}, connected over QUIC")
            say(f"target: a web page on {target}, reachable only through the agent")
            say(f"self-check through the tunnel: {'OK' if ok else 'FAILED'}")
            if not once:
                say("")
                say("Try it yourself:")
                say(
                    f"  curl -p -x http://{AGENT_ID}:noauth@127.0.0.1:{proxy.http_port} "
                    f"http://{target}/"
                )
                say("Press Ctrl-C to stop.")
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        break
                agent.stop()
                proxy.shutdown()
                await proxy.wait_stopped()
            nursery.cancel_scope.cancel()
    return ok
