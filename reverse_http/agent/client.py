"""The agent daemon: dial the proxy, authenticate, serve tunnel streams, reconnect.

Nursery tree::

    run_agent
    └── daemon.lifecycle                     signals, SIGHUP reload, watchdog, metrics
        ├── ready_when connected             READY=1 after the first authentication
        └── reconnect loop (one attempt at a time)
            └── attempt nursery
                ├── QUIC connection tasks    (receive loop, Connection.run)
                └── streams nursery          one task per tunnel: serve_tunnel

SIGTERM/SIGINT close the connection with code 0 and exit. A ``file:`` token is read
again before every connection attempt and on SIGHUP.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import trio

from ..allowlist import warn_go_shadowed
from ..auth.tokenfile import TokenFile
from ..config import AgentConfig
from ..daemon import DaemonState, lifecycle
from ..errors import ConfigError
from ..logs import log_fields
from ..metrics import AgentMetrics
from ..quic import Connection, ConnectionError, connect
from ..quic.connection import CloseInfo
from ..quic.settings import TlsConfigError, certificate_alert, client_configuration
from ..systemd import Notifier
from ..tlsfiles import flag_of_file, read_certificates
from ..wire.auth import AUTH_TIMEOUT, AUTHENTICATED, FramingError, encode_message, read_message
from .tunnel import serve_tunnel

log = logging.getLogger(__name__)

CODE_CLIENT_CLOSED = 0
REASON_CLIENT_CLOSED = "client connection closed"
CODE_REPLACED = 409
#: Close codes of a proxy refusing the agent: 500 auth/registration failure, 400 empty id.
CODES_REFUSED = (500, 400)
REASON_PROXY_SHUTDOWN = "proxy server shutdown"
#: After the proxy replaced our connection (409: another connection authenticated with
#: our agent id), wait about this long, doubling with every replacement up to
#: REPLACED_MAX_BACKOFF. An agent that merely restarted never sees a 409 (its old
#: connection is dead), so repeats mean two agents share one id: the flap slows down
#: to a few replacements per REPLACED_MAX_BACKOFF instead of running at full speed.
REPLACED_INITIAL_BACKOFF = 5.0
REPLACED_MAX_BACKOFF = 300.0


class AuthRefused(Exception):
    """The proxy refused our credentials."""


@dataclass
class Backoff:
    """Exponential backoff with jitter: about ``initial``, doubling, capped at ``maximum``."""

    initial: float
    maximum: float
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * (2**self.attempt))
        self.attempt += 1
        return float(base * self.rng.uniform(0.5, 1.0))

    def reset(self) -> None:
        self.attempt = 0


@dataclass(kw_only=True)
class AgentHandle(DaemonState):
    """What a running agent exposes to tests and health checks."""

    config: AgentConfig
    metrics: AgentMetrics = field(default_factory=AgentMetrics)
    connection: Connection | None = None
    connected: trio.Event = field(default_factory=trio.Event)
    connects: int = 0
    #: The last connection ended because the proxy shut down (reconnect at once).
    proxy_draining: bool = False
    #: The last connection ended because the proxy replaced it (409).
    replaced: bool = False
    #: Connections of this agent the proxy replaced so far.
    replacements: int = 0
    #: The last state change, as logged ("connected to ...", "cannot connect ...").
    last_state: str = ""
    #: The ``file:`` token source, re-read before every attempt; None for a fixed secret.
    token_file: TokenFile | None = None

    @property
    def is_connected(self) -> bool:
        return self.connection is not None and not self.connection.is_closed

    @property
    def secret(self) -> str:
        """What the next attempt sends on the auth stream; never log this."""
        if self.token_file is not None:
            return self.token_file.token
        return self.config.credentials.secret

    def stop(self) -> None:
        self.shutdown()


class _StateLog:
    """Log each state change once; repeats of the same failure go to debug.

    Every line carries ``proxy`` and ``event`` fields (key=value in text, keys in JSON).
    """

    def __init__(self, handle: AgentHandle, target: str) -> None:
        self._handle = handle
        self._target = target

    def __call__(self, level: int, message: str, event: str) -> None:
        fields = log_fields(proxy=self._target, event=event)
        if message == self._handle.last_state:
            log.debug("%s (again)", message, extra=fields)
            return
        self._handle.last_state = message
        log.log(level, "%s", message, extra=fields)


async def run_agent(
    config: AgentConfig,
    *,
    handle_signals: bool = True,
    notifier: Notifier | None = None,
    task_status: trio.TaskStatus[AgentHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until SIGTERM/SIGINT (when ``handle_signals``) or ``AgentHandle.stop()``.

    Ready (systemd, /readyz) means connected and authenticated.
    """
    check_client_tls(config)
    warn_go_shadowed("--agent-client.host-whitelist", config.host_whitelist)
    handle = AgentHandle(config=config)
    handle.health.add_check("connected", lambda: handle.is_connected)
    creds = config.credentials
    if creds.token_file is not None and creds.token is not None:
        handle.token_file = TokenFile(creds.token_file, creds.token)
    async with lifecycle(
        "agent",
        handle,
        notifier or Notifier(None),
        handle_signals=handle_signals,
        metrics_listen=config.metrics_listen,
    ) as life:
        if handle.token_file is not None:
            life.watch_files([handle.token_file], 0)
        task_status.started(handle)
        life.nursery.start_soon(life.ready_when, handle.connected, "connected")
        life.nursery.start_soon(_reconnect_forever, handle)
        await life.until_shutdown("closing")
        if handle.connection is not None and not handle.connection.is_closed:
            with trio.move_on_after(5):
                await handle.connection.close(CODE_CLIENT_CLOSED, REASON_CLIENT_CLOSED)


