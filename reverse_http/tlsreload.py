"""Certificate rotation without dropping connections.

New material is used for new handshakes only; established QUIC connections and
TLS sessions keep what they negotiated. A file that changed but does not load
(half-written, wrong key) leaves the old material in place and is logged once
until it changes again. When to reload (SIGHUP, ``--*.tls.refresh``) is the
daemon lifecycle's business (:mod:`.daemon`).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

Reload = Callable[[], None]


def _stamp(paths: Sequence[Path]) -> tuple[tuple[int, int], ...]:
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((-1, -1))
    return tuple(out)


class ReloadableFiles:
    """Files behind one piece of TLS material and how to load them."""

    def __init__(self, name: str, paths: Sequence[Path], load: Reload) -> None:
        self.name = name
        self.paths = list(paths)
        self._load = load
        self._stamp = _stamp(self.paths)
        self._failed_stamp: tuple[tuple[int, int], ...] | None = None
        self.reloads = 0
        #: Reload attempts whose files did not load (the old material stayed in use).
        self.failures = 0

    def reload(self, *, force: bool = False) -> bool:
        """Load again if the files changed (or ``force``); True when new material is in use."""
        stamp = _stamp(self.paths)
        if not force and stamp == self._stamp:
            return False
        try:
            self._load()
        except Exception as exc:
            self.failures += 1
            if stamp != self._failed_stamp:
                log.error(
                    "%s: keeping the current certificate; new files do not load: %s", self.name, exc
                )
                self._failed_stamp = stamp
            return False
        self._stamp = stamp
        self._failed_stamp = None
        self.reloads += 1
        log.info(
            "%s: loaded new TLS material from %s", self.name, ", ".join(str(p) for p in self.paths)
        )
        return True


class SwappableServerContext:
    """An SSLContext for listeners whose certificate (and client CA and CRL) can be
    replaced live.

    The listener keeps one outer context; its SNI callback (called with or without
    SNI) hands each new handshake the current inner context, so replacing the inner
    one affects new connections only. OpenSSL then verifies the client against the
    inner context's CA and CRL store; the verify mode and flags, which it keeps from
    the outer one, never change on a reload.
    """

    def __init__(self, build: Callable[[], ssl.SSLContext]) -> None:
        self._build = build
        self._current = build()
        self.outer = build()
        self.outer.sni_callback = self._pick

    def _pick(self, sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        sslobj.context = self._current

    def reload(self) -> None:
        self._current = self._build()
