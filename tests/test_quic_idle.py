"""What an idle agent costs the proxy per keepalive: a padded packet (quic-go pads each
path MTU probe, and its first keepalives each come with one) is skipped without a Python
step per byte. Socket-free; counts interpreter steps, never time."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, SimpleNamespace
from typing import Any

import pytest
from aioquic.buffer import Buffer

from reverse_http.devcerts import CertFiles
from reverse_http.quic import TransportSettings
from reverse_http.quic.protocol import TunnelQuicConnection
from reverse_http.quic.settings import client_configuration
from tests.quic_helpers import client_tls

_QUIET = TransportSettings(liveness_timeout=0)


@contextmanager
def _lines_run_in(function_name: str) -> Iterator[list[int]]:
    """Counts the Python lines executed in functions of this name (a list of one)."""
    count = [0]

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_name != function_name:
            return None

        def lines(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "line":
                count[0] += 1
            return lines

        return lines

    sys.settrace(tracer)
    try:
        yield count
    finally:
        sys.settrace(None)


def _connection(certs: CertFiles) -> TunnelQuicConnection:
    return TunnelQuicConnection.for_transport(
        client_configuration(_QUIET, client_tls(certs), "localhost"), _QUIET
    )


@pytest.mark.parametrize(
    ("data", "start", "end"),
    [
        (b"\x00" * 1400, 0, 1400),  # padding to the end of the packet
        (b"\x06" + b"\x00" * 1400 + b"\x01", 1, 1401),  # after a frame, before a PING
        (b"\x00\x01", 0, 1),
        (b"\x01", 0, 0),  # a handler called on a non-zero byte consumes nothing
    ],
)
def test_padding_is_skipped_to_the_first_nonzero_byte(
    certs: CertFiles, data: bytes, start: int, end: int
) -> None:
    conn = _connection(certs)
    buf = Buffer(data=data)
    buf.seek(start)
    context = SimpleNamespace(quic_logger_frames=None)
    with _lines_run_in("_handle_padding_frame") as lines:
        conn._handle_padding_frame(context, 0, buf)  # type: ignore[arg-type]
    assert buf.tell() == end
    # aioquic's loop runs three lines per byte (over 4,000 for a probe's padding)
    assert lines[0] <= 10, lines[0]
