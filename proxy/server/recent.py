"""The recent decisions of this instance: a bounded ring buffer for the operator console.

The proxy middleware notes every answered request here (one deque append of a small tuple:
the hot path pays well under a microsecond). The admin API's `GET /v1/decisions?after=<seq>`
reads it. Only what the `request_finished` log line already carries, redacted the same way:
the To arrives masked (`mask_phone`, set by the send gate) with its keyed correlation hash;
no body, no path (a Lookups path holds a full number), no credential.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from aiohttp import web

DEFAULT_CAPACITY = 1000
_REQUEST_ID_CHARS = 64  # ids are validated at the edge (≤128 chars); a console needs fewer

# (seq, time, request id, decision, reason, status, method, route, account, masked to, to_ref)
_Entry = tuple[int, float, str, str, str, int, str, Any, Any, Any, Any]


class RecentDecisions:
    """Single-threaded (the event loop): a sequence number per entry, the newest `capacity`
    kept. A reader asks for what came `after` the last sequence number it saw."""

    __slots__ = ("_ring", "_seq", "capacity")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._ring: deque[_Entry] = deque(maxlen=capacity)
        self._seq = 0

    def note(
        self,
        request_id: str,
        decision: str,
        reason: str,
        status: int,
        method: str,
        fields: dict[str, Any],
    ) -> None:
        """Hot path: no formatting, no masking here (the gate masked the To already)."""
        self._seq += 1
        self._ring.append(
            (
                self._seq,
                time.time(),
                request_id,
                decision,
                reason,
                status,
                method,
                fields.get("route"),
                fields.get("account"),
                fields.get("to"),
                fields.get("to_ref"),
            )
        )

    @property
    def last(self) -> int:
        return self._seq

    def after(self, seq: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Up to `limit` entries newer than `seq`, oldest first, and how many newer ones the
        ring no longer holds (the reader fell behind). A `seq` beyond the last one (this
        process restarted) reads from the start."""
        if seq > self._seq:
            seq = 0
        ring = self._ring
        if not ring or seq >= self._seq:
            return [], 0
        oldest = ring[0][0]
        missed = max(0, oldest - seq - 1)
        start = max(0, seq + 1 - oldest)
        end = min(len(ring), start + limit)
        return [_view(ring[i]) for i in range(start, end)], missed


def _view(entry: _Entry) -> dict[str, Any]:
    seq, at, request_id, decision, reason, status, method, route, account, to, to_ref = entry
    return {
        "seq": seq,
        "time": at,
        "request_id": request_id[:_REQUEST_ID_CHARS],
        "decision": decision,
        "reason": reason or decision,
        "status": status,
        "method": method,
        "route": route,
        "account": account,
        "to": to,
        "to_ref": to_ref,
    }


RECENT: web.AppKey[RecentDecisions] = web.AppKey("recent_decisions", RecentDecisions)
