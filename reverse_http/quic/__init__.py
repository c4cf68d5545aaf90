"""QUIC transport: aioquic's sans-IO connection driven from trio UDP sockets.

The names are loaded on first use (PEP 562): importing a submodule such as
``reverse_http.quic.settings`` (which the typed config needs) must not pull in trio, the
connection machinery and aioquic's TLS stack, or every CLI command would pay for them at
start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import connect
    from .connection import CloseInfo, Connection, ConnectionError, StreamLimitError
    from .server import QuicServer, serve_quic
    from .settings import (
        DEFAULT_ALPN,
        AdmissionSettings,
        ClientTls,
        ServerSettings,
        ServerTls,
        TlsConfigError,
        TransportSettings,
    )
    from .stream import QuicStream

_WHERE = {
    "connect": "client",
    "CloseInfo": "connection",
    "Connection": "connection",
    "ConnectionError": "connection",
    "StreamLimitError": "connection",
    "QuicServer": "server",
    "serve_quic": "server",
    "DEFAULT_ALPN": "settings",
    "AdmissionSettings": "settings",
    "ClientTls": "settings",
    "ServerSettings": "settings",
    "ServerTls": "settings",
    "TlsConfigError": "settings",
    "TransportSettings": "settings",
    "QuicStream": "stream",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_ALPN",
    "AdmissionSettings",
    "ClientTls",
    "CloseInfo",
    "Connection",
    "ConnectionError",
    "QuicServer",
    "QuicStream",
    "ServerSettings",
    "ServerTls",
    "StreamLimitError",
    "TlsConfigError",
    "TransportSettings",
    "connect",
    "serve_quic",
]
