"""The settlement journal and the store's health state, without a network: the journal keeps
an outcome the store refused and retries it until accepted; StoreHealth turns probe results
into up/down only after `outage_after`."""

from __future__ import annotations

import asyncio

import pytest

from proxy.guard.dedup import StoredResponse
from proxy.guard.outcome import StoreAction
from proxy.metrics import Metrics
from proxy.server.prober import StoreHealth
from proxy.server.settlement import PendingOutcome, SettlementJournal
from proxy.store.send_store import SendRef, StoreError

REF = SendRef("rTAG", "fID")


class FlakyWrite:
    """A store write that fails `failures` times, then succeeds; counts its calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise StoreError("ConnectionError: lost")


def outcome(write, action=StoreAction.COMPLETE) -> PendingOutcome:
    return PendingOutcome(
        REF, action, "payload", write, None, StoredResponse(201, (), b"{}"), "SM1"
    )


async def test_an_accepted_write_leaves_nothing_pending():
    metrics = Metrics()
    journal = SettlementJournal(metrics)
    assert await journal.settle(outcome(FlakyWrite(0))) is None
    assert journal.pending(REF) is None
    assert metrics.value("sendguard_pending_outcome_writes") == 0


async def test_a_refused_write_is_kept_answered_from_and_retried_until_accepted():
    metrics = Metrics()
    journal = SettlementJournal(metrics, backoff_first=0.01, backoff_max=0.02)
    write = FlakyWrite(3)
    error = await journal.settle(outcome(write))
    assert isinstance(error, StoreError)
    pending = journal.pending(REF)
    assert pending is not None and pending.response is not None
    assert pending.message_sid == "SM1"
    assert metrics.value("sendguard_pending_outcome_writes") == 1
    assert await journal.flush(2.0) == 0
    assert write.calls == 4
    assert journal.pending(REF) is None
    assert metrics.value("sendguard_pending_outcome_writes") == 0


async def test_close_gives_up_after_its_deadline_and_says_how_many_are_left():
    journal = SettlementJournal(Metrics(), backoff_first=0.01, backoff_max=0.02)
    await journal.settle(outcome(FlakyWrite(10**9)))
    assert await journal.flush(0.1) == 1
    await journal.close(0.05)
    assert len(journal) == 1  # left in flight in the store: UNKNOWN at lease end


async def test_the_journal_is_bounded():
    journal = SettlementJournal(Metrics(), max_pending=2, backoff_first=10, backoff_max=10)
    for dedup_id in ("a", "b"):
        await journal.settle(
            PendingOutcome(SendRef("rTAG", dedup_id), StoreAction.RELEASE, "", FlakyWrite(9))
        )
    assert journal.full
    await journal.close(0.01)


async def test_retry_now_settles_a_pending_release_at_once():
    journal = SettlementJournal(Metrics(), backoff_first=10, backoff_max=10)
    pending = outcome(FlakyWrite(1), StoreAction.RELEASE)
    await journal.settle(pending)
    assert await journal.retry_now(pending)
    assert journal.pending(REF) is None
    await journal.close(0.01)


@pytest.mark.parametrize(
    ("probes", "transitions"),
    [
        # (ok?, at second) ...                              -> transitions seen
        ([(True, 0), (True, 1)], []),
        ([(False, 0), (False, 2.9), (True, 3.0)], []),  # under outage_after: no flip
        ([(False, 0), (False, 3.0)], [False]),
        ([(False, 0), (False, 3.5), (False, 4), (True, 5)], [False, True]),
        ([(False, 0), (True, 1), (False, 2), (False, 4.9)], []),  # a good probe resets it
        ([(False, 0), (False, 3), (True, 4), (False, 5), (False, 8)], [False, True, False]),
    ],
)
def test_store_health_decides_down_only_after_outage_after(probes, transitions):
    health = StoreHealth(outage_after=3.0)
    seen = [change for ok, at in probes if (change := health.observe(ok, at)) is not None]
    assert seen == transitions


def test_a_refused_recovery_is_tried_again_at_the_next_good_probe():
    health = StoreHealth(outage_after=1.0)
    health.observe(False, 0)
    assert health.observe(False, 1) is False
    assert health.observe(True, 2) is True
    health.refuse_recovery()
    assert health.observe(True, 2.5) is True


async def test_every_owed_outcome_of_one_record_is_kept_until_written():
    """Two requests for one record each owe a write (found by the spin model: keeping only the
    newer one left the older claim held, blocking a message that was never sent)."""
    journal = SettlementJournal(Metrics(), backoff_first=0.01, backoff_max=0.02)
    older, newer = FlakyWrite(3), FlakyWrite(1)
    await journal.settle(PendingOutcome(REF, StoreAction.RELEASE, "p", older))
    await journal.settle(PendingOutcome(REF, StoreAction.RELEASE, "p", newer))
    assert len(journal) == 2
    assert await journal.flush(2.0) == 0
    assert (older.calls, newer.calls) == (4, 2)  # both written, neither given up


async def test_while_degraded_settled_outcomes_still_answer_duplicates():
    journal = SettlementJournal(Metrics())
    journal.retain_settled(True)
    await journal.settle(outcome(FlakyWrite(0)))
    retained = journal.pending(REF)
    assert retained is not None and retained.message_sid == "SM1"
    journal.retain_settled(False)
    assert journal.pending(REF) is None


async def test_a_write_behind_the_answer_is_owed_at_once_and_lands_quietly():
    """settle_behind: owed before the caller answers (a duplicate here is replayed from
    memory, with the ordinary replay's reason), written in the background, and no pending
    gauge or log for the ordinary case."""
    metrics = Metrics()
    journal = SettlementJournal(metrics)
    landed = asyncio.Event()

    async def write() -> None:
        await landed.wait()

    errors: list[StoreError] = []
    journal.settle_behind(outcome(write), errors.append)
    owed = journal.pending(REF)
    assert owed is not None and owed.landing and owed.message_sid == "SM1"
    assert len(journal) == 1
    landed.set()
    assert await journal.flush(1.0) == 0
    assert journal.pending(REF) is None and not owed.landing
    assert errors == []
    assert metrics.value("sendguard_pending_outcome_writes") == 0


async def test_a_refused_write_behind_is_reported_once_and_retried():
    metrics = Metrics()
    journal = SettlementJournal(metrics, backoff_first=0.01, backoff_max=0.02)
    write = FlakyWrite(2)
    errors: list[StoreError] = []
    journal.settle_behind(outcome(write), errors.append)
    pending = journal.pending(REF)
    assert pending is not None
    await asyncio.sleep(0)  # the first write runs (and fails)
    await asyncio.sleep(0)
    assert len(errors) == 1 and pending.refused and not pending.landing
    assert metrics.value("sendguard_pending_outcome_writes") == 1
    assert await journal.flush(2.0) == 0
    assert write.calls == 3 and len(errors) == 1
    assert metrics.value("sendguard_pending_outcome_writes") == 0


async def test_close_leaves_an_unlanded_write_behind_owed():
    """Shutdown flushes what it can; a write that never lands stays in flight in the store
    (UNKNOWN at lease end, never a resend): the journal says it is left."""
    journal = SettlementJournal(Metrics(), backoff_first=0.01, backoff_max=0.02)
    journal.settle_behind(outcome(FlakyWrite(10**9)), lambda exc: None)
    await journal.close(0.05)
    assert len(journal) == 1
