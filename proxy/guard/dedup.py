"""The dedup decision: given what the store holds for a send's identity, what happens now.

    claimed (no record)            -> FORWARD          (we own the claim)
    key reused, other payload      -> key-mismatch     (422)
    DONE                           -> REPLAY           (stored status/body/headers)
    UNKNOWN                        -> outcome-unknown  (409, never resent blindly)
    IN_FLIGHT, lease running       -> WAIT             (bounded, then in-flight 409)
    IN_FLIGHT, lease expired       -> MARK_STALE       (owner died: UNKNOWN, never retaken)

`decide` takes the store's clock reading as an argument, so it is a plain table-tested function.
The record comes typed: how the store spells it is `proxy.store.codec`'s business.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class RecordState(StrEnum):
    IN_FLIGHT = "inflight"
    DONE = "done"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class StoredResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True)
class DedupRecord:
    state: RecordState
    token: str
    payload_hash: str
    claimed_at_ms: int
    lease_until_ms: int
    response: StoredResponse | None = None
    message_sid: str = ""
    unknown_reason: str = ""
    meta: dict[str, Any] | None = None
    resolved_sid: str = ""  # UNKNOWN, but its Message SID is known (callback or operator)
    resent: bool = False  # `unknown_resend_after` already used its one resend
    reconciliations: int = 0  # times it was looked up in Twilio's list without evidence


class Action(StrEnum):
    FORWARD = "forward"
    REPLAY = "replay"
    WAIT = "wait"
    KEY_MISMATCH = "key-mismatch"
    OUTCOME_UNKNOWN = "outcome-unknown"
    MARK_STALE = "mark-stale"


@dataclass(frozen=True)
class DedupDecision:
    action: Action
    reason: str
    record: DedupRecord | None = None


def decide(
    record: DedupRecord | None, *, payload_hash: str, by_key: bool, now_ms: int
) -> DedupDecision:
    if record is None:
        return DedupDecision(Action.FORWARD, "first-attempt")
    if by_key and record.payload_hash != payload_hash:
        return DedupDecision(Action.KEY_MISMATCH, "key-reused-with-other-payload", record)
    kind = "key" if by_key else "fingerprint"
    if record.state is RecordState.DONE:
        return DedupDecision(Action.REPLAY, f"duplicate-{kind}", record)
    if record.state is RecordState.UNKNOWN:
        return DedupDecision(Action.OUTCOME_UNKNOWN, record.unknown_reason or "unknown", record)
    if now_ms < record.lease_until_ms:
        return DedupDecision(Action.WAIT, f"in-flight-{kind}", record)
    return DedupDecision(Action.MARK_STALE, "claim-owner-gone", record)


class Outcome(StrEnum):
    """What a forwarded attempt proves about the upstream create (docs/contract.md#outcomes)."""

    NOT_SENT = "not-sent"  # connect failed / 429: nothing created, release the claim
    DEFINITE = "definite"  # 2xx / 4xx: store and replay
    AMBIGUOUS = "ambiguous"  # 5xx / timeout after sending / reset: UNKNOWN


def classify_status(status: int) -> Outcome:
    if status == 429:
        return Outcome.NOT_SENT  # Twilio: "never processed and is always safe to retry"
    if status >= 500:
        return Outcome.AMBIGUOUS
    return Outcome.DEFINITE
