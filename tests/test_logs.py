"""Log set-up: levels (with TRACE), text and JSON line formats, structured fields."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from reverse_http.config import LogConfig
from reverse_http.logs import TRACE, FieldsAdapter, log_fields, reset_logging, setup_logging

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (TRACE|DEBUG|INFO |WARN |ERROR|FATAL) [\w.]+: "
)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    reset_logging()


def configure(level: str = "info", fmt: str = "text") -> io.StringIO:
    stream = io.StringIO()
    setup_logging(LogConfig(level=level, format=fmt), stream)  # type: ignore[arg-type]
    return stream


def test_text_format() -> None:
    stream = configure()
    log = logging.getLogger("reverse_http.test")
    log.info("agent %s connected", "4711", extra=log_fields(remote="10.0.0.1:5000", n=3))
    log.warning("plain extra", extra={"agent_id": "a b"})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert TEXT_LINE.match(lines[0]), lines[0]
    assert lines[0].endswith(
        " INFO  reverse_http.test: agent 4711 connected remote=10.0.0.1:5000 n=3"
    )
    assert lines[1].endswith(' WARN  reverse_http.test: plain extra agent_id="a b"')


def test_json_format_lines_parse() -> None:
    stream = configure(fmt="json")
    log = logging.getLogger("reverse_http.test")
    log.info("hello", extra=log_fields(agent_id="4711", ok=True, path=b"x"))
    log.error("with extra", extra={"count": 2})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(records) == 3
    first = records[0]
    assert set(first) == {"time", "level", "logger", "msg", "agent_id", "ok", "path"}
    assert first["level"] == "INFO"
    assert first["logger"] == "reverse_http.test"
    assert first["msg"] == "hello"
    assert first["agent_id"] == "4711"
    assert first["ok"] is True
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert records[1]["count"] == 2
    assert records[1]["level"] == "ERROR"
    assert "ValueError: boom" in records[2]["exc"]


def test_json_field_named_like_a_reserved_key() -> None:
    stream = configure(fmt="json")
    logging.getLogger("t").info("real", extra=log_fields(msg="field"))
    record = json.loads(stream.getvalue())
    assert record["msg"] == "real"
    assert record["fields.msg"] == "field"


@pytest.mark.parametrize(
    ("level", "emitted"),
    [
        ("trace", ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]),
        ("debug", ["DEBUG", "INFO", "WARN", "ERROR"]),
        ("info", ["INFO", "WARN", "ERROR"]),
        ("warn", ["WARN", "ERROR"]),
        ("error", ["ERROR"]),
    ],
)
def test_levels(level: str, emitted: list[str]) -> None:
    stream = configure(level=level, fmt="json")
    log = logging.getLogger("reverse_http.levels")
    log.log(TRACE, "t")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    got = [json.loads(line)["level"] for line in stream.getvalue().splitlines()]
    assert got == emitted


def test_aioquic_packet_logs_need_trace() -> None:
    stream = configure(level="debug")
    logging.getLogger("quic").debug("packet")
    logging.getLogger("quic").info("handshake done")
    assert "packet" not in stream.getvalue()
    assert "handshake done" in stream.getvalue()
    stream = configure(level="trace")
    logging.getLogger("quic").debug("packet")
    assert "packet" in stream.getvalue()


def test_setup_is_idempotent() -> None:
    configure()
    stream = configure()
    logging.getLogger("x").warning("once")
    assert stream.getvalue().count("once") == 1
    marked = [h for h in logging.getLogger().handlers if getattr(h, "_reverse_http_handler", 0)]
    assert len(marked) == 1


def test_fields_adapter_binds_fields() -> None:
    stream = configure(level="trace", fmt="json")
    log = FieldsAdapter(logging.getLogger("a"), agent_id="1").bind(remote="r")
    log.trace("t", extra=log_fields(stream_id=4))
    log.info("i", extra={"n": 1})
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "TRACE"
    assert (first["agent_id"], first["remote"], first["stream_id"]) == ("1", "r", 4)
    assert second["n"] == 1
    assert second["agent_id"] == "1"


def test_text_exception_follows_the_line() -> None:
    stream = configure()
    try:
        raise RuntimeError("bad")
    except RuntimeError:
        logging.getLogger("x").exception("oops")
    lines = stream.getvalue().splitlines()
    assert TEXT_LINE.match(lines[0])
    assert lines[-1] == "RuntimeError: bad"
