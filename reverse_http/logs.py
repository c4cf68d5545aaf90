"""Logging set-up for the daemons: stdlib ``logging`` to stderr, text or JSON lines.

Structured fields ride on the record. Either spell them with :func:`log_fields`::

    log.info("agent connected", extra=log_fields(agent_id=agent_id, remote=addr))

(which is ``extra={"fields": {...}}``), or pass plain ``extra={"agent_id": ...}``
keys, or bind them once with :class:`FieldsAdapter`. All three end up as
``key=value`` pairs in text and as top-level keys in JSON. Nothing is redacted
here: never pass a secret as a field.

Message arguments and field values often come from the network, so both
formatters pass each one through :func:`~reverse_http.safetext.safe_text`:
control characters and newlines become visible escapes and a value is cut after
256 characters. A record is therefore always one line (a traceback follows it
in text) and a peer cannot forge a line or flood the log with one value.

Text::

    2026-11-24T17:00:00.123Z INFO  reverse_http.proxy.server: agent connected agent_id=4711

JSON (one object per line)::

    {"time": "2026-11-24T17:00:00.123Z", "level": "INFO", "logger": "...", "msg": "...", ...}
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, Final, TextIO

from .config import LogConfig
from .safetext import MAX_TEXT, safe_text

__all__ = [
    "TRACE",
    "FieldsAdapter",
    "JsonFormatter",
    "TextFormatter",
    "log_fields",
    "reset_logging",
    "setup_logging",
]

#: Below DEBUG: per-packet and per-frame detail.
TRACE: Final = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS: Final[Mapping[str, int]] = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}

#: aioquic's loggers: every packet at DEBUG, and at INFO a line per handshake step and
#: per stream reset (``Stream 0 reset by peer`` ends every CONNECT). Set here only:
#: WARNING unless ``--log.level=debug`` (then INFO) or ``trace`` (then everything).
_NOISY_LOGGERS: Final = ("quic", "http3")


class RateLimit(logging.Filter):
    """At most ``burst`` records per ``interval`` seconds; the first one let through
    after a quiet spell says how many were dropped. aioquic warns once per connection
    that fails (a tampered ClientHello, a protocol violation): an attacker must not be
    able to write the log at packet rate."""

    def __init__(self, burst: int = 10, interval: float = 10.0) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval
        self._window_start = -math.inf
        self._passed = 0
        self.suppressed = 0

    def reset(self) -> None:
        self._window_start, self._passed, self.suppressed = -math.inf, 0, 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._window_start >= self.interval:
            self._window_start, self._passed = now, 0
        if self._passed >= self.burst:
            self.suppressed += 1
            return False
        self._passed += 1
        if self.suppressed:
            record.msg = f"{record.msg} ({self.suppressed} similar lines suppressed before)"
            self.suppressed = 0
        return True


_AIOQUIC_RATE_LIMIT: Final = RateLimit()

#: Where the QUIC layer reports a datagram, an Initial or a connection whose handling
#: raised (a bug, ours or aioquic's, that costs that one): if some input triggers it,
#: a sender could repeat it at packet rate, so it is rate-limited at every level.
CRASH_LOGGER: Final = "reverse_http.quic.crash"
_CRASH_RATE_LIMIT: Final = RateLimit()


def _noisy_level(level: int) -> int:
    if level <= TRACE:
        return level
    if level <= logging.DEBUG:
        return logging.INFO
    return max(level, logging.WARNING)


_LEVEL_LABELS: Final[Mapping[int, str]] = {
    TRACE: "TRACE",
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARN",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "FATAL",
}

#: Attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_ATTRS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "fields",
}

_RESERVED_JSON_KEYS: Final = frozenset({"time", "level", "logger", "msg", "exc"})

_HANDLER_MARK: Final = "_reverse_http_handler"

#: A whole message: our text plus a few arguments of up to MAX_TEXT each.
MAX_MESSAGE: Final = 16 * MAX_TEXT


def log_fields(**fields: object) -> dict[str, object]:
    """``extra=`` for structured fields: ``log.info("msg", extra=log_fields(k=v))``."""
    return {"fields": fields}


class FieldsAdapter(logging.LoggerAdapter[logging.Logger]):
    """A logger with bound fields; per-call ``extra`` fields are merged over them."""

    def __init__(self, logger: logging.Logger, **fields: object) -> None:
        super().__init__(logger, {"fields": fields})

    def bind(self, **fields: object) -> FieldsAdapter:
        return FieldsAdapter(self.logger, **{**self.fields, **fields})

    @property
    def fields(self) -> dict[str, object]:
        assert self.extra is not None
        bound = self.extra["fields"]
        assert isinstance(bound, dict)
        return bound

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        extra = dict(kwargs.get("extra") or {})
        call_fields = extra.pop("fields", None) or {}
        kwargs["extra"] = {"fields": {**self.fields, **extra, **call_fields}}
        return msg, kwargs

    def trace(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.log(TRACE, msg, *args, **kwargs)


def record_fields(record: logging.LogRecord) -> dict[str, object]:
    """The structured fields of ``record``: ``extra`` keys, then ``extra["fields"]``."""
    out = {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}
    nested = record.__dict__.get("fields")
    if isinstance(nested, Mapping):
        out.update({str(k): v for k, v in nested.items()})
    return out


def _timestamp(record: logging.LogRecord) -> str:
    seconds = int(record.created)
    millis = int((record.created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _level_label(levelno: int) -> str:
    label = _LEVEL_LABELS.get(levelno)
    if label is not None:
        return label
    name = logging.getLevelName(levelno)
    return name if isinstance(name, str) else str(levelno)


class _Shown:
    """A message argument that formats as its :func:`safe_text` (``%s``) or repr (``%r``)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return safe_text(self.value)

    def __repr__(self) -> str:
        return safe_text(repr(self.value))


