"""Each Lua script exercised directly, including running it twice, on every kind of server
(embedded, shared, and a one-node Redis Cluster that rejects any cross-slot script)."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy.guard.dedup import RecordState, StoredResponse
from proxy.guard.protection import Suppression
from proxy.store import keys
from proxy.store.send_store import ClaimRequest, SendRef, SendStore

RESPONSE = StoredResponse(201, (("Content-Type", "application/json"),), b'{"sid": "SM1"}')
REF = SendRef("rTAG", "id1")
MINUTE = 60_000


def request(token: str = "t1", **kw) -> ClaimRequest:
    args = dict(
        token=token, payload_hash="p", lease_ms=60_000, ttl_ms=600_000, slide_ms=0,
        meta={"to": "+1"}, window_ms=(MINUTE, 3_600_000), keep_ms=3_600_000,
        scopes=("msg:x", "from:+1500", "to"), key_index=False,
    )  # fmt: skip
    args.update(kw)
    return ClaimRequest(**args)


async def complete(store: SendStore, ref: SendRef = REF, token: str = "t1", **kw) -> int:
    args = dict(response=RESPONSE, message_sid="SM1", ttl_ms=600_000, content="msg:x")
    args.update(kw)
    return await store.complete(ref, token=token, **args)


async def test_claim_then_claim_again_sees_the_owner(redis_client):
    store = SendStore(redis_client)
    first = await store.claim(REF, request())
    second = await store.claim(REF, request("t2"))
    assert first.claimed and first.record is None
    assert first.recipient.counts == (1, 1)
    assert not second.claimed and second.recipient is None
    assert second.record.state is RecordState.IN_FLIGHT
    assert second.record.token == "t1"
    assert second.record.meta == {"to": "+1"}
    assert second.record.lease_until_ms - second.record.claimed_at_ms == 60_000
    assert abs(second.now_ms - second.record.claimed_at_ms) < 5_000


async def test_fifty_concurrent_claims_have_exactly_one_winner(redis_client):
    store = SendStore(redis_client)
    results = await asyncio.gather(*(store.claim(REF, request(f"t{i}")) for i in range(50)))
    assert sum(result.claimed for result in results) == 1


async def test_concurrent_sends_to_one_recipient_are_counted_in_order(redis_client):
    store = SendStore(redis_client)
    claims = await asyncio.gather(
        *(store.claim(SendRef("rTAG", f"id{i}"), request(f"t{i}")) for i in range(20))
    )
    assert sorted(claim.recipient.counts[0] for claim in claims) == list(range(1, 21))


async def test_complete_is_owner_only_and_idempotent(redis_client):
    store = SendStore(redis_client)
    await store.claim(REF, request())
    assert await complete(store, token="intruder") == 0
    assert await complete(store) == 1
    assert await complete(store) == 2
    record = await store.get(REF)
    assert record.state is RecordState.DONE
    assert record.response == RESPONSE
    assert record.message_sid == "SM1"
    assert await store.content_of("rTAG", "SM1") == "msg:x"


async def test_the_sid_index_finds_the_send_and_its_content_for_its_recipient_only(redis_client):
    store = SendStore(redis_client)
    await store.claim(REF, request())
    await complete(store)
    assert await store.find_ref(message_sid="SM1") == REF
    assert await store.content_of("rOTHER", "SM1") is None  # not that recipient's message
    # A callback may come long after a fingerprint's record is gone: the content stays.
    assert await redis_client.pttl(keys.message_ref("SM1")) > 600_000
    # Sends completed before the SID index carried the content: the recipient's old hash.
    await redis_client.hset(keys.recipient_messages("rOLD"), "SM9", "msg:old")
    assert await store.content_of("rOLD", "SM9") == "msg:old"


async def test_complete_on_a_missing_record_does_not_create_one(redis_client):
    store = SendStore(redis_client)
    assert await complete(store, ref=SendRef("rTAG", "gone")) == 0
    assert await store.get(SendRef("rTAG", "gone")) is None


async def test_complete_records_learned_suppressions(redis_client):
    store = SendStore(redis_client)
    await store.claim(REF, request())
    until = int(time.time() * 1000) + 60_000
    learned = [("from:+1500", Suppression(21610, until, "response"), 60_000)]
    assert await complete(store, learned=learned) == 1
    again = await store.claim(SendRef("rTAG", "id2"), request("t2"))
    assert again.recipient.suppressions == (("from:+1500", Suppression(21610, until, "response")),)
    assert 0 < await redis_client.pttl(keys.recipient_suppressions("rTAG")) <= 60_000


async def test_release_is_owner_only_idempotent_and_forgets_the_send(redis_client):
    store = SendStore(redis_client)
    await store.claim(REF, request())
    assert await store.release(REF, token="intruder") is False
    assert await store.release(REF, token="t1") is True
    assert await store.release(REF, token="t1") is False
    retry = await store.claim(REF, request("t2"))
    assert retry.claimed  # released: a retry may send
    assert retry.recipient.counts == (1, 1)  # the released attempt does not count


async def test_release_never_deletes_a_completed_record(redis_client):
    store = SendStore(redis_client)
    await store.claim(REF, request())
    await complete(store)
    assert await store.release(REF, token="t1") is False
    assert (await store.get(REF)).state is RecordState.DONE


async def test_release_trips_the_breaker_once_and_the_probe_slot_is_single(redis_client):
    store = SendStore(redis_client)
    await store.claim(REF, request())
    assert await store.release(REF, token="t1", trip_ms=200, breaker_ttl_ms=60_000)
    # A concurrent refusal does not trip again while the breaker is open.
    await store.claim(SendRef("rTAG", "id2"), request("t2"))
    await store.release(SendRef("rTAG", "id2"), token="t2", trip_ms=50_000, breaker_ttl_ms=60_000)
    while_open = await store.claim(SendRef("rTAG", "id3"), request("t3"))
    assert while_open.recipient.trips == 1
    assert while_open.recipient.open_until_ms > while_open.now_ms
    assert not while_open.recipient.probe_is_mine
    await store.release(SendRef("rTAG", "id3"), token="t3")
    await asyncio.sleep(0.25)
    probes = await asyncio.gather(
        *(store.claim(SendRef("rTAG", f"p{i}"), request(f"p{i}")) for i in range(5))
    )
    assert sum(claim.recipient.probe_is_mine for claim in probes) == 1


async def test_a_completed_probe_closes_the_breaker(redis_client):
    store = SendStore(redis_client)
    await store.claim(REF, request())
    await store.release(REF, token="t1", trip_ms=1, breaker_ttl_ms=60_000)
    await asyncio.sleep(0.01)
    probe = await store.claim(SendRef("rTAG", "probe"), request("probe"))
    assert probe.recipient.probe_is_mine
    assert await complete(store, ref=SendRef("rTAG", "probe"), token="probe") == 1
    after = await store.claim(SendRef("rTAG", "after"), request("after"))
    assert after.recipient.open_until_ms == 0 and after.recipient.trips == 1


async def test_mark_unknown_by_owner_then_twice(redis_client):
    store = SendStore(redis_client)
    await store.claim(REF, request(ttl_ms=1_000))
    kw = dict(reason="upstream-timeout", ttl_ms=86_400_000, require_expired=False)
    assert await store.mark_unknown(REF, token="intruder", **kw) == 0
    assert await store.mark_unknown(REF, token="t1", **kw) == 1
    assert await store.mark_unknown(REF, token="t1", **kw) == 2
    record = await store.get(REF)
    assert record.state is RecordState.UNKNOWN
    assert record.unknown_reason == "upstream-timeout"
    # An UNKNOWN outlives the short claim TTL: it is never released by expiry within a day.
    assert await redis_client.pttl(REF.record) > 3_600_000


async def test_mark_stale_requires_an_expired_lease(redis_client):
    store = SendStore(redis_client)
    await store.claim(REF, request(lease_ms=60_000))
    kw = dict(reason="claim-owner-gone", ttl_ms=86_400_000, require_expired=True)
    assert await store.mark_unknown(REF, token="t1", **kw) == 0
    assert (await store.get(REF)).state is RecordState.IN_FLIGHT
    stale = SendRef("rTAG", "id2")
    await store.claim(stale, request(lease_ms=0))
    assert await store.mark_unknown(stale, token="t1", **kw) == 1
    assert await store.mark_unknown(stale, token="t1", **kw) == 2


async def test_mark_unknown_never_downgrades_a_completed_record(redis_client):
    store = SendStore(redis_client)
    await store.claim(REF, request())
    await complete(store)
    kw = dict(reason="x", ttl_ms=60_000, require_expired=False)
    assert await store.mark_unknown(REF, token="t1", **kw) == 0
    assert (await store.get(REF)).state is RecordState.DONE


async def test_late_owner_may_complete_an_unknown_record(redis_client):
    """A paused owner that comes back with Twilio's real answer turns UNKNOWN into DONE."""
    store = SendStore(redis_client)
    await store.claim(REF, request(lease_ms=0))
    await store.mark_unknown(
        REF, token="t1", reason="claim-owner-gone", ttl_ms=60_000, require_expired=True
    )
    assert await complete(store) == 1
    assert (await store.get(REF)).state is RecordState.DONE


