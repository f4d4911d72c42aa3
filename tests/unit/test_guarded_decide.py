"""The guarded send's decisions (proxy/guard/guarded_decide.py): step and reason pinned for every
row of the claim loop, the journal's answers, release verification, the 429 wait and the
refusal mapping. Beside tests/unit/test_outcome.py (how an attempt ended -> store action)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from proxy.decision import Decision
from proxy.errors import BreakerOpen, RateLimited, Suppressed
from proxy.guard.dedup import DedupRecord, RecordState, StoredResponse
from proxy.guard.guarded_decide import (
    ClaimStep,
    ClaimView,
    OwedOutcome,
    OwedStep,
    Reason,
    ReleaseCheck,
    SendIdentity,
    account_refusal,
    answer_owed,
    check_unapplied_release,
    next_429_backoff,
    next_poll_delay,
    next_step,
    refusal,
    retry_after_seconds,
    wait_before_429_retry,
)
from proxy.guard.outcome import StoreAction
from proxy.guard.protection import Verdict

NOW = 1_000_000
MINE = "tok-mine"
P = "payload-1"
KEYED = SendIdentity("rTAG", P, True, MINE)
PRINTED = SendIdentity("rTAG", P, False, MINE)


def record(state, *, token="tok-other", payload=P, lease_left_ms=5_000, unknown_reason=""):
    response = StoredResponse(201, (), b"{}") if state is RecordState.DONE else None
    return DedupRecord(state, token, payload, NOW - 1_000, NOW + lease_left_ms, response,
                       unknown_reason=unknown_reason)  # fmt: skip


S = ClaimStep
R = Reason
IN, DONE, UNK = RecordState.IN_FLIGHT, RecordState.DONE, RecordState.UNKNOWN

# (claimed, key_owner, replicas, record, send, min_replicas, wait_left) -> step, reason, release
CLAIM_TABLE = [
    # ours
    (True,  None,           None, None, KEYED,   0, 1.0, S.SEND,           R.FIRST_ATTEMPT,         False),
    (True,  "rTAG payload-1", None, None, KEYED, 0, 1.0, S.SEND,           R.FIRST_ATTEMPT,         False),
    (True,  None,           2,    None, KEYED,   2, 1.0, S.SEND,           R.FIRST_ATTEMPT,         False),
    (True,  None,           1,    None, KEYED,   2, 1.0, S.NOT_REPLICATED, R.CLAIM_NOT_REPLICATED,  False),
    # the key is indexed to another recipient/payload
    (True,  "rTAG other",   None, None, KEYED,   0, 1.0, S.KEY_MISMATCH,   R.KEY_REUSED,            True),
    (False, "rOTHER payload-1", None, record(DONE), KEYED, 0, 1.0, S.KEY_MISMATCH, R.KEY_REUSED,    False),
    (True,  "rTAG other",   1,    None, KEYED,   2, 1.0, S.KEY_MISMATCH,   R.KEY_REUSED,            True),
    # our own claim, run twice (its first answer lost)
    (False, None, None, record(IN, token=MINE), KEYED,   0, 1.0, S.RECLAIM, R.FIRST_ATTEMPT,        False),
    (False, None, None, record(IN, token=MINE, lease_left_ms=-1), KEYED, 0, 0.0, S.RECLAIM,
     R.FIRST_ATTEMPT, False),
    # the dedup table
    (False, None, None, record(DONE),           KEYED,   0, 1.0, S.REPLAY,  R.DUPLICATE_KEY,         False),
    (False, None, None, record(DONE),           PRINTED, 0, 1.0, S.REPLAY,  R.DUPLICATE_FINGERPRINT, False),
    (False, None, None, record(DONE, token=MINE), KEYED, 0, 1.0, S.REPLAY,  R.DUPLICATE_KEY,         False),
    (False, None, None, record(DONE, payload="other"), KEYED, 0, 1.0, S.KEY_MISMATCH, R.KEY_REUSED,  False),
    (False, None, None, record(DONE, payload="other"), PRINTED, 0, 1.0, S.REPLAY,
     R.DUPLICATE_FINGERPRINT, False),
    (False, None, None, record(UNK, unknown_reason="upstream-timeout"), KEYED, 0, 1.0, S.UNKNOWN,
     "upstream-timeout", False),
    (False, None, None, record(UNK),            KEYED,   0, 1.0, S.UNKNOWN, R.UNKNOWN,               False),
    (False, None, None, record(IN, lease_left_ms=0), KEYED, 0, 1.0, S.MARK_STALE, R.CLAIM_OWNER_GONE, False),
    (False, None, None, record(IN, lease_left_ms=-5), PRINTED, 0, 0.0, S.MARK_STALE,
     R.CLAIM_OWNER_GONE, False),
    # in flight elsewhere: wait, then give up
    (False, None, None, record(IN),             KEYED,   0, 1.0, S.WAIT,    R.IN_FLIGHT_KEY,         False),
    (False, None, None, record(IN),             PRINTED, 0, 1.0, S.WAIT,    R.IN_FLIGHT_FINGERPRINT, False),
    (False, None, None, record(IN),             KEYED,   0, 0.0, S.GIVE_UP, R.IN_FLIGHT_KEY,         False),
    (False, None, None, record(IN),             PRINTED, 0, -1,  S.GIVE_UP, R.IN_FLIGHT_FINGERPRINT, False),
    # not claimed and no record (gone between the script's steps): claim again, within the wait
    (False, None, None, None,                   KEYED,   0, 1.0, S.WAIT,    R.IN_FLIGHT_KEY,         False),
    (False, None, None, None,                   PRINTED, 0, 0.0, S.GIVE_UP, R.IN_FLIGHT_FINGERPRINT, False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("claimed", "owner", "replicas", "held", "send", "min_replicas", "wait_left", "step",
     "reason", "release_first"),
    CLAIM_TABLE,
)  # fmt: skip
def test_claim_loop_table(
    claimed, owner, replicas, held, send, min_replicas, wait_left, step, reason, release_first
):
    view = ClaimView(claimed, NOW, held, owner, replicas)
    decided = next_step(view, send, min_replicas=min_replicas, wait_left=wait_left, delay=0.02)
    assert (decided.step, decided.reason, decided.release_first) == (step, reason, release_first)
    if step in (S.REPLAY, S.UNKNOWN, S.MARK_STALE, S.RECLAIM):
        assert decided.record is held


def test_waiting_sleeps_the_poll_interval_but_never_past_the_deadline():
    view = ClaimView(False, NOW, record(IN))
    assert next_step(view, KEYED, min_replicas=0, wait_left=1.0, delay=0.02).sleep == 0.02
    assert next_step(view, KEYED, min_replicas=0, wait_left=0.01, delay=0.02).sleep == 0.01
    delays = [0.02]
    for _ in range(6):
        delays.append(next_poll_delay(delays[-1], 0.25))
    assert delays == [0.02, 0.04, 0.08, 0.16, 0.25, 0.25, 0.25]


@pytest.mark.parametrize(
    ("lease_left_ms", "retry_after"), [(5_000, 5.0), (200, 1.0), (1, 1.0), (30_500, 30.5)]
)
def test_giving_up_says_when_the_owners_lease_ends_at_least_one_second(lease_left_ms, retry_after):
    view = ClaimView(False, NOW, record(IN, lease_left_ms=lease_left_ms))
    decided = next_step(view, KEYED, min_replicas=0, wait_left=0.0, delay=0.02)
    assert decided.step is S.GIVE_UP and decided.retry_after == retry_after


A = StoreAction
W = OwedStep

# (action, owed payload, here, landing, by_key) -> step, reason
OWED_TABLE = [
    (A.COMPLETE,           P,       True,  True,  True,  W.REPLAY,          R.DUPLICATE_KEY),
    (A.COMPLETE,           P,       True,  True,  False, W.REPLAY,          R.DUPLICATE_FINGERPRINT),
    (A.COMPLETE_UNCOUNTED, P,       True,  True,  True,  W.REPLAY,          R.DUPLICATE_KEY),
    (A.COMPLETE,           P,       True,  False, True,  W.REPLAY,          R.DUPLICATE_KEY_UNSETTLED),
    (A.COMPLETE,           P,       False, False, False, W.REPLAY,          R.DUPLICATE_FINGERPRINT_UNSETTLED),
    (A.COMPLETE,           "other", True,  True,  True,  W.KEY_MISMATCH,    R.KEY_REUSED),
    (A.COMPLETE,           "other", True,  False, False, W.REPLAY,          R.DUPLICATE_FINGERPRINT_UNSETTLED),
    (A.MARK_UNKNOWN,       P,       True,  False, True,  W.UNKNOWN,         R.UNKNOWN_UNSETTLED),
    (A.MARK_UNKNOWN,       P,       False, False, False, W.UNKNOWN,         R.UNKNOWN_UNSETTLED),
    (A.MARK_UNKNOWN,       "other", True,  False, True,  W.KEY_MISMATCH,    R.KEY_REUSED),
    (A.RELEASE,            P,       True,  False, True,  W.RELEASE_PENDING, R.RELEASE_UNSETTLED),
    (A.RELEASE,            P,       False, False, True,  W.GO_ON,           R.FIRST_ATTEMPT),
    (A.RELEASE,            "other", False, False, True,  W.KEY_MISMATCH,    R.KEY_REUSED),
]  # fmt: skip


@pytest.mark.parametrize(
    ("action", "payload", "here", "landing", "by_key", "step", "reason"), OWED_TABLE
)
def test_a_duplicate_of_an_owed_outcome(action, payload, here, landing, by_key, step, reason):
    owed = OwedOutcome(action, payload, here, landing)
    assert answer_owed(owed, payload_hash=P, by_key=by_key) == (step, reason)


@pytest.mark.parametrize(
    ("read_back", "check"),
    [
        (None, ReleaseCheck.LOST),
        (record(IN, token=MINE), ReleaseCheck.STILL_HELD),
        (record(IN, token="tok-other"), ReleaseCheck.LOST),
        (record(DONE, token=MINE), ReleaseCheck.LOST),
        (record(UNK, token=MINE), ReleaseCheck.LOST),
    ],
)
def test_a_release_the_store_did_not_apply_is_trusted_only_if_a_read_agrees(read_back, check):
    assert check_unapplied_release(read_back, MINE) is check


T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC).timestamp()

# Retry-After value -> seconds from T0 (RFC 9110 §10.2.3: delay-seconds or an HTTP-date)
RETRY_AFTER_TABLE = [
    (None, 0.0),
    ("", 0.0),
    ("0", 0.0),
    ("3", 3.0),
    (" 3 ", 3.0),
    ("1.5", 1.5),
    ("-4", 0.0),
    ("nan", 0.0),
    ("soon", 0.0),
    ("Tue, 01 Dec 2026 12:00:07 GMT", 7.0),  # IMF-fixdate
    ("Tuesday, 01-Dec-26 12:00:07 GMT", 7.0),  # obsolete RFC 850
    ("Tue Dec  1 12:00:07 2026", 7.0),  # obsolete asctime
    ("Tue, 01 Dec 2026 11:59:00 GMT", 0.0),  # in the past
    ("Tue, 32 Dec 2026 12:00:07 GMT", 0.0),  # no such day
]


@pytest.mark.parametrize(("value", "seconds"), RETRY_AFTER_TABLE)
def test_retry_after_seconds_or_http_date(value, seconds):
    assert retry_after_seconds(value, T0) == pytest.approx(seconds)


def test_retry_after_reads_the_date_format_an_http_server_writes():
    when = datetime.fromtimestamp(T0 + 42, UTC)
    assert retry_after_seconds(format_datetime(when, usegmt=True), T0) == pytest.approx(42)


# (Retry-After, backoff, budget left, draw) -> wait (None: give up, answer the 429)
WAIT_429_TABLE = [
    (0.0, 0.1, 10.0, 0.0, 0.1),  # no Retry-After: the backoff, no jitter drawn
    (0.0, 0.1, 10.0, 1.0, 0.12),  # at most 20 % on top
    (2.0, 0.1, 10.0, 0.0, 2.0),  # Retry-After is a floor
    (2.0, 0.1, 10.0, 0.5, 2.2),
    (2.0, 0.1, 2.1, 1.0, 2.1),  # the jitter is cut where the budget ends
    (2.0, 0.1, 1.9, 0.0, None),  # a floor past the budget gives up
    (0.0, 0.4, 0.3, 0.0, None),  # so does a backoff past it
    (0.0, 0.1, 0.0, 0.0, None),  # no budget: the 429 goes back at once
]


@pytest.mark.parametrize(("retry_after", "backoff", "left", "draw", "wait"), WAIT_429_TABLE)
def test_wait_before_a_429_retry(retry_after, backoff, left, draw, wait):
    got = wait_before_429_retry(retry_after, backoff, left, draw)
    assert got == (None if wait is None else pytest.approx(wait))


def test_429_backoff_doubles_to_five_seconds():
    backoffs = [0.1]
    for _ in range(8):
        backoffs.append(next_429_backoff(backoffs[-1]))
    assert backoffs[-1] == 5.0 and backoffs[:4] == [0.1, 0.2, 0.4, 0.8]


def verdict(decision, reason, *, code=None, retry_after=None):
    return Verdict(False, decision, reason, twilio_code=code, retry_after=retry_after)


# protection verdict -> error class, status, reason
REFUSAL_TABLE = [
    (verdict(Decision.SUPPRESSED, "suppressed-21610", code=21610), Suppressed, 400, "suppressed-21610"),
    (verdict(Decision.BREAKER_OPEN, "breaker-open", retry_after=30.0), BreakerOpen, 429, "breaker-open"),
    (verdict(Decision.RATE_LIMITED, "over-5/min", retry_after=12.0), RateLimited, 429, "over-5/min"),
]  # fmt: skip


@pytest.mark.parametrize(("given", "error", "status", "reason"), REFUSAL_TABLE)
def test_refusal_mapping(given, error, status, reason):
    refused = refusal(given)
    assert type(refused) is error
    assert (refused.status, refused.reason) == (status, reason)
    assert refused.decision is given.decision
    if given.decision is Decision.SUPPRESSED:
        assert refused.twilio_code == 21610
    else:
        assert refused.retry_after == given.retry_after


def test_account_refusal_is_rate_limited_with_the_verdicts_retry_after():
    refused = account_refusal(verdict(Decision.RATE_LIMITED, "account-100/day", retry_after=9.0))
    assert type(refused) is RateLimited
    assert (refused.status, refused.reason, refused.retry_after) == (429, "account-100/day", 9.0)


REASON_VALUES = {
    "first-attempt", "key-reused-with-other-payload", "duplicate-key", "duplicate-fingerprint",
    "duplicate-key-unsettled", "duplicate-fingerprint-unsettled", "in-flight-key",
    "in-flight-fingerprint", "in-flight-on-the-shared-store", "claim-owner-gone", "unknown",
    "unknown-unsettled", "reconciled-found", "store-error", "claim-not-replicated",
    "settlement-journal-full", "release-unsettled", "store-merging-outage-records",
    "store-down-unguarded", "connect-failed", "upstream-timeout", "upstream-reset",
    "upstream-429-released", "upstream-timeout-unguarded", "upstream-reset-unguarded",
    "cancelled",
}  # fmt: skip


def test_the_reason_values_are_the_contracts():
    """Logged and shown to operators: renaming one is a contract change, not a refactor."""
    assert {reason.value for reason in Reason} == REASON_VALUES


def test_the_outcome_tables_reasons_are_reasons():
    from proxy.guard.outcome import AttemptEnd, settle

    for end in AttemptEnd:
        statuses = [201, 400, 429] if end is AttemptEnd.ANSWERED else [None]
        for status in statuses:
            assert settle(end, status).reason in REASON_VALUES