def check_client_tls(config: AgentConfig) -> None:
    """Load the TLS files as a connection would (also what ``--check`` runs); ConfigError
    names the ``--agent-client.tls.file.*`` flag of the bad file."""
    try:
        if config.tls.root_ca_file is not None and not config.tls.insecure_skip_verify:
            # aioquic takes a file without any certificate and then fails every handshake
            read_certificates(config.tls.root_ca_file)
        client_configuration(config.transport, config.tls, config.server_host)
    except TlsConfigError as exc:
        flag = flag_of_file(
            str(exc),
            {
                "--agent-client.tls.file.root-ca": config.tls.root_ca_file,
                "--agent-client.tls.file.cert": config.tls.cert_file,
                "--agent-client.tls.file.key": config.tls.key_file,
            },
            "--agent-client.tls.file.*",
        )
        raise ConfigError(f"{flag}: {exc}") from None


async def _reconnect_forever(handle: AgentHandle) -> None:
    config = handle.config
    backoff = Backoff(config.reconnect_initial_backoff, config.reconnect_max_backoff)
    replaced_backoff = Backoff(REPLACED_INITIAL_BACKOFF, REPLACED_MAX_BACKOFF)
    target = f"{config.server_host}:{config.server_port}"
    state = _StateLog(handle, target)
    metrics = handle.metrics
    while True:
        started = trio.current_time()
        handle.proxy_draining = handle.replaced = False
        metrics.attempt()
        closes: list[CloseInfo | None] = []
        try:
            await _one_connection(handle, state, target, closes)
        except* AuthRefused as group:
            state(
                logging.ERROR,
                f"proxy {target} refused authentication: {group.exceptions[0]}",
                "auth_refused",
            )
        except* (
            ConnectionError,
            OSError,
            FramingError,
            trio.TooSlowError,
            trio.BrokenResourceError,
        ) as group:
            refusal = _certificate_refusal(group.exceptions, closes, handle.config)
            if refusal is not None:
                message = f"cannot connect to proxy {target}: {refusal}"
                state(logging.ERROR, message, "certificate_refused")
            else:
                reason = _reason(group.exceptions[0])
                message = f"cannot connect to proxy {target}: {reason}"
                state(logging.WARNING, message, "connect_failed")
        except* Exception as group:
            # A bug must not end the agent: log it and keep reconnecting.
            log.error("agent connection failed unexpectedly", exc_info=group)
        finally:
            if handle.connection is not None:
                metrics.disconnected(_final_stats(handle.connection))
            else:
                metrics.set_state("backoff")
            handle.connection = None
        lived = trio.current_time() - started
        if lived >= config.healthy_after:
            backoff.reset()
        if lived >= REPLACED_MAX_BACKOFF:
            replaced_backoff.reset()  # held the id that long: any earlier flap is over
        if handle.replaced:
            handle.replacements += 1
            metrics.was_replaced()
            delay = replaced_backoff.next_delay()
            log.warning(
                "proxy %s closed this connection: another connection authenticated as "
                "agent %s (two agents with one id?); replaced %d time(s), reconnecting in "
                "%.1fs",
                target,
                _agent_label(config),
                handle.replacements,
                delay,
                extra=log_fields(
                    proxy=target,
                    event="replaced",
                    replacements=handle.replacements,
                    backoff=round(delay, 3),
                ),
            )
            await trio.sleep(delay)
            continue
        if handle.proxy_draining:
            # The proxy is going away on purpose: find another one now.
            backoff.reset()
            continue
        delay = backoff.next_delay()
        log.debug("reconnecting in %.2fs", delay)
        await trio.sleep(delay)


def _final_stats(conn: Connection) -> dict[str, float] | None:
    """The ended connection's last QUIC stats (its losses count on), if it still has them."""
    try:
        return conn.stats()
    except Exception:
        return None