async def test_fingerprint_window_slides_while_duplicates_arrive(redis_client):
    store = SendStore(redis_client)
    await store.claim(REF, request(ttl_ms=1_000))
    assert await redis_client.pttl(REF.record) <= 1_000
    await store.claim(REF, request("t2", ttl_ms=1_000, slide_ms=50_000))
    assert await redis_client.pttl(REF.record) > 40_000
    await store.claim(REF, request("t3", ttl_ms=1_000, slide_ms=10_000))  # never shortens
    assert await redis_client.pttl(REF.record) > 40_000


async def test_key_index_names_the_first_recipient_and_payload(redis_client):
    store = SendStore(redis_client)
    first = await store.claim(SendRef("rONE", "k1"), request(key_index=True))
    again = await store.claim(SendRef("rONE", "k1"), request("t2", key_index=True))
    other = await store.claim(SendRef("rTWO", "k1"), request("t3", key_index=True))
    assert first.key_owner is None
    assert again.key_owner == "rONE p" and not again.claimed
    assert other.key_owner == "rONE p" and other.claimed  # the caller refuses and releases


async def test_add_suppression_outside_a_send(redis_client):
    store = SendStore(redis_client)
    until = int(time.time() * 1000) + 60_000
    await store.add_suppression("rTAG", "to", Suppression(30006, until, "message"), 60_000)
    await store.add_suppression("rTAG", "to", Suppression(30006, until, "message"), 60_000)
    claim = await store.claim(REF, request())
    assert claim.recipient.suppressions == (("to", Suppression(30006, until, "message")),)


