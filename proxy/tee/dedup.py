"""Which callbacks were already forwarded: Twilio redelivers, the app should hear each once.

The key is Twilio's I-Twilio-Idempotency-Token. The shared store's deduper lives in
proxy/store/callback_store.py; this one is a process's own, for a single instance or tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

DEDUP_TTL_SECONDS = 24 * 3600.0


class CallbackDeduper(Protocol):
    async def seen(self, idempotency_token: str) -> bool: ...  # already forwarded successfully?

    async def mark_forwarded(self, idempotency_token: str) -> None: ...


class MemoryCallbackDeduper:
    """Forwarded idempotency tokens of this process, for 24 h, at most `max_entries` of them."""

    def __init__(
        self,
        *,
        ttl: float = DEDUP_TTL_SECONDS,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._expiries: dict[str, float] = {}  # insertion order is expiry order (one TTL)

    async def seen(self, idempotency_token: str) -> bool:
        self._expire()
        return idempotency_token in self._expiries

    async def mark_forwarded(self, idempotency_token: str) -> None:
        self._expire()
        self._expiries.pop(idempotency_token, None)
        self._expiries[idempotency_token] = self._clock() + self._ttl
        while len(self._expiries) > self._max_entries:
            del self._expiries[next(iter(self._expiries))]

    @property
    def size(self) -> int:
        return len(self._expiries)

    def _expire(self) -> None:
        now = self._clock()
        while self._expiries:
            oldest = next(iter(self._expiries))
            if self._expiries[oldest] > now:
                return
            del self._expiries[oldest]
