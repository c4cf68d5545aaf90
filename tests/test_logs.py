"""Log set-up: levels (with TRACE), text and JSON line formats, structured fields."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# -- what peers send cannot shape the log ---------------------------------------

FORGED = "evil\n2026-01-01T00:00:00.000Z INFO  reverse_http.access: CONNECT forged"


def test_text_newline_in_an_argument_or_field_stays_on_its_line() -> None:
    stream = configure()
    log = logging.getLogger("reverse_http.test")
    log.info("agent %s connected", FORGED, extra=log_fields(agent_id=FORGED, raw=b"a\r\nb"))
    (line,) = stream.getvalue().splitlines()
    assert line.endswith(
        " INFO  reverse_http.test: agent evil\\n2026-01-01T00:00:00.000Z INFO  "
        "reverse_http.access: CONNECT forged connected"
        ' agent_id="evil\\\\n2026-01-01T00:00:00.000Z INFO  reverse_http.access: CONNECT forged"'
        ' raw="a\\\\r\\\\nb"'
    )


def test_json_control_characters_are_escaped_before_encoding() -> None:
    stream = configure(fmt="json")
    logging.getLogger("t").warning("refused %r", "a\x00b", extra=log_fields(agent_id="x\u2028y"))
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["msg"] == "refused 'a\\x00b'"
    assert record["agent_id"] == "x\\u2028y"
    assert "\u2028" not in line


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_huge_values_are_cut(fmt: str) -> None:
    """One 1 MiB agent id must not make a 1 MiB log line."""
    stream = configure(fmt=fmt)
    huge = "a" * (1 << 20)
    logging.getLogger("t").info("agent %s connected", huge, extra=log_fields(agent_id=huge))
    (line,) = stream.getvalue().splitlines()
    assert len(line) < 1000
    cut = "a" * 256 + f"...[{(1 << 20) - 256} more]"
    assert line.count(cut) == 2


def test_messages_built_without_arguments_are_escaped_too() -> None:
    stream = configure()
    logging.getLogger("t").info(f"tunnel refused: {FORGED}")
    (line,) = stream.getvalue().splitlines()
    assert line.endswith(
        "t: tunnel refused: evil\\n2026-01-01T00:00:00.000Z INFO  "
        "reverse_http.access: CONNECT forged"
    )


def test_numeric_and_mapping_arguments_format_as_before() -> None:
    stream = configure()
    log = logging.getLogger("t")
    log.info("%d B in %.2fs (%5s) %r", 42, 1.5, "ab", None)
    log.info("%(agent)s -> %(status)03d", {"agent": "a\nb", "status": 7})
    log.info("initial %c of %s", "x", "a\nb")
    lines = [line.split(" t: ", 1)[1] for line in stream.getvalue().splitlines()]
    assert lines == ["42 B in 1.50s (   ab) None", "a\\nb -> 007", "initial x of a\\nb"]


hostile_text = st.text(
    st.one_of(
        st.characters(),
        st.characters(categories=["Cs"]),
        st.sampled_from(["\n", "\r", "\x00", "\x1b", "\x85", "\u2028", '"', "=", "\\", " "]),
    ),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(hostile_text, hostile_text)
def test_any_argument_or_field_makes_one_printable_line(arg: str, value: str) -> None:
    for fmt in ("text", "json"):
        stream = configure(fmt=fmt)
        logging.getLogger("t").warning("got %s", arg, extra=log_fields(agent_id=value, b=arg))
        output = stream.getvalue()
        assert output.endswith("\n")
        line = output[:-1]
        assert line.isprintable()
        assert len(line) < 1500
        if fmt == "json":
            record = json.loads(line)
            assert all(str(v).isprintable() for v in record.values())
            assert record["msg"].startswith("got ")


@pytest.mark.parametrize("level", ["info", "warn", "error"])
def test_aioquic_info_lines_are_silent_above_debug(level: str) -> None:
    stream = configure(level=level)
    for name in ("quic", "http3"):
        logging.getLogger(name).info("Stream 0 reset by peer (error code 0, final size 0)")
        logging.getLogger(name).error("aioquic trouble")
    assert "reset by peer" not in stream.getvalue()
    assert stream.getvalue().count("aioquic trouble") == 2


def test_aioquic_warnings_are_rate_limited_at_the_default_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flood of failing connections (one aioquic WARNING each) writes a few lines per
    interval, then one that says how many were dropped."""
    from reverse_http import logs

    now = [100.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
    stream = configure(level="info")
    for i in range(500):
        logging.getLogger("quic").warning("Packet contains no CRYPTO frame %d", i)
    lines = stream.getvalue().splitlines()
    assert len(lines) == logs.RateLimit().burst
    now[0] += 10.0
    logging.getLogger("quic").warning("Packet contains no CRYPTO frame")
    last = stream.getvalue().splitlines()[-1]
    assert "(490 similar lines suppressed before)" in last
    stream = configure(level="debug")  # debugging sees every line
    for _ in range(50):
        logging.getLogger("quic").warning("again")
    assert stream.getvalue().count("again") == 50


def test_the_quic_layers_crash_reports_are_rate_limited_at_every_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A datagram, Initial or connection whose handling raises costs only itself; if some
    input triggers that, its sender must not write a traceback per packet."""
    from reverse_http import logs
    from reverse_http.quic import driver, endpoint, server

    names = {m.crash_log.name for m in (driver, endpoint, server)}
    assert names == {logs.CRASH_LOGGER}
    now = [100.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
    for level in ("info", "debug"):
        stream = configure(level=level)
        for i in range(300):
            try:
                raise ValueError(f"bad ClientHello {i}")
            except ValueError:
                server.crash_log.exception("an Initial from %s crashed its handling", i)
        assert stream.getvalue().count("crashed its handling") == logs.RateLimit().burst
        now[0] += 10.0
