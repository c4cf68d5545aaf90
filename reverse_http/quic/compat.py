"""Fail fast if aioquic's private internals we depend on have moved.

aioquic has no public API for send backpressure, consumption-driven receive
credit or liveness, so :mod:`reverse_http.quic` reads a few private attributes.
They were verified against aioquic 1.7.x; a different release must be
re-verified before the pin in ``pyproject.toml`` is widened.
"""

from __future__ import annotations

import aioquic
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import Limit, QuicConnection
from aioquic.quic.stream import QuicStream as _AioStream

VERIFIED_SERIES = "1.7."


class AioquicIncompatible(ImportError):
    """The installed aioquic does not have the internals reverse-http relies on."""


def check_aioquic() -> None:
    version = getattr(aioquic, "__version__", "unknown")
    if not version.startswith(VERIFIED_SERIES):
        raise AioquicIncompatible(
            f"reverse-http needs aioquic {VERIFIED_SERIES}x (installed: {version}); "
            "its private stream and flow-control attributes were verified only there"
        )
    missing = [
        name
        for name in (
            "_streams",
            "_write_stream_limits",
            "_on_max_stream_data_delivery",
            "_local_max_streams_bidi",
            "_local_max_data",
            "_loss",
            "_close_at",
            "_close_event",
            "_network_paths",
            "_quic_logger",
        )
        if not hasattr(QuicConnection, name)
        and name not in QuicConnection.__init__.__code__.co_names
    ]
    stream = _AioStream(stream_id=0, max_stream_data_local=1, max_stream_data_remote=1)
    for attr in (
        "_buffer_start",
        "_buffer_stop",
        "_reset_error_code",
        "highest_offset",
        "is_finished",
    ):
        if not hasattr(stream.sender, attr):
            missing.append(f"QuicStreamSender.{attr}")
    for attr in ("highest_offset", "is_finished"):
        if not hasattr(stream.receiver, attr):
            missing.append(f"QuicStreamReceiver.{attr}")
    for attr in ("max_stream_data_local", "max_stream_data_local_sent"):
        if not hasattr(stream, attr):
            missing.append(f"QuicStream.{attr}")
    limit = Limit(frame_type=0, name="probe", value=1)
    for attr in ("sent", "used", "value"):
        if not hasattr(limit, attr):
            missing.append(f"Limit.{attr}")
    if not hasattr(QuicConfiguration(is_client=True), "max_stream_data"):
        missing.append("QuicConfiguration.max_stream_data")
    if missing:
        raise AioquicIncompatible(
            f"aioquic {version} lacks internals reverse-http depends on: {', '.join(missing)}"
        )


check_aioquic()
