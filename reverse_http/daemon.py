"""One lifecycle for the proxy, the agent and the LB server.

Every daemon runs inside :func:`lifecycle`, so a signal means the same everywhere:

- SIGTERM/SIGINT: graceful shutdown (the daemon drains); a second one cancels
  everything at once.
- SIGHUP: re-read what the daemon reads from files (TLS material, a token file). It
  never ends a daemon, also when there is nothing to re-read; a file that does not
  load keeps the old material (see :mod:`.tlsreload`).

Nursery tree (the daemon adds its own tasks to ``Lifecycle.nursery``)::

    lifecycle
    ├── signal hub            one per process (a trio system task): every daemon of the
    │                         process gets every signal, whichever started first
    ├── run_watchdog          systemd WATCHDOG=1 from the event loop itself
    ├── refresh loop          files changed -> reload (``--*.tls.refresh``)
    └── serve_metrics         /metrics, /healthz, /readyz (``--metrics.listen-address``)

Readiness: ``Lifecycle.ready()`` sends READY=1 once; ``/readyz`` follows the health
checks each daemon registers on its :class:`DaemonState`.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final, Protocol

import trio

from .config import ListenAddress
from .metrics import DaemonMetrics, Health, serve_metrics
from .systemd import Notifier, run_watchdog

__all__ = ["DaemonState", "Lifecycle", "Reloadable", "lifecycle"]

log = logging.getLogger(__name__)

SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Reloadable(Protocol):
    """Something a daemon re-reads from files: on SIGHUP (``force``) or when they changed."""

    @property
    def name(self) -> str: ...

    def reload(self, *, force: bool = False) -> bool:
        """Load again; True when new material is in use. Never raises for a bad file."""
        ...


@dataclass(kw_only=True)
class DaemonState:
    """What every daemon exposes to the CLI, tests and health checks."""

    #: The daemon's own metric set (each daemon narrows the type to its own).
    metrics: DaemonMetrics = field(default_factory=DaemonMetrics)
    health: Health = field(default_factory=Health)
    #: Listeners bound and not draining (readiness).
    listening: bool = False
    #: What :meth:`reload` (SIGHUP) re-reads.
    reloadables: list[Reloadable] = field(default_factory=list)
    _shutdown: trio.Event = field(default_factory=trio.Event)
    _stopped: trio.Event = field(default_factory=trio.Event)

    def shutdown(self) -> None:
        self._shutdown.set()

    def reload(self) -> None:
        """Re-read every file now (what SIGHUP does); a file that fails keeps the old one."""
        if not self.reloadables:
            log.info("reload: nothing to re-read (no certificate or token files configured)")
            return
        for item in self.reloadables:
            item.reload(force=True)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


@dataclass
class Lifecycle:
    """A running daemon's shared machinery; the daemon starts its own tasks in ``nursery``."""

    name: str
    state: DaemonState
    notifier: Notifier
    nursery: trio.Nursery

    def watch_files(self, items: Sequence[Reloadable], refresh: float) -> None:
        """Reload ``items`` on SIGHUP, and every ``refresh`` seconds (0: never) if changed."""
        self.state.reloadables.extend(items)
        if items and refresh > 0:
            self.nursery.start_soon(_refresh, list(items), refresh)

    def ready(self, status: str) -> None:
        """READY=1 for systemd (sent once, however often called)."""
        self.notifier.ready(status)

    async def ready_when(self, event: trio.Event, status: str) -> None:
        """READY=1 once ``event`` is set (e.g. the agent's first authenticated connection)."""
        await event.wait()
        self.ready(status)

    async def until_shutdown(self, status: str) -> None:
        """Wait for SIGTERM/SIGINT or ``shutdown()``; then STOPPING=1 and not ready."""
        await self.state._shutdown.wait()
        self.notifier.stopping(status)
        self.state.listening = False


@asynccontextmanager
async def lifecycle(
    name: str,
    state: DaemonState,
    notifier: Notifier,
    *,
    handle_signals: bool = True,
    metrics_listen: ListenAddress | None = None,
) -> AsyncIterator[Lifecycle]:
    """Signals, watchdog and metrics around a daemon's body; everything ends with the body.

    Without ``handle_signals`` the caller owns the signals and calls
    ``state.shutdown()`` / ``state.reload()`` itself.
    """
    async with trio.open_nursery() as nursery:
        life = Lifecycle(name, state, notifier, nursery)
        member = _Member(name, state, nursery.cancel_scope)
        if handle_signals:
            _SignalHub.join(member)
        try:
            if metrics_listen is not None:
                await nursery.start(
                    serve_metrics,
                    metrics_listen.host,
                    metrics_listen.port,
                    state.metrics,
                    state.health,
                )
            nursery.start_soon(run_watchdog, notifier)
            yield life
            nursery.cancel_scope.cancel()
        finally:
            if handle_signals:
                _SignalHub.leave(member)
    state._stopped.set()
    log.info("%s stopped", name)


async def _refresh(items: list[Reloadable], interval: float) -> None:
    while True:
        await trio.sleep(interval)
        for item in items:
            item.reload()


@dataclass(eq=False)
class _Member:
    name: str
    state: DaemonState
    everything: trio.CancelScope

    def deliver(self, signum: int) -> None:
        signame = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            log.info("received %s: reloading the %s's files", signame, self.name)
            self.state.reload()
        elif self.state._shutdown.is_set():
            log.warning("second signal (%s): %s exiting now", signame, self.name)
            self.everything.cancel()
        else:
            log.info("received %s: %s shutting down", signame, self.name)
            self.state.shutdown()


class _SignalHub:
    """One signal receiver per trio run, fanning each signal out to every daemon in it.

    trio hands a signal to the most recently opened receiver only, and closing receivers
    out of order restores the default action (SIGHUP: terminate) while others still run;
    one shared receiver, installed while any daemon runs, avoids both.
    """

    def __init__(self) -> None:
        self.members: list[_Member] = []
        self._scope = trio.CancelScope()
        self._receiver = trio.open_signal_receiver(*SIGNALS)
        # installed now, synchronously: a signal sent right after start-up is ours
        self._signals = self._receiver.__enter__()
        trio.lowlevel.spawn_system_task(self._run, name="reverse_http signal hub")

    @classmethod
    def join(cls, member: _Member) -> None:
        hub = _HUB.get()
        if hub is None:
            hub = cls()
            _HUB.set(hub)
        hub.members.append(member)

    @classmethod
    def leave(cls, member: _Member) -> None:
        hub = _HUB.get()
        if hub is None or member not in hub.members:
            return
        hub.members.remove(member)
        if not hub.members:
            _HUB.set(None)
            hub._close()

    def _close(self) -> None:
        self._scope.cancel()
        self._receiver.__exit__(None, None, None)

    async def _run(self) -> None:
        with self._scope:
            async for signum in self._signals:
                for member in list(self.members):
                    try:
                        member.deliver(signum)
                    except Exception:
                        # a system task must not raise: that would end the whole run
                        log.exception("handling signal %d failed", signum)


_HUB: trio.lowlevel.RunVar[_SignalHub | None] = trio.lowlevel.RunVar(
    "reverse_http_signal_hub", default=None
)
