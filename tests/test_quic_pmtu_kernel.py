"""Path MTU discovery against the real kernel: a network namespace whose loopback
carries 1280-byte packets, so every datagram above 1252 bytes is refused with
EMSGSIZE (the socket sets DF). Bulk data must still flow, at the largest size the
path carries, and the refusals must be counted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATH_MTU = 1280  # IPv4 + UDP headers: 28 bytes of it


def _can_make_namespaces() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "creating a network namespace needs root"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    return None


@pytest.fixture
def small_mtu_netns() -> str:
    why = _can_make_namespaces()
    if why is not None:
        pytest.skip(why)
    name = f"rh-pmtu-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "set", "lo", "mtu", str(PATH_MTU), "up"], check=True
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_bulk_data_through_a_1280_byte_path(small_mtu_netns: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                small_mtu_netns,
                sys.executable,
                "-c",
                "import tests.test_quic_pmtu_kernel as t; t.inside_the_namespace()",
                tmp,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["echoed"] == result["sent"] == 2 * 1024 * 1024
    for end in ("client", "server"):
        size = result[f"{end}_datagram_size"]
        assert PATH_MTU - 28 - 16 < size <= PATH_MTU - 28, result
    assert result["server_too_big"] >= 1  # the first probes were refused, and counted
    assert result["largest_late"] <= PATH_MTU - 28  # once found, nothing bigger is tried


def inside_the_namespace() -> None:
    """Run in the namespace: an echo of 2 MiB over QUIC; prints what happened as JSON."""
    import trio

    from reverse_http.devcerts import make_dev_certs
    from tests.quic_helpers import echo_streams, pattern, quic_pair, read_to_eof

    certs = make_dev_certs(Path(sys.argv[1]))
    data = pattern(2 * 1024 * 1024)

    async def main() -> dict[str, int]:
        async with quic_pair(certs, handler=echo_streams) as pair:
            sizes: list[int] = []
            endpoint = pair.server.endpoint
            send = endpoint.send_nowait

            def recording(datagrams: list[tuple[bytes, object]]) -> list[int]:
                sizes.extend(len(d) for d, _ in datagrams)
                return send(datagrams)

            pair.server.driver.send = recording
            stream = await pair.client.open_stream()
            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:

                    async def upload() -> None:
                        for i in range(0, len(data), 65536):
                            await stream.send_all(data[i : i + 65536])
                        await stream.send_eof()

                    nursery.start_soon(upload)
                    echoed = await read_to_eof(stream)
            assert echoed == data
            server_conn = next(iter(pair.server.driver.connections))
            return {
                "sent": len(data),
                "echoed": len(echoed),
                "client_datagram_size": pair.client.quic.pmtu.current,
                "server_datagram_size": server_conn.quic.pmtu.current,
                "server_too_big": endpoint.too_big_errors,
                "largest_late": max(sizes[-200:]),
            }

    print(json.dumps(trio.run(main)))
