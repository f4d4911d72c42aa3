"""The outcome is written after the answer (issue 14 point 2; proxy/server/settlement.py):
Twilio's answer goes back at once, a duplicate on this instance is replayed from memory, and a
duplicate on another instance waits on the in-flight record until the write lands. Two
instances on one real valkey-server behind a fault proxy (the rig of test_store_faults.py)."""

from __future__ import annotations

import asyncio

from proxy.sandbox import Fault
from tests.store.test_store_faults import (  # noqa: F401  (fixtures)
    assert_one_create,
    link,
    rig_factory,
    valkey,
)


async def test_the_answer_does_not_wait_for_the_outcome_write(rig_factory):  # noqa: F811
    rig = await rig_factory(inflight_wait=3.0)
    rig.fake.push_fault(Fault("delay", seconds=0.3))
    pending = asyncio.ensure_future(rig.ledger.send(rig.http, rig.first, "wb", key="key-wb"))
    await rig.fake.wait_for_creates(1)
    # From now every store reply is held 1.5 s (commands still run): the COMPLETE's answer
    # is late. Waiting for it inline would hold Twilio's answer as long.
    rig.link.stall(1.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = await pending
    assert (first.status, first.decision) == (201, "forwarded")
    assert loop.time() - started < 1.0, "the answer waited for the outcome write"
    # A duplicate here meanwhile: replayed from the journal, no store round trip.
    again = await rig.ledger.send(rig.http, rig.first, "wb", key="key-wb")
    assert (again.status, again.decision, again.sid) == (201, "replayed", first.sid)
    assert loop.time() - started < 1.2, "the duplicate waited for the store"
    rig.link.unstall()
    # Once the write has landed, every instance replays it from the store.
    elsewhere = await rig.ledger.send(rig.http, rig.second, "wb", key="key-wb")
    assert (elsewhere.status, elsewhere.decision, elsewhere.sid) == (201, "replayed", first.sid)
    rig.ledger.check(rig.fake)
    assert_one_create(rig, "wb")


async def test_a_duplicate_on_another_instance_waits_for_the_write_and_replays(
    rig_factory,  # noqa: F811
):
    rig = await rig_factory(inflight_wait=3.0)
    rig.fake.push_fault(Fault("delay", seconds=0.5))
    pending = asyncio.ensure_future(rig.ledger.send(rig.http, rig.first, "wb2", key="key-wb2"))
    await rig.fake.wait_for_creates(1)
    # Claimed while the first is still sending: the record is in flight, so it waits.
    other = await rig.ledger.send(rig.http, rig.second, "wb2", key="key-wb2")
    first = await pending
    assert (first.status, first.decision) == (201, "forwarded")
    assert (other.status, other.decision, other.sid) == (201, "replayed", first.sid)
    rig.ledger.check(rig.fake)
    assert_one_create(rig, "wb2")
