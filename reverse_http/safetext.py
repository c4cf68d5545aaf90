"""Text from the network made fit for a log line or an HTTP answer.

A value a peer chose (an agent id, a CONNECT target, a reason phrase) must not
start a new log line, hide text behind control characters, or fill the log: so
every such value goes through :func:`safe_text` on its way out. The log
formatters do that for every argument and field; answers do it in
:func:`reverse_http.wire.http.response_bytes` and where a detail quotes the peer.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_TEXT", "safe_text"]

#: Characters kept of one value before it is cut.
MAX_TEXT: Final = 256

_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe_text(value: object, limit: int = MAX_TEXT) -> str:
    """``value`` as printable text of at most ``limit`` characters plus a cut marker.

    Anything :meth:`str.isprintable` refuses (control characters, line and
    paragraph separators, bidi overrides, lone surrogates) becomes a visible escape
    (``\\n``, ``\\x00``, ``\\u2028``). Backslashes stay as they are, so applying it
    twice changes nothing for text within ``limit``. A longer value keeps its first
    ``limit`` characters and ends in ``...[N more]``, N counted in input characters.
    """
    if isinstance(value, str):
        text = value
    elif isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", "backslashreplace")
    else:
        text = str(value)
    if len(text) <= limit and text.isprintable():
        return text
    out: list[str] = []
    size = 0
    used = 0
    for char in text:
        piece = char if char.isprintable() else _escape(char)
        if size + len(piece) > limit:
            break
        out.append(piece)
        size += len(piece)
        used += 1
    if used < len(text):
        out.append(f"...[{len(text) - used} more]")
    return "".join(out)
