"""A QUIC peer in its own process, for tests that SIGKILL it.

quic_peer.py server CERT KEY [PORT] -> prints its port, echoes streams
quic_peer.py client CA PORT      -> connects, sends "hi" on a stream, waits
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reverse_http.quic import (
    ClientTls,
    ServerSettings,
    ServerTls,
    TransportSettings,
    connect,
    serve_quic,
)
from tests.quic_helpers import echo_streams


async def main() -> None:
    role = sys.argv[1]
    async with trio.open_nursery() as nursery:
        if role == "server":
            settings = ServerSettings(tls=ServerTls(Path(sys.argv[2]), Path(sys.argv[3])))
            port = int(sys.argv[4]) if len(sys.argv) > 4 else 0
            server = await nursery.start(serve_quic, echo_streams, "127.0.0.1", port, settings)
            print(server.local_address[1], flush=True)
        else:
            conn = await connect(
                nursery,
                "127.0.0.1",
                int(sys.argv[3]),
                TransportSettings(),
                ClientTls(root_ca_file=Path(sys.argv[2]), server_name="localhost"),
            )
            stream = await conn.open_stream()
            await stream.send_all(b"hi")
            print("ready", flush=True)
            await trio.sleep_forever()


trio.run(main)
