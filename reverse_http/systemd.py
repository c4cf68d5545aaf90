"""systemd service notifications (``sd_notify``) and the watchdog, standard library only.

With ``Type=notify`` systemd considers a unit started only when the daemon says
``READY=1``, so ``systemctl start`` and units ordered after it wait until the daemon can
actually serve; ``STOPPING=1`` tells it a shutdown is deliberate; and with
``WatchdogSec=`` it restarts a daemon whose event loop stops sending ``WATCHDOG=1``.
See sd_notify(3) and ``docs/systemd/``.

The protocol is one datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket named by
``$NOTIFY_SOCKET``. It is simple enough not to warrant a dependency (libsystemd bindings
would also need a C library on every host, including those without systemd).

Only :meth:`Notifier.from_environ` looks at the environment; the CLI hands it
``os.environ`` so that tests and the rest of the package never depend on the process's
environment.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import Final

__all__ = ["Notifier", "run_watchdog"]

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV: Final = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV: Final = "WATCHDOG_USEC"
WATCHDOG_PID_ENV: Final = "WATCHDOG_PID"


class Notifier:
    """Sends state changes to systemd; every method is a no-op when not run by systemd.

    Sending never raises and never blocks: a notification is advisory, and a broken or
    full notify socket must not take the daemon down (systemd notices a missing
    ``READY=1`` or watchdog ping on its own). The first failure is logged at warning,
    later ones at debug so that a vanished socket does not flood the log every ping.
    """

    def __init__(self, address: bytes | None, watchdog_usec: int | None = None) -> None:
        """``address``: the socket address as the kernel wants it (abstract: leading NUL).

        Use :meth:`from_environ` in daemons; this constructor exists for tests and for
        callers that already parsed the environment.
        """
        self._address = address
        self._watchdog_usec = watchdog_usec if address is not None else None
        self._sock: socket.socket | None = None
        self._ready_sent = False
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier:
        """The notifier systemd asked for, from ``NOTIFY_SOCKET`` and ``WATCHDOG_*``.

        Invalid values disable the affected feature with a warning instead of failing:
        the daemon works without systemd, so it must also work with a confused one.
        """
        address = _parse_notify_socket(environ.get(NOTIFY_SOCKET_ENV, ""))
        watchdog_usec = None
        if address is not None:
            watchdog_usec = _parse_watchdog(
                environ.get(WATCHDOG_USEC_ENV, ""), environ.get(WATCHDOG_PID_ENV, "")
            )
        return cls(address, watchdog_usec)

    @property
    def enabled(self) -> bool:
        """True when a notify socket is configured (i.e. we run under ``Type=notify``)."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3)
        recommends, so one late ping is not fatal); ``None`` without a watchdog for us."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2_000_000

    def ready(self, status: str | None = None) -> None:
        """``READY=1``: start-up is complete. Only the first call sends anything, so each
        daemon may call it wherever it first becomes ready (e.g. after every reconnect)."""
        if self._ready_sent:
            return
        self._ready_sent = True
        self._send("READY=1", status)

    def stopping(self, status: str | None = None) -> None:
        """``STOPPING=1``: a graceful shutdown began; systemd then waits for the exit
        (up to ``TimeoutStopSec=``) instead of treating the drain as a hang."""
        self._send("STOPPING=1", status)

    def status(self, text: str) -> None:
        """``STATUS=...``: a one-line state shown by ``systemctl status``."""
        self._send(None, text)

    def watchdog_ping(self) -> None:
        """``WATCHDOG=1``: the daemon is alive. Sent only when the watchdog is ours,
        since systemd rejects pings from any other process with ``NotifyAccess=main``."""
        if self._watchdog_usec is not None:
            self._send("WATCHDOG=1", None)

    def close(self) -> None:
        """Close the socket; a later notification opens a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Notifier(address={self._address!r}, watchdog_interval={self.watchdog_interval!r})"

    # ------------------------------------------------------------------ internals

    def _send(self, state: str | None, status: str | None) -> None:
        if self._address is None:
            return
        lines = [] if state is None else [state]
        if status is not None:
            # One datagram holds newline-separated assignments: a newline in the text
            # would start a bogus assignment.
            lines.append("STATUS=" + " ".join(status.splitlines()))
        message = "\n".join(lines).encode("utf-8", "replace")
        try:
            if self._sock is None:
                # Kept open between sends so that a ping still works when the process
                # has run out of file descriptors (a loaded daemon is not a dead one).
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message, self._address)
        except OSError as exc:
            if self._warned:
                log.debug("systemd notification %r not sent: %s", message, exc)
            else:
                self._warned = True
                log.warning(
                    "cannot notify systemd at %r: %s (further failures logged at debug)",
                    _display(self._address),
                    exc,
                )


async def run_watchdog(notifier: Notifier) -> None:
    """Ping the systemd watchdog every ``notifier.watchdog_interval`` until cancelled.

    Run it in the daemon's main nursery: the pings come from the trio event loop itself,
    so a loop that is blocked or wedged stops them and systemd restarts the daemon.
    Returns at once when there is no watchdog. The first ping is sent immediately.
    """
    interval = notifier.watchdog_interval
    if interval is None:
        return
    import trio  # here: the CLI imports this module for every command

    deadline = trio.current_time()
    while True:
        notifier.watchdog_ping()
        # A fixed schedule: the time spent pinging does not accumulate as drift.
        deadline = max(deadline + interval, trio.current_time())
        await trio.sleep_until(deadline)


def _parse_notify_socket(value: str) -> bytes | None:
    """``/path`` or ``@abstract`` -> kernel address; anything else (``vsock:``...) -> None."""
    if not value:
        return None
    if value.startswith("@"):
        # Linux abstract namespace: the name is everything after a leading NUL.
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return os.fsencode(value)
    log.warning(
        "%s=%r is not supported (want a path or @name); not notifying", NOTIFY_SOCKET_ENV, value
    )
    return None


def _parse_watchdog(usec: str, pid: str) -> int | None:
    """``WATCHDOG_USEC`` in microseconds if the watchdog applies to this process."""
    if not usec:
        return None
    try:
        value = int(usec)
    except ValueError:
        value = 0
    if value <= 0:
        log.warning("%s=%r is not a positive integer; watchdog disabled", WATCHDOG_USEC_ENV, usec)
        return None
    if pid:
        # systemd sets WATCHDOG_PID to the main PID; a child that inherited the
        # environment (or a process started by ours) must not ping on its behalf.
        try:
            ours = int(pid) == os.getpid()
        except ValueError:
            ours = False
        if not ours:
            log.debug("%s=%s is not this process; watchdog disabled", WATCHDOG_PID_ENV, pid)
            return None
    return value


def _display(address: bytes) -> str:
    """The address as written in ``NOTIFY_SOCKET`` (abstract names with ``@``)."""
    if address.startswith(b"\0"):
        return "@" + os.fsdecode(address[1:])
    return os.fsdecode(address)
