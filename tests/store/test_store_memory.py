"""Store memory per fresh send (docs/contract.md#budget, issue 14): 10,000 sends' store writes
(claim, then complete with the sandbox's 201) against a real valkey, measured with INFO memory.

Each send goes to its own recipient, as a fleet's sends mostly do, so every per-recipient key
is paid per send: the worst case for memory. What each key costs is in proxy/store/codec.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from proxy.guard.dedup import StoredResponse
from proxy.guard.facts import body_digest, recipient_tag
from proxy.guard.suppression import content_field, scope_fields
from proxy.sandbox.messages import build_message
from proxy.store import keys
from proxy.store.send_store import ClaimRequest, SendRef, SendStore

SENDS = 10_000
ACCOUNT = "AC" + "5e" * 16
SENDER = "+15005550006"
TEXT = "Your verification code is 123456"
LEASE_MS = 30_000
DAY_MS = 86_400_000


def _hex(*parts: str, chars: int) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:chars]


async def fresh_send(store: SendStore, index: int, *, keyed: bool) -> int:
    """One fresh send's store writes, shaped as guarded.py makes them with the default
    settings (limits 5/min,20/h,50/day; the dedup window 10 min; keys kept 24 h)."""
    to = f"+1555{index:07d}"
    tag = recipient_tag(ACCOUNT, to)
    dedup_id = ("k" if keyed else "f") + _hex(str(index), "id", chars=40)
    ttl_ms = DAY_MS if keyed else 600_000
    content = content_field(SENDER, TEXT)
    meta = {
        "account": ACCOUNT, "route": "messages", "to": to, "from": SENDER,
        "body_sha": body_digest(TEXT), "body_smart": body_digest(TEXT),
    }  # fmt: skip
    token = secrets.token_hex(16)
    request = ClaimRequest(
        token=token, payload_hash=_hex(str(index), "payload", chars=64), lease_ms=LEASE_MS,
        ttl_ms=ttl_ms, slide_ms=0 if keyed else ttl_ms, meta=meta,
        window_ms=(60_000, 3_600_000, DAY_MS), keep_ms=DAY_MS,
        scopes=scope_fields(SENDER, content), key_index=keyed,
        key_lookup_id=_hex(str(index), "lookup", chars=32) if keyed else "",
    )  # fmt: skip
    ref = SendRef(tag, dedup_id)
    claim = await store.claim(ref, request)
    assert claim.claimed
    # The sandbox's answer, as its json_response serialises it.
    form = [("To", to), ("From", SENDER), ("Body", TEXT)]
    message: dict[str, Any] = build_message(ACCOUNT, form, datetime.now(UTC).replace(microsecond=0))
    body = json.dumps(message).encode()
    response = StoredResponse(201, (("Content-Type", "application/json; charset=utf-8"),), body)
    done = await store.complete(
        ref, token=token, response=response, message_sid=message["sid"], ttl_ms=ttl_ms,
        content=content,
    )  # fmt: skip
    assert done == 1
    return len(body)


async def used_memory(client: Redis) -> int:
    # FLUSHALL frees lazily on valkey: measure once nothing is left to free.
    for _ in range(200):
        info = await client.info("memory")
        if not info.get("lazyfree_pending_objects"):
            return int(info["used_memory"])
        await asyncio.sleep(0.05)
    raise AssertionError("the store is still freeing memory")


async def bytes_per_send(url: str, *, keyed: bool, sends: int = SENDS) -> tuple[float, int]:
    client = Redis.from_url(url)
    try:
        await client.flushall(asynchronous=False)
        store = SendStore(client)
        await fresh_send(store, -1, keyed=keyed)  # scripts loaded, structures made
        before = await used_memory(client)
        sizes: list[int] = []
        for start in range(0, sends, 250):
            batch = range(start, min(sends, start + 250))
            sizes += await asyncio.gather(*(fresh_send(store, i, keyed=keyed) for i in batch))
        after = await used_memory(client)
        record = keys.dedup_record(recipient_tag(ACCOUNT, "+15550000007"), "")
        found = [key async for key in client.scan_iter(match=record + "*", count=1000)]
        assert [await client.object("ENCODING", key) for key in found] == [b"listpack"]
        return (after - before) / sends, sum(sizes) // len(sizes)
    finally:
        await client.aclose()


@pytest.mark.timeout(300)
async def test_a_fresh_send_costs_at_most_a_kilobyte_of_store(shared_redis_url):
    per_send, answer = await bytes_per_send(shared_redis_url, keyed=False)
    assert answer > 750  # a realistic answer is stored (and replayed byte for byte)
    assert per_send <= 1024, f"{per_send:.0f} bytes per fresh send"


@pytest.mark.timeout(300)
async def test_a_keyed_send_adds_only_its_two_small_indexes(shared_redis_url):
    # The key's index (its own slot) and the admin's key lookup: ~150 bytes each.
    # 2,000 sends: the per-send figure is as steady as over 10,000 (the keyless test).
    per_send, _ = await bytes_per_send(shared_redis_url, keyed=True, sends=2_000)
    assert per_send <= 1300, f"{per_send:.0f} bytes per fresh keyed send"
