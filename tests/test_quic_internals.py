"""The aioquic internals reverse-http relies on are all checked at import, in one place."""

from __future__ import annotations

from pathlib import Path

import aioquic
import pytest
from aioquic.quic.connection import QuicConnection
from aioquic.quic.stream import QuicStreamSender

from reverse_http.quic import protocol


def test_the_pinned_aioquic_has_every_internal_we_use() -> None:
    protocol.check_aioquic()  # raises AioquicIncompatible naming what moved


@pytest.mark.parametrize("name", ["_write_application", "_handle_max_data_frame", "_streams_queue"])
def test_a_moved_connection_internal_is_named(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    if hasattr(QuicConnection, name):
        monkeypatch.delattr(QuicConnection, name)
    else:  # set in __init__: hide it from the constructor's names
        code = QuicConnection.__init__.__code__
        names = tuple(n if n != name else "_renamed" for n in code.co_names)
        monkeypatch.setattr(QuicConnection.__init__, "__code__", code.replace(co_names=names))
    with pytest.raises(protocol.AioquicIncompatible, match=rf"QuicConnection\.{name}"):
        protocol.check_aioquic()


@pytest.mark.parametrize(
    ("method", "name", "named"),
    [
        ("reset", "_W_max", r"CubicCongestionControl\.reset\._W_max"),
        ("on_packet_sent", "reset", r"CubicCongestionControl\.on_packet_sent\.reset"),
    ],
)
def test_a_cubic_restart_that_moved_is_named(
    monkeypatch: pytest.MonkeyPatch, method: str, name: str, named: str
) -> None:
    """Our initial window overrides Cubic's reset(): if aioquic stopped calling it after an
    idle period, or reset() stopped setting _W_max, ours would silently not apply."""
    from aioquic.quic.congestion.cubic import CubicCongestionControl

    function = getattr(CubicCongestionControl, method)
    code = function.__code__
    names = tuple(n if n != name else "_renamed" for n in code.co_names)
    monkeypatch.setattr(function, "__code__", code.replace(co_names=names))
    with pytest.raises(protocol.AioquicIncompatible, match=named):
        protocol.check_aioquic()


def test_a_pacer_without_its_datagram_size_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Path MTU discovery sets it; renamed, the assignment would silently do nothing."""
    from aioquic.quic.recovery import QuicPacketPacer

    code = QuicPacketPacer.__init__.__code__
    names = tuple(n if n != "_max_datagram_size" else "_renamed" for n in code.co_names)
    monkeypatch.setattr(QuicPacketPacer.__init__, "__code__", code.replace(co_names=names))
    with pytest.raises(protocol.AioquicIncompatible, match=r"QuicPacketPacer\._max_datagram_size"):
        protocol.check_aioquic()


@pytest.mark.parametrize("name", ["_buffer_start", "_acked"])
def test_a_moved_stream_internal_is_named(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """``_acked`` (data acknowledged past a gap) sizes a stream's writer room: renamed,
    stream_acked_ahead would fail on every ack past a loss."""
    original = QuicStreamSender.__init__

    def without_it(self: QuicStreamSender, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        delattr(self, name)

    monkeypatch.setattr(QuicStreamSender, "__init__", without_it)
    with pytest.raises(protocol.AioquicIncompatible, match=rf"QuicStreamSender\.{name}"):
        protocol.check_aioquic()


def test_another_aioquic_release_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioquic, "__version__", "1.8.0")
    with pytest.raises(protocol.AioquicIncompatible, match=r"needs aioquic 1\.7\.x"):
        protocol.check_aioquic()


def test_only_the_protocol_module_reaches_into_aioquic() -> None:
    """Private aioquic names appear in reverse_http/quic/protocol.py and nowhere else."""
    import pathlib
    import re

    package = pathlib.Path(protocol.__file__).resolve().parent.parent
    private_import = re.compile(
        r"from aioquic[\w.]* import[^\n]*\b_\w+|(from|import) aioquic(\.\w+)*\._\w+"
    )
    private_attr = re.compile(r"\._quic\._\w+|\.tls\._\w+|\bsender\._\w+|\breceiver\._\w+")
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "protocol.py" and path.parent.name == "quic":
            continue
        text = path.read_text()
        if private_import.search(text) or private_attr.search(text):
            offenders.append(str(path.relative_to(package)))
    assert offenders == []


@pytest.mark.parametrize("name", ["key_schedule", "_x25519_private_key", "_ec_private_keys"])
def test_a_moved_tls_handshake_secret_is_named(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Released after the handshake; renamed, the release would keep them silently."""
    from aioquic import tls

    code = tls.Context.__init__.__code__
    names = tuple(n if n != name else "_renamed" for n in code.co_names)
    monkeypatch.setattr(tls.Context.__init__, "__code__", code.replace(co_names=names))
    with pytest.raises(protocol.AioquicIncompatible, match=rf"tls\.Context\.{name}"):
        protocol.check_aioquic()


def _handshaken_pair(
    tmp_path: Path, sent: list[bytes] | None = None
) -> tuple[protocol.TunnelQuicConnection, ...]:
    """A client and a server connection that completed their handshake in memory;
    ``sent`` collects the client's datagrams."""
    from aioquic.buffer import Buffer
    from aioquic.quic.packet import pull_quic_header

    from reverse_http.devcerts import make_dev_certs
    from reverse_http.quic import TransportSettings
    from reverse_http.quic.settings import client_configuration, server_configuration
    from tests.quic_helpers import client_tls, server_settings

    certs = make_dev_certs(tmp_path)
    t = TransportSettings()
    windows = {
        "stream_receive_window": t.stream_receive_window,
        "connection_receive_window": t.connection_receive_window,
        "max_concurrent_streams": t.max_concurrent_streams,
    }
    client = protocol.TunnelQuicConnection(
        configuration=client_configuration(t, client_tls(certs), "localhost"), **windows
    )
    client.connect(("127.0.0.1", 4242), now=0.0)
    first = client.datagrams_to_send(0.0)
    odcid = pull_quic_header(Buffer(data=first[0][0]), host_cid_length=8).destination_cid
    server = protocol.TunnelQuicConnection(
        configuration=server_configuration(server_settings(certs, t)),
        original_destination_connection_id=odcid,
        **windows,
    )
    pending, now = first, 0.0
    for _ in range(10):
        for data, _addr in pending:
            server.receive_datagram(data, ("127.0.0.1", 5000), now)
            if sent is not None:
                sent.append(data)
        for data, _addr in server.datagrams_to_send(now):
            client.receive_datagram(data, ("127.0.0.1", 4242), now)
        now += 0.001
        pending = client.datagrams_to_send(now)
    return client, server


def test_a_server_forgets_its_handshake_secrets_and_still_serves(tmp_path: Path) -> None:
    from aioquic.quic import events
    from aioquic.tls import Epoch

    client, server = _handshaken_pair(tmp_path)
    assert server.tls.key_schedule is None
    assert server.tls._x25519_private_key is None and server.tls._ec_private_keys == []
    assert server._crypto_buffers[Epoch.ONE_RTT].capacity == 0
    # the client keeps its own: a session ticket may still arrive
    assert client.tls.key_schedule is not None
    sid = client.get_next_available_stream_id()
    client.send_stream_data(sid, b"ping", end_stream=True)
    for data, _addr in client.datagrams_to_send(1.0):
        server.receive_datagram(data, ("127.0.0.1", 5000), 1.0)
    got = []
    while (event := server.next_event()) is not None:
        if isinstance(event, events.StreamDataReceived):
            got.append(event.data)
    assert b"".join(got) == b"ping"


def test_a_confirmed_connection_keeps_crypto_state_only_for_1rtt(tmp_path: Path) -> None:
    """The Initial and Handshake CRYPTO streams are dropped on both sides once the
    handshake is confirmed; data and a close still go through afterwards."""
    from aioquic.quic import events
    from aioquic.tls import Epoch

    handshake: list[bytes] = []
    client, server = _handshaken_pair(tmp_path, handshake)
    for conn in (client, server):
        assert conn._handshake_confirmed
        assert set(conn._crypto_streams) == {Epoch.ONE_RTT}
        assert set(conn._crypto_buffers) == {Epoch.ONE_RTT}
        assert conn._loss.spaces == [conn._spaces[Epoch.ONE_RTT]]
        assert conn._spaces[Epoch.INITIAL] is protocol._SPENT_SPACE
        assert conn._spaces[Epoch.HANDSHAKE] is protocol._SPENT_SPACE
    # late copies of the client's Initial and Handshake packets are dropped unread
    for data in handshake:
        server.receive_datagram(data, ("127.0.0.1", 5000), 0.5)
    assert server._loss.spaces == [server._spaces[Epoch.ONE_RTT]]
    sid = client.get_next_available_stream_id()
    client.send_stream_data(sid, b"ping", end_stream=True)
    for data, _addr in client.datagrams_to_send(1.0):
        server.receive_datagram(data, ("127.0.0.1", 5000), 1.0)
    assert server.close_event is None
    server.send_stream_data(sid, b"pong", end_stream=True)
    for data, _addr in server.datagrams_to_send(1.0):
        client.receive_datagram(data, ("127.0.0.1", 4242), 1.0)
    server.close(error_code=0, reason_phrase="bye")
    for data, _addr in server.datagrams_to_send(1.1):
        client.receive_datagram(data, ("127.0.0.1", 4242), 1.1)
    got = []
    while (event := client.next_event()) is not None:
        if isinstance(event, events.StreamDataReceived):
            got.append(event.data)
    assert b"".join(got) == b"pong"
    assert client.close_event is not None and client.close_event.reason_phrase == "bye"


def test_a_handshake_in_progress_keeps_its_secrets() -> None:
    from aioquic import tls

    ctx = tls.Context(is_client=False)
    ctx.key_schedule = object()  # type: ignore[assignment]
    assert protocol.release_spent_server_tls(ctx) is False
    assert ctx.key_schedule is not None


def test_a_server_connection_derives_initial_keys_for_its_version_only(tmp_path: Path) -> None:
    """aioquic derived v1 and v2 Initial keys for every connection; ours derives its own
    version's, and still tells the client every version it supports."""
    from aioquic.quic.packet import QuicProtocolVersion

    client, server = _handshaken_pair(tmp_path)
    assert list(server._cryptos_initial) == [QuicProtocolVersion.VERSION_1]
    # kept for the connection's lifetime: no instance dict (0.3 KiB per idle agent)
    assert not hasattr(server._cryptos_initial, "__dict__")
    info = client._remote_version_information
    assert info is not None
    assert info.available_versions == server._configuration.supported_versions
    assert len(info.available_versions) == 2


def test_a_changed_server_initialize_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    code = QuicConnection._initialize.__code__
    names = tuple(n if n != "supported_versions" else "_renamed" for n in code.co_names)
    monkeypatch.setattr(QuicConnection._initialize, "__code__", code.replace(co_names=names))
    with pytest.raises(
        protocol.AioquicIncompatible, match=r"QuicConnection\._initialize\.supported_versions"
    ):
        protocol.check_aioquic()
