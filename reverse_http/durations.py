"""Go-style duration strings (``time.ParseDuration``), so flags and config files
written for the Go reference (``24h``, ``1h30m``, ``500ms``) mean the same here.

The arithmetic mirrors Go's to the nanosecond, including its float64 handling of
fractions and its int64 range, so both implementations agree on every input.
"""

from __future__ import annotations

__all__ = ["DurationError", "parse_duration"]

_NANOS_PER_UNIT: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "\u03bcs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_VALID_UNITS = "ns, us, ms, s, m, h"
_LIMIT = 1 << 63
_EXAMPLES = "e.g. 24h, 90m, 1h30m, 10s, 500ms"


def _is_digit(c: str) -> bool:
    return "0" <= c <= "9"


class DurationError(ValueError):
    """A string that is not a Go duration; ``reason`` says why, for callers that quote
    the input their own way (the CLI names the flag, variable or file key)."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"invalid duration {text!r}: {reason}")
        self.text = text
        self.reason = reason


def _invalid(original: str, why: str) -> DurationError:
    return DurationError(original, why)


def _missing_unit(original: str, number: str) -> DurationError:
    """A number without a unit, the commonest mistake (``10`` for ``10s``): show the fix."""
    if number == original.lstrip("+-") and number:
        why = f"missing unit; use e.g. {original}s, {original}ms or {original}m"
    else:
        why = f"missing unit after {number!r}"
    return _invalid(original, f"{why} (valid units: {_VALID_UNITS})")


def parse_duration(text: str) -> float:
    """Parse a Go duration string into seconds.

    Accepts what Go accepts: an optional sign, then one or more ``<number><unit>``
    parts (decimal fractions allowed; units ns, us, µs, ms, s, m, h), or a bare
    ``0``. Raises :class:`DurationError` (a ``ValueError``) with a message quoting the
    input and the problem.
    """
    return _parse_nanos(text) / 1_000_000_000


def _parse_nanos(original: str) -> int:
    s = original
    negative = False
    if s and s[0] in "+-":
        negative = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise _invalid(original, f"empty ({_EXAMPLES})")

    total = 0
    while s:
        part_start = s
        if not (s[0] == "." or _is_digit(s[0])):
            raise _invalid(original, f"expected a number at {s!r} ({_EXAMPLES})")
        i = 0
        value = 0
        while i < len(s) and _is_digit(s[i]):
            if value > _LIMIT // 10:
                raise _invalid(original, "out of range")
            value = value * 10 + int(s[i])
            if value > _LIMIT:
                raise _invalid(original, "out of range")
            i += 1
        has_int = i > 0
        s = s[i:]

        fraction, scale, has_fraction = 0, 1.0, False
        if s and s[0] == ".":
            s = s[1:]
            i = 0
            overflow = False
            while i < len(s) and _is_digit(s[i]):
                if not overflow:
                    if fraction > (_LIMIT - 1) // 10:
                        overflow = True
                    else:
                        candidate = fraction * 10 + int(s[i])
                        if candidate > _LIMIT:
                            overflow = True
                        else:
                            fraction = candidate
                            scale *= 10
                i += 1
            has_fraction = i > 0
            s = s[i:]
        if not has_int and not has_fraction:
            raise _invalid(original, f"expected digits around '.' ({_EXAMPLES})")

        i = 0
        while i < len(s) and s[i] != "." and not _is_digit(s[i]):
            i += 1
        if i == 0:
            raise _missing_unit(original, part_start[: len(part_start) - len(s)])
        unit_name, s = s[:i], s[i:]
        unit = _NANOS_PER_UNIT.get(unit_name)
        if unit is None:
            raise _invalid(original, f"unknown unit {unit_name!r} (valid units: {_VALID_UNITS})")
        if value > _LIMIT // unit:
            raise _invalid(original, "out of range")
        value *= unit
        if fraction > 0:
            value += int(float(fraction) * (float(unit) / scale))
            if value > _LIMIT:
                raise _invalid(original, "out of range")
        total += value
        if total > _LIMIT:
            raise _invalid(original, "out of range")

    if negative:
        return -total
    if total > _LIMIT - 1:
        raise _invalid(original, "out of range")
    return total