def _shown_arg(value: object) -> object:
    return value if isinstance(value, int | float) else _Shown(value)


def _safe_message(record: logging.LogRecord) -> str:
    """``record.getMessage()`` with every argument, then the whole, made :func:`safe_text`."""
    args = record.args
    try:
        if isinstance(args, Mapping):
            message = str(record.msg) % {k: _shown_arg(v) for k, v in args.items()}
        elif args:
            message = str(record.msg) % tuple(_shown_arg(a) for a in args)
        else:
            message = str(record.msg)
    except (TypeError, ValueError, KeyError):
        message = record.getMessage()
    return safe_text(message, MAX_MESSAGE)


def _safe_field(value: object) -> object:
    if isinstance(value, bool | int | float) or value is None:
        return value
    return safe_text(value)


def _logfmt_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    if text and not any(c.isspace() or c in '"=\\' or not c.isprintable() for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message> key=value ...``, traceback on following lines."""

    def format(self, record: logging.LogRecord) -> str:
        message = _safe_message(record)
        line = f"{_timestamp(record)} {_level_label(record.levelno):<5} {record.name}: {message}"
        fields = record_fields(record)
        if fields:
            line += " " + " ".join(
                f"{k}={_logfmt_value(_safe_field(v))}" for k, v in fields.items()
            )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg, fields, and ``exc`` if any."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "time": _timestamp(record),
            "level": _level_label(record.levelno),
            "logger": record.name,
            "msg": _safe_message(record),
        }
        for key, value in record_fields(record).items():
            obj[f"fields.{key}" if key in _RESERVED_JSON_KEYS else key] = _safe_field(value)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            obj["exc"] = self.formatStack(record.stack_info)
        return json.dumps(obj, ensure_ascii=False)


def setup_logging(config: LogConfig, stream: TextIO | None = None) -> None:
    """Send every logger's records at ``config.level`` and above to ``stream`` (stderr).

    Idempotent: a second call replaces the handler the first one installed.
    """
    level = LEVELS[config.level]
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    setattr(handler, _HANDLER_MARK, True)
    reset_logging()
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    for name in _NOISY_LOGGERS:
        noisy = logging.getLogger(name)
        noisy.setLevel(_noisy_level(level))
        if level > logging.DEBUG:  # debugging wants every line
            noisy.addFilter(_AIOQUIC_RATE_LIMIT)
    logging.getLogger(CRASH_LOGGER).addFilter(_CRASH_RATE_LIMIT)


def reset_logging() -> None:
    """Undo :func:`setup_logging`: remove its handler and restore default levels."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    root.setLevel(logging.WARNING)
    for name in _NOISY_LOGGERS:
        noisy = logging.getLogger(name)
        noisy.setLevel(logging.NOTSET)
        noisy.removeFilter(_AIOQUIC_RATE_LIMIT)
    _AIOQUIC_RATE_LIMIT.reset()
    logging.getLogger(CRASH_LOGGER).removeFilter(_CRASH_RATE_LIMIT)
    _CRASH_RATE_LIMIT.reset()
