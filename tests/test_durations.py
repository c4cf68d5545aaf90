"""Go ``time.ParseDuration`` compatibility; cases mirror Go's own test table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reverse_http.durations import parse_duration

NS = 1
US = 1_000 * NS
MS = 1_000 * US
S = 1_000 * MS
M = 60 * S
H = 60 * M

VALID: list[tuple[str, int]] = [
    ("0", 0),
    ("5s", 5 * S),
    ("30s", 30 * S),
    ("1478s", 1478 * S),
    ("-5s", -5 * S),
    ("+5s", 5 * S),
    ("-0", 0),
    ("+0", 0),
    ("5.0s", 5 * S),
    ("5.6s", 5 * S + 600 * MS),
    ("5.s", 5 * S),
    (".5s", 500 * MS),
    ("1.0s", 1 * S),
    ("1.00s", 1 * S),
    ("1.004s", 1 * S + 4 * MS),
    ("1.0040s", 1 * S + 4 * MS),
    ("100.00100s", 100 * S + 1 * MS),
    ("10ns", 10 * NS),
    ("11us", 11 * US),
    ("12\u00b5s", 12 * US),
    ("12\u03bcs", 12 * US),
    ("13ms", 13 * MS),
    ("14s", 14 * S),
    ("15m", 15 * M),
    ("16h", 16 * H),
    ("3h30m", 3 * H + 30 * M),
    ("10.5s4m", 4 * M + 10 * S + 500 * MS),
    ("-2m3.4s", -(2 * M + 3 * S + 400 * MS)),
    ("1h2m3s4ms5us6ns", 1 * H + 2 * M + 3 * S + 4 * MS + 5 * US + 6 * NS),
    ("39h9m14.425s", 39 * H + 9 * M + 14 * S + 425 * MS),
    ("52763797000ns", 52763797000 * NS),
    ("0.3333333333333333333h", 20 * M),
    ("9007199254740993ns", (1 << 53) + 1),
    ("9223372036854775807ns", (1 << 63) - 1),
    ("9223372036854775.807us", (1 << 63) - 1),
    ("9223372036s854ms775us807ns", (1 << 63) - 1),
    ("-9223372036854775808ns", -(1 << 63)),
    ("-9223372036854775.808us", -(1 << 63)),
    ("0.100000000000000000000h", 6 * M),
    ("0.830103483285477580700h", 49 * M + 48 * S + 372539827 * NS),
    ("24h", 24 * H),
    ("90m", 90 * M),
    ("1h30m", 90 * M),
    ("500ms", 500 * MS),
]


@pytest.mark.parametrize(("text", "nanos"), VALID)
def test_valid(text: str, nanos: int) -> None:
    assert parse_duration(text) == nanos / 1_000_000_000


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("3", "missing unit"),
        ("-", "empty"),
        ("s", "expected a number"),
        (".", "expected digits"),
        ("-.", "expected digits"),
        (".s", "expected digits"),
        ("+.s", "expected digits"),
        ("1d", "unknown unit 'd'"),
        ("1 h", "unknown unit ' h'"),
        (" 1h", "expected a number"),
        ("1h ", "unknown unit 'h '"),
        ("\x85\x85", "expected a number"),
        ("1.2.3s", "missing unit"),
        ("9223372036854775808ns", "out of range"),
        ("9223372036854775.808us", "out of range"),
        ("9223372036854ms775us808ns", "out of range"),
        ("-9223372036854775809ns", "out of range"),
        ("99999999999999999999999h", "out of range"),
    ],
)
def test_invalid(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    message = str(info.value)
    assert message.startswith(f"invalid duration {text!r}")
    assert fragment in message
    assert "\n" not in message


def test_unknown_unit_lists_valid_units() -> None:
    with pytest.raises(ValueError, match=r"valid units: ns, us, ms, s, m, h"):
        parse_duration("2days")


@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from(["ns", "us", "ms", "s", "m", "h"])),
        min_size=1,
        max_size=4,
    )
)
def test_sum_of_integer_parts(parts: list[tuple[int, str]]) -> None:
    unit_nanos = {"ns": NS, "us": US, "ms": MS, "s": S, "m": M, "h": H}
    text = "".join(f"{n}{u}" for n, u in parts)
    expected = sum(n * unit_nanos[u] for n, u in parts)
    assert parse_duration(text) == expected / 1_000_000_000
    assert parse_duration("-" + text) == -expected / 1_000_000_000


@given(st.text(max_size=20))
def test_never_raises_anything_but_value_error(text: str) -> None:
    try:
        result = parse_duration(text)
    except ValueError:
        return
    assert isinstance(result, float)
