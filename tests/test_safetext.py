"""safe_text: what a peer sends becomes one printable, bounded piece of text."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reverse_http.safetext import MAX_TEXT, safe_text

#: Unicode at large, plus lone surrogates and the characters that break log lines.
hostile_text = st.text(
    st.one_of(
        st.characters(),
        st.characters(categories=["Cs"]),
        st.sampled_from(["\n", "\r", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\u202e", "\\"]),
    ),
    max_size=400,
)
MARKER = re.compile(r"\.\.\.\[(\d+) more\]\Z")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("agent 4711", "agent 4711"),
        ("", ""),
        ("evil\nINFO forged", "evil\\nINFO forged"),
        ("a\r\nb", "a\\r\\nb"),
        ("tab\there", "tab\\there"),
        ("nul\x00byte", "nul\\x00byte"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("del\x7f nel\x85", "del\\x7f nel\\x85"),
        ("line\u2028sep", "line\\u2028sep"),
        ("rlo\u202eevil", "rlo\\u202eevil"),
        ("lone \udc80 surrogate", "lone \\udc80 surrogate"),
        ("tag \U000e0041", "tag \\U000e0041"),
        ("caf\xe9 \u00fc \u4e2d", "caf\xe9 \u00fc \u4e2d"),
        ("back\\slash", "back\\slash"),
        (b"by\x00tes\xff", "by\\x00tes\\xff"),
        (ValueError("bad\nthing"), "bad\\nthing"),
        (4711, "4711"),
    ],
)
def test_escapes(value: object, shown: str) -> None:
    assert safe_text(value) == shown


def test_long_value_is_cut_with_a_marker() -> None:
    """A 1 MiB agent id must not become a 1 MiB log line."""
    shown = safe_text("a" * (1 << 20))
    assert shown == "a" * MAX_TEXT + f"...[{(1 << 20) - MAX_TEXT} more]"


def test_escapes_count_against_the_limit() -> None:
    assert safe_text("\n" * 10, limit=7) == "\\n\\n\\n...[7 more]"
    assert safe_text("ab\x00", limit=4) == "ab...[1 more]"


def test_limit_is_inclusive() -> None:
    assert safe_text("x" * 10, limit=10) == "x" * 10
    assert safe_text("x" * 11, limit=10) == "x" * 10 + "...[1 more]"


@settings(max_examples=1000, deadline=None)
@given(hostile_text, st.integers(0, 300))
def test_output_is_printable_and_bounded(value: str, limit: int) -> None:
    shown = safe_text(value, limit)
    assert shown.isprintable()
    assert not any(c in shown for c in "\r\n\x00\x85\u2028\u2029")
    marker = MARKER.search(shown)
    kept = shown[: marker.start()] if marker else shown
    assert len(kept) <= limit
    if marker is None:
        assert safe_text(shown, limit) == shown
    if value.isprintable() and len(value) <= limit:
        assert shown == value
