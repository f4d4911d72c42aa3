"""The tee's shared state: which status callbacks were forwarded, and the callback URL secret.

Both live in the shared store so that any instance can take any callback: Twilio delivers a
callback to whichever pod the public URL reaches, and redelivers it (same
`I-Twilio-Idempotency-Token`) to another one just as well.
"""

from __future__ import annotations

import hashlib
import secrets

from proxy.store import keys
from proxy.store.send_store import RedisClient, translate_store_errors

SECRET_BYTES = 32


class RedisCallbackDeduper:
    """`CallbackDeduper` over the store; errors surface as `StoreError` (the tee then forwards:
    a callback delivered twice beats one dropped)."""

    def __init__(self, redis: RedisClient, ttl_seconds: float) -> None:
        self._redis = redis
        self._ttl_ms = int(ttl_seconds * 1000)

    async def seen(self, idempotency_token: str) -> bool:
        async with translate_store_errors():
            return bool(await self._redis.exists(_key(idempotency_token)))

    async def mark_forwarded(self, idempotency_token: str) -> None:
        async with translate_store_errors():
            await self._redis.set(_key(idempotency_token), b"1", px=self._ttl_ms)


async def shared_tee_secret(redis: RedisClient) -> bytes:
    """The fleet's callback URL secret: the first instance to ask makes it (SET NX), every
    other one reads that. Persisted with the store, so a restart keeps old callback URLs valid."""
    async with translate_store_errors():
        await redis.set(keys.tee_secret(), secrets.token_bytes(SECRET_BYTES), nx=True)
        value = await redis.get(keys.tee_secret())
    if not isinstance(value, bytes) or len(value) < SECRET_BYTES:
        raise RuntimeError("the store holds no usable callback URL secret")
    return value


def _key(idempotency_token: str) -> str:
    digest = hashlib.sha256(idempotency_token.encode()).hexdigest()[:32]
    return keys.callback_forwarded(digest)
