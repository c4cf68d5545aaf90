"""The client-facing side shared by the proxy and the LB server.

:class:`SessionFrontend` owns the HTTP CONNECT listeners (TCP, optionally TLS)
and a nursery with one task per client session. Shutdown is in two steps:
``stop_accepting`` closes the listeners, ``drain`` lets running sessions finish
for a grace period and then cancels what is left.
"""

from __future__ import annotations

import errno
import functools
import logging
import ssl

import trio

from .accepting import accept_forever
from .config import ListenAddress, TcpTls
from .errors import ConfigError
from .netaddr import format_address
from .session import SessionPolicy, handle_client, refuse
from .tlsfiles import TlsConfigError, server_ssl_context, tls_file_flag
from .tlsreload import ReloadableFiles, SwappableServerContext

log = logging.getLogger(__name__)

Listener = trio.abc.Listener[trio.abc.Stream]


class SessionFrontend:
    def __init__(self, listeners: list[Listener], policy: SessionPolicy) -> None:
        self.listeners = listeners
        self.policy = policy
        #: Shutting down: new clients get 503 while running sessions finish.
        self.draining = False
        self.active_sessions = 0
        self.sessions_total = 0
        self._idle = trio.Event()
        self._idle.set()
        self._accept_scope = trio.CancelScope()
        self._sessions_scope: trio.CancelScope | None = None
        self.addresses = [_sockname(ln) for ln in listeners]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and serve until :meth:`drain` ends it."""
        async with trio.open_nursery() as sessions:
            self._sessions_scope = sessions.cancel_scope
            task_status.started()
            try:
                with self._accept_scope:
                    async with trio.open_nursery() as accepting:
                        for listener in self.listeners:
                            accepting.start_soon(
                                accept_forever, listener, sessions, self._session, "client"
                            )
            finally:
                with trio.CancelScope(shield=True):
                    for listener in self.listeners:
                        await listener.aclose()
            await trio.sleep_forever()

    def stop_accepting(self) -> None:
        self._accept_scope.cancel()

    async def drain(self, grace: float) -> None:
        """Answer new clients 503, wait up to ``grace`` seconds for running sessions,
        then stop accepting and cancel what is left."""
        self.draining = True
        if self.active_sessions:
            log.info(
                "shutting down: waiting up to %gs for %d session(s)", grace, self.active_sessions
            )
            with trio.move_on_after(grace):
                await self._idle.wait()
        self.stop_accepting()
        if self._sessions_scope is not None:
            self._sessions_scope.cancel()

    async def _session(self, stream: trio.abc.Stream) -> None:
        if self.draining:
            await refuse(stream, 503, "shutting down")
            return
        self.active_sessions += 1
        self.sessions_total += 1
        if self.active_sessions == 1:
            self._idle = trio.Event()
        try:
            await handle_client(stream, self.policy, _peer_of(stream))
        finally:
            self.active_sessions -= 1
            if self.active_sessions == 0:
                self._idle.set()


async def open_http_listeners(
    listen: ListenAddress, tls: TcpTls | None, flag: str = "--http-proxy"
) -> tuple[list[Listener], ReloadableFiles | None]:
    """Bind the CONNECT listeners; ConfigError names the flag on failure.

    With TLS, also returns the certificate files as reloadable material.
    """
    try:
        tcp = await trio.open_tcp_listeners(listen.port, host=listen.host or None)
    except OSError as exc:
        raise ConfigError(f"{flag}.listen-address {listen}: {os_reason(exc)}") from None
    if tls is None:
        return list(tcp), None
    try:
        swappable = http_tls_context(tls, flag)
    except ConfigError:
        for ln in tcp:
            await ln.aclose()
        raise
    files = ReloadableFiles(f"{flag.lstrip('-')} TLS", tls.files, swappable.reload)
    listeners: list[Listener] = [
        trio.SSLListener(ln, swappable.outer, https_compatible=True) for ln in tcp
    ]
    return listeners, files


def http_tls_context(tls: TcpTls, flag: str = "--http-proxy") -> SwappableServerContext:
    """The listeners' TLS, loaded and cross-checked (also what ``--check`` runs);
    ConfigError names the ``{flag}.tls.*`` flag of the bad file."""
    try:
        return SwappableServerContext(functools.partial(_server_context, tls, flag))
    except (OSError, ssl.SSLError, TlsConfigError) as exc:
        blamed = tls_file_flag(
            str(exc),
            flag,
            cert=tls.cert_file,
            key=tls.key_file,
            client_ca=tls.client_ca_file,
            client_crl=tls.client_crl_file,
        )
        raise ConfigError(f"{blamed}: {exc}") from None


def _server_context(tls: TcpTls, flag: str) -> ssl.SSLContext:
    return server_ssl_context(
        tls.cert_file,
        tls.key_file,
        key_password=tls.key_password,
        password_flag=f"{flag}.tls.key-password",
        client_ca_file=tls.client_ca_file,
        client_crl_file=tls.client_crl_file,
    )


def os_reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    return exc.strerror or str(exc)


def _sockname(listener: Listener) -> tuple[str, int]:
    inner = listener.transport_listener if isinstance(listener, trio.SSLListener) else listener
    assert isinstance(inner, trio.SocketListener)
    name = inner.socket.getsockname()
    return str(name[0]), int(name[1])


def _peer_of(stream: trio.abc.Stream) -> str:
    inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(inner, trio.SocketStream):
        try:
            return format_address(inner.socket.getpeername())
        except OSError:
            return "?"
    return "?"
