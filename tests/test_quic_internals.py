"""The aioquic internals reverse-http relies on are all checked at import, in one place."""

from __future__ import annotations

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


def test_a_pacer_without_its_datagram_size_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Path MTU discovery sets it; renamed, the assignment would silently do nothing."""
    from aioquic.quic.recovery import QuicPacketPacer

    code = QuicPacketPacer.__init__.__code__
    names = tuple(n if n != "_max_datagram_size" else "_renamed" for n in code.co_names)
    monkeypatch.setattr(QuicPacketPacer.__init__, "__code__", code.replace(co_names=names))
    with pytest.raises(protocol.AioquicIncompatible, match=r"QuicPacketPacer\._max_datagram_size"):
        protocol.check_aioquic()


def test_a_moved_stream_internal_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    original = QuicStreamSender.__init__

    def without_buffer_start(self: QuicStreamSender, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        del self._buffer_start

    monkeypatch.setattr(QuicStreamSender, "__init__", without_buffer_start)
    with pytest.raises(protocol.AioquicIncompatible, match=r"QuicStreamSender\._buffer_start"):
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
    private_import = re.compile(r"from aioquic[\w.]* import[^\n]*\b_\w+")
    private_attr = re.compile(r"\._quic\._\w+|\.tls\._\w+|\bsender\._\w+|\breceiver\._\w+")
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "protocol.py" and path.parent.name == "quic":
            continue
        text = path.read_text()
        if private_import.search(text) or private_attr.search(text):
            offenders.append(str(path.relative_to(package)))
    assert offenders == []
