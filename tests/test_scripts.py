"""Each Lua script exercised directly, including running it twice, on every kind of server."""

from __future__ import annotations

import asyncio

import pytest

from proxy.guard.dedup import RecordState, StoredResponse
from proxy.store import keys
from proxy.store.dedup_store import DedupStore

RESPONSE = StoredResponse(201, (("Content-Type", "application/json"),), b'{"sid": "SM1"}')


def claim(store: DedupStore, dedup_id: str = "id1", token: str = "t1", **kw):
    args = dict(payload_hash="p", lease_ms=60_000, ttl_ms=600_000, slide_ms=0, meta={"to": "+1"})
    args.update(kw)
    return store.claim(dedup_id, token=token, **args)


async def test_claim_then_claim_again_sees_the_owner(redis_client):
    store = DedupStore(redis_client)
    first = await claim(store)
    second = await claim(store, token="t2")
    assert first.claimed and first.record is None
    assert not second.claimed
    assert second.record.state is RecordState.IN_FLIGHT
    assert second.record.token == "t1"
    assert second.record.meta == {"to": "+1"}
    assert second.record.lease_until_ms - second.record.claimed_at_ms == 60_000
    assert abs(second.now_ms - second.record.claimed_at_ms) < 5_000


async def test_fifty_concurrent_claims_have_exactly_one_winner(redis_client):
    store = DedupStore(redis_client)
    results = await asyncio.gather(*(claim(store, token=f"t{i}") for i in range(50)))
    assert sum(result.claimed for result in results) == 1


async def test_complete_is_owner_only_and_idempotent(redis_client):
    store = DedupStore(redis_client)
    await claim(store)
    kw = dict(response=RESPONSE, message_sid="SM1", ttl_ms=600_000)
    assert await store.complete("id1", token="intruder", **kw) == 0
    assert await store.complete("id1", token="t1", **kw) == 1
    assert await store.complete("id1", token="t1", **kw) == 2
    record = await store.get("id1")
    assert record.state is RecordState.DONE
    assert record.response == RESPONSE
    assert record.message_sid == "SM1"


async def test_complete_on_a_missing_record_does_not_create_one(redis_client):
    store = DedupStore(redis_client)
    kw = dict(response=RESPONSE, message_sid="SM1", ttl_ms=600_000)
    assert await store.complete("gone", token="t1", **kw) == 0
    assert await store.get("gone") is None


async def test_release_is_owner_only_and_idempotent(redis_client):
    store = DedupStore(redis_client)
    await claim(store)
    assert await store.release("id1", token="intruder") is False
    assert await store.release("id1", token="t1") is True
    assert await store.release("id1", token="t1") is False
    assert (await claim(store, token="t2")).claimed  # released: a retry may send


async def test_release_never_deletes_a_completed_record(redis_client):
    store = DedupStore(redis_client)
    await claim(store)
    await store.complete("id1", token="t1", response=RESPONSE, message_sid="SM1", ttl_ms=60_000)
    assert await store.release("id1", token="t1") is False
    assert (await store.get("id1")).state is RecordState.DONE


async def test_mark_unknown_by_owner_then_twice(redis_client):
    store = DedupStore(redis_client)
    await claim(store, ttl_ms=1_000)
    kw = dict(reason="upstream-timeout", ttl_ms=86_400_000, require_expired=False)
    assert await store.mark_unknown("id1", token="intruder", **kw) == 0
    assert await store.mark_unknown("id1", token="t1", **kw) == 1
    assert await store.mark_unknown("id1", token="t1", **kw) == 2
    record = await store.get("id1")
    assert record.state is RecordState.UNKNOWN
    assert record.unknown_reason == "upstream-timeout"
    # An UNKNOWN outlives the short claim TTL: it is never released by expiry within a day.
    assert await redis_client.pttl(keys.dedup_record("id1")) > 3_600_000


async def test_mark_stale_requires_an_expired_lease(redis_client):
    store = DedupStore(redis_client)
    await claim(store, lease_ms=60_000)
    kw = dict(reason="claim-owner-gone", ttl_ms=86_400_000, require_expired=True)
    assert await store.mark_unknown("id1", token="t1", **kw) == 0
    assert (await store.get("id1")).state is RecordState.IN_FLIGHT
    await claim(store, dedup_id="id2", lease_ms=0)
    assert await store.mark_unknown("id2", token="t1", **kw) == 1
    assert await store.mark_unknown("id2", token="t1", **kw) == 2


async def test_mark_unknown_never_downgrades_a_completed_record(redis_client):
    store = DedupStore(redis_client)
    await claim(store)
    await store.complete("id1", token="t1", response=RESPONSE, message_sid="SM1", ttl_ms=60_000)
    kw = dict(reason="x", ttl_ms=60_000, require_expired=False)
    assert await store.mark_unknown("id1", token="t1", **kw) == 0
    assert (await store.get("id1")).state is RecordState.DONE


async def test_late_owner_may_complete_an_unknown_record(redis_client):
    """A paused owner that comes back with Twilio's real answer turns UNKNOWN into DONE."""
    store = DedupStore(redis_client)
    await claim(store, lease_ms=0)
    await store.mark_unknown(
        "id1", token="t1", reason="claim-owner-gone", ttl_ms=60_000, require_expired=True
    )
    assert (
        await store.complete("id1", token="t1", response=RESPONSE, message_sid="SM1", ttl_ms=60_000)
        == 1
    )
    assert (await store.get("id1")).state is RecordState.DONE


async def test_fingerprint_window_slides_while_duplicates_arrive(redis_client):
    store = DedupStore(redis_client)
    await claim(store, ttl_ms=1_000, slide_ms=0)
    key = keys.dedup_record("id1")
    assert await redis_client.pttl(key) <= 1_000
    await claim(store, token="t2", ttl_ms=1_000, slide_ms=50_000)
    assert await redis_client.pttl(key) > 40_000
    await claim(store, token="t3", ttl_ms=1_000, slide_ms=10_000)  # never shortens
    assert await redis_client.pttl(key) > 40_000


@pytest.mark.parametrize("dedup_id", ["id1", "k" + "0" * 40, "f" + "9" * 40])
def test_every_key_carries_its_identity_as_hash_tag(dedup_id):
    assert f"{{{dedup_id}}}" in keys.dedup_record(dedup_id)
