"""Text output of the admin commands: aligned tables, label/value pairs, times.

Everything a server sent passes through `clean()`: no terminal control sequence in an answer
reaches the operator's terminal.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any


def clean(text: str) -> str:
    """No terminal control sequences from a server's answer reach the operator's terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return clean(str(value))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain aligned columns, two spaces apart, headers upper-cased."""
    cells = [[h.upper() for h in headers], *([cell(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def pairs(items: Sequence[tuple[str, Any]]) -> str:
    """`label  value` lines, labels aligned."""
    width = max(len(label) for label, _ in items)
    return "\n".join(f"{label.ljust(width)}  {cell(value)}" for label, value in items)


def when(iso: Any, epoch: Any = None) -> str:
    """`2026-01-02 03:04:05 UTC`, plus `(in 29m 58s)` / `(3m ago)` when the epoch is known."""
    if not isinstance(iso, str) or not iso:
        return "-"
    try:
        moment = datetime.fromisoformat(iso).astimezone(UTC)
    except ValueError:
        return clean(iso)
    text = moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(epoch, int | float) and not isinstance(epoch, bool):
        delta = float(epoch) - time.time()
        span = _span(abs(delta))
        text += f" (in {span})" if delta >= 0 else f" ({span} ago)"
    return text


def _span(seconds: float) -> str:
    left = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    if left or not parts:
        parts.append(f"{left}s")
    return " ".join(parts[:2])


def expires(switch: Mapping[str, Any]) -> str:
    """A kill switch's expiry: `never (until released)`, or when (and how soon)."""
    if not switch.get("expires"):
        return "never (until released)"
    return when(switch["expires"], switch.get("expires_at"))