async def _one_connection(
    handle: AgentHandle, state: _StateLog, target: str, closes: list[CloseInfo | None]
) -> None:
    """One connection's life; ``closes`` gets why the connection was ending when the
    authentication failed (that, not the exception, says whether the proxy refused our
    certificate)."""
    config = handle.config
    async with trio.open_nursery() as attempt:
        conn = await connect(
            attempt, config.server_host, config.server_port, config.transport, config.tls
        )
        if handle.token_file is not None:
            handle.token_file.reload()  # a token renewed on disk is used at once
        try:
            await _authenticate(conn, handle.secret)
        except BaseException:
            closes.append(conn.ending)  # before this attempt's end aborts the connection
            raise
        # Connected (and ready) means authenticated, not merely past the QUIC handshake.
        handle.connection = conn
        handle.connects += 1
        handle.metrics.connected(conn.stats)
        handle.connected.set()
        state(
            logging.INFO,
            f"connected to proxy {target} as agent {_agent_label(config)}",
            "connected",
        )
        await _serve_streams(conn, handle)
        info = conn.close_info
        if info is not None and info.by_peer and info.reason == REASON_PROXY_SHUTDOWN:
            handle.proxy_draining = True
            state(logging.INFO, f"proxy {target} is shutting down; reconnecting", "proxy_shutdown")
        elif info is not None and info.by_peer and info.error_code == CODE_REPLACED:
            handle.replaced = True  # logged with its backoff by the reconnect loop
            handle.last_state = "replaced"
        elif info is not None and info.by_peer and info.error_code in CODES_REFUSED:
            # The Go reference answers "authenticated" before it refuses an empty agent id
            # (400) or fails to register the agent (500): a refusal all the same.
            reason = info.reason or f"code {info.error_code}"
            state(logging.ERROR, f"proxy {target} refused authentication: {reason}", "auth_refused")
        elif info is not None and not info.by_peer and info.reason == REASON_CLIENT_CLOSED:
            state(logging.INFO, f"connection to proxy {target} closed", "closed")
        else:
            state(logging.WARNING, f"connection to proxy {target} lost: {info}", "lost")
        attempt.cancel_scope.cancel()


def _leaves(failures: tuple[BaseException, ...]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in failures:
        found += _leaves(exc.exceptions) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


def _certificate_refusal(
    failures: tuple[BaseException, ...], closes: list[CloseInfo | None], config: AgentConfig
) -> str | None:
    """The "proxy refused our client certificate ..." line, when the attempt ended in a
    certificate alert from the proxy. TLS 1.3 clients finish their handshake before the
    server checks their certificate, so the alert usually ends the connection while we
    authenticate."""
    infos: list[CloseInfo | None] = [
        exc.info for exc in _leaves(failures) if isinstance(exc, ConnectionError)
    ]
    infos += closes
    for info in infos:
        if info is None or info.kind != "transport" or not info.by_peer:
            continue
        alert = certificate_alert(info.error_code)
        if alert is None:
            continue
        if config.tls.cert_file is None:
            ours = "none configured: see --agent-client.tls.file.cert and .key"
        else:
            ours = str(config.tls.cert_file)
        why = f": {info.reason}" if info.reason else ""
        return (
            f"proxy refused our client certificate ({ours}): TLS alert {alert}"
            f" (code 0x{info.error_code:x}){why}"
        )
    return None


async def _authenticate(conn: Connection, secret: str) -> None:
    try:
        with trio.fail_after(AUTH_TIMEOUT):
            stream = await conn.open_stream()
            await stream.send_all(encode_message(secret.encode("utf-8")))
            answer = await read_message(stream)
    except (trio.BrokenResourceError, FramingError, ConnectionError):
        info = conn.ending
        if info is not None and info.by_peer and info.error_code in CODES_REFUSED:
            raise AuthRefused(info.reason or f"code {info.error_code}") from None
        raise
    if answer != AUTHENTICATED:
        raise AuthRefused("unexpected answer to the authentication message")
    await stream.aclose()


async def _serve_streams(conn: Connection, handle: AgentHandle) -> None:
    config = handle.config

    async def accept(streams: trio.Nursery) -> None:
        while True:
            try:
                accepted = await conn.accept_streams()
            except ConnectionError:
                streams.cancel_scope.cancel()
                return
            for stream in accepted:
                streams.start_soon(
                    serve_tunnel,
                    stream,
                    config.host_whitelist,
                    config.dial_timeout,
                    handle.metrics,
                )

    async with trio.open_nursery() as streams:
        streams.start_soon(accept, streams)


def _agent_label(config: AgentConfig) -> str:
    creds = config.credentials
    return creds.agent_id if creds.type == "noauth" and creds.agent_id else "(from token)"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "authentication timed out"
    return str(exc) or type(exc).__name__
