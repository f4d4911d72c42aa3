"""The pure dedup decision, as a table: each case pins the action and the reason."""

import pytest

from proxy.guard.dedup import (
    Action,
    DedupRecord,
    Outcome,
    RecordState,
    StoredResponse,
    classify_status,
    decide,
)

NOW = 1_000_000


def record(state: RecordState, *, payload: str = "p", lease_until: int = NOW + 1) -> DedupRecord:
    response = StoredResponse(201, (), b"{}") if state is RecordState.DONE else None
    return DedupRecord(
        state=state,
        token="t",
        payload_hash=payload,
        claimed_at_ms=NOW - 10,
        lease_until_ms=lease_until,
        response=response,
        unknown_reason="upstream-timeout" if state is RecordState.UNKNOWN else "",
    )


@pytest.mark.parametrize(
    ("existing", "by_key", "payload", "action", "reason"),
    [
        (None, True, "p", Action.FORWARD, "first-attempt"),
        (None, False, "p", Action.FORWARD, "first-attempt"),
        (record(RecordState.DONE), True, "p", Action.REPLAY, "duplicate-key"),
        (record(RecordState.DONE), False, "p", Action.REPLAY, "duplicate-fingerprint"),
        (record(RecordState.DONE), True, "other", Action.KEY_MISMATCH, "key-reused-with-other-payload"),
        (record(RecordState.IN_FLIGHT), True, "other", Action.KEY_MISMATCH, "key-reused-with-other-payload"),
        (record(RecordState.UNKNOWN), True, "other", Action.KEY_MISMATCH, "key-reused-with-other-payload"),
        (record(RecordState.UNKNOWN), True, "p", Action.OUTCOME_UNKNOWN, "upstream-timeout"),
        (record(RecordState.UNKNOWN), False, "p", Action.OUTCOME_UNKNOWN, "upstream-timeout"),
        (record(RecordState.IN_FLIGHT), True, "p", Action.WAIT, "in-flight-key"),
        (record(RecordState.IN_FLIGHT), False, "p", Action.WAIT, "in-flight-fingerprint"),
        (record(RecordState.IN_FLIGHT, lease_until=NOW), True, "p", Action.MARK_STALE, "claim-owner-gone"),
        (record(RecordState.IN_FLIGHT, lease_until=NOW - 5), False, "p", Action.MARK_STALE, "claim-owner-gone"),
    ],
)  # fmt: skip
def test_decide(existing, by_key, payload, action, reason):
    decision = decide(existing, payload_hash=payload, by_key=by_key, now_ms=NOW)
    assert (decision.action, decision.reason) == (action, reason)
    assert decision.record is existing


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DEFINITE),
        (201, Outcome.DEFINITE),
        (400, Outcome.DEFINITE),
        (401, Outcome.DEFINITE),
        (404, Outcome.DEFINITE),
        (429, Outcome.NOT_SENT),
        (500, Outcome.AMBIGUOUS),
        (502, Outcome.AMBIGUOUS),
        (503, Outcome.AMBIGUOUS),
        (504, Outcome.AMBIGUOUS),
    ],
)
def test_classify_status(status, outcome):
    assert classify_status(status) is outcome
