"""The dedup record store: four primitives over the Lua scripts, nothing else.

All policy (what to forward, replay or refuse) lives in `proxy.guard.dedup`; this layer only
moves records, and translates every redis-py failure into `StoreError` at one boundary.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from proxy.guard.dedup import DedupRecord, StoredResponse
from proxy.store import keys, scripts

RedisClient = Redis | RedisCluster


class StoreError(Exception):
    """The store could not answer: the caller must not assume anything about the record."""


@asynccontextmanager
async def translate_store_errors() -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError, TimeoutError) as exc:
        raise StoreError(f"{type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class ClaimResult:
    claimed: bool
    now_ms: int  # the store's clock: leases are compared against it, never a local clock
    record: DedupRecord | None


class DedupStore:
    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis
        # register_script: EVALSHA with a transparent SCRIPT LOAD on NOSCRIPT (store restarts).
        self._claim = redis.register_script(scripts.CLAIM)
        self._complete = redis.register_script(scripts.COMPLETE)
        self._release = redis.register_script(scripts.RELEASE)
        self._mark_unknown = redis.register_script(scripts.MARK_UNKNOWN)

    async def claim(
        self,
        dedup_id: str,
        *,
        token: str,
        payload_hash: str,
        lease_ms: int,
        ttl_ms: int,
        slide_ms: int,
        meta: dict[str, Any],
    ) -> ClaimResult:
        args: list[str | int] = [token, payload_hash, lease_ms, ttl_ms, slide_ms, json.dumps(meta)]
        async with translate_store_errors():
            reply = cast(
                list[bytes], await self._claim(keys=[keys.dedup_record(dedup_id)], args=args)
            )
        now_ms = int(reply[1])
        if reply[0] == b"claimed":
            return ClaimResult(True, now_ms, None)
        fields = {reply[i].decode(): reply[i + 1] for i in range(2, len(reply), 2)}
        return ClaimResult(False, now_ms, DedupRecord.from_hash(fields))

    async def complete(
        self,
        dedup_id: str,
        *,
        token: str,
        response: StoredResponse,
        message_sid: str,
        ttl_ms: int,
    ) -> int:
        headers = json.dumps(list(response.headers))
        args: list[str | int | bytes] = [token, response.status, headers, response.body]
        args += [message_sid, ttl_ms]
        async with translate_store_errors():
            return int(await self._complete(keys=[keys.dedup_record(dedup_id)], args=args))

    async def release(self, dedup_id: str, *, token: str) -> bool:
        async with translate_store_errors():
            return bool(await self._release(keys=[keys.dedup_record(dedup_id)], args=[token]))

    async def mark_unknown(
        self, dedup_id: str, *, token: str, reason: str, ttl_ms: int, require_expired: bool
    ) -> int:
        args: list[str | int] = [token, reason, ttl_ms, "1" if require_expired else "0"]
        async with translate_store_errors():
            return int(await self._mark_unknown(keys=[keys.dedup_record(dedup_id)], args=args))

    async def get(self, dedup_id: str) -> DedupRecord | None:
        async with translate_store_errors():
            raw = cast(dict[bytes, bytes], await self.redis.hgetall(keys.dedup_record(dedup_id)))
        if not raw:
            return None
        return DedupRecord.from_hash({k.decode(): v for k, v in raw.items()})

    async def ping(self) -> None:
        async with translate_store_errors():
            await self.redis.ping()
