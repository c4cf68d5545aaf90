from __future__ import annotations

import trio

from reverse_http.devcerts import CertFiles
from tests.quic_helpers import echo_streams, quic_pair


async def test_echo_roundtrip(certs: CertFiles) -> None:
    async with quic_pair(certs, handler=echo_streams) as pair:
        stream = await pair.client.open_stream()
        await stream.send_all(b"hello quic")
        await stream.send_eof()
        got = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                got += chunk
        assert got == b"hello quic"
        await stream.aclose()