async def test_account_admit_counts_every_window_and_rolls_back_a_refusal(redis_client):
    store = SendStore(redis_client)
    slots = ((60_000, 7), (3_600_000, 0))
    account = "AC" + "1" * 32

    async def admit(enforce: bool = True) -> tuple[int, ...]:
        return await store.admit_account(account, slots, [2, 3], enforce=enforce)

    assert await admit() == (1, 1)
    assert await admit() == (2, 2)
    assert await admit() == (3, 3)  # over 2/min: refused, and rolled back ...
    assert await admit() == (3, 3)  # ... so running it again finds the same counts
    assert await admit(enforce=False) == (3, 3)  # report mode counts what it forwards
    assert await admit(enforce=False) == (4, 4)
    ttl = await redis_client.pttl(keys.account_sends(account, 60_000, 7))
    assert 60_000 < ttl <= 120_000


@pytest.mark.parametrize("tag", ["rTAG", "r" + "0" * 24])
def test_every_recipient_key_carries_the_recipient_tag(tag):
    for build in (
        keys.recipient_sends,
        keys.recipient_breaker,
        keys.recipient_suppressions,
        keys.recipient_messages,
    ):
        assert f"{{{tag}}}" in build(tag)
    assert f"{{{tag}}}" in keys.dedup_record(tag, "id")
