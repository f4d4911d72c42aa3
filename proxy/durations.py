"""Human-friendly durations and byte sizes, as operators write them in flags, env and TOML.

Both parsers are total over text: anything they cannot read raises `ValueError` (never another
exception), so pydantic turns it into a validation error that names the setting.
"""

from __future__ import annotations

import math
import re

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# One or more <number><unit> parts, Go style: "30s", "10m", "1h30m", "250ms", "1.5h".
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(ms|s|m|h|d)", re.ASCII)
_DURATION_FULL = re.compile(rf"(?:{_DURATION_PART.pattern})+", re.ASCII)
_PLAIN_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+", re.ASCII)

DURATION_HINT = "use 30s, 10m, 24h or seconds"

# Binary (KiB) and decimal (KB) units both appear in the wild; "1MiB" and "1MB" differ.
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)", re.ASCII | re.IGNORECASE)

SIZE_HINT = "use bytes or a size such as 512KiB, 1MiB, 2MB"


def parse_duration(value: str | int | float) -> float:
    """Seconds from "30s", "10m", "24h", "1d", "250ms", "1h30m", "90", 90 or 1.5.

    Rejects negatives, NaN/infinity, booleans and anything else with `ValueError`.
    """
    if isinstance(value, bool):  # bool is an int; `true` in TOML is a mistake, not 1 second
        raise ValueError(f"invalid duration {value!r} ({DURATION_HINT})")
    if isinstance(value, int | float):
        return _check_seconds(_to_float(value), value)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r} ({DURATION_HINT})")
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"invalid duration {value!r}: must not be negative")
    if _PLAIN_NUMBER.fullmatch(text):
        return _check_seconds(float(text), value)
    if not _DURATION_FULL.fullmatch(text):
        raise ValueError(f"invalid duration {value!r} ({DURATION_HINT})")
    seconds = sum(
        float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(text)
    )
    return _check_seconds(seconds, value)


def parse_size(value: str | int | float) -> int:
    """Bytes from 1048576, "1048576", "512KiB", "1MiB", "2MB" (case-insensitive units)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r} ({SIZE_HINT})")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"invalid size {value!r}: not a whole number of bytes")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid size {value!r} ({SIZE_HINT})")
    match = _SIZE.fullmatch(value.strip())
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"invalid size {value!r} ({SIZE_HINT})")
    size = float(match.group(1)) * _SIZE_UNITS[unit]
    if not math.isfinite(size) or not size.is_integer():
        raise ValueError(f"invalid size {value!r}: not a whole number of bytes")
    return int(size)


def _to_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an int too large for a float
        raise ValueError(f"invalid duration {value!r}: too large") from None


def _check_seconds(seconds: float, original: object) -> float:
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {original!r}: not a finite number")
    if seconds < 0:
        raise ValueError(f"invalid duration {original!r}: must not be negative")
    return seconds
