"""Every decision of a guarded send, as pure functions: the server shell (proxy/server/guarded.py
and its parts) does the I/O and asks here what it means.

    what the claim answered                                  -> step
    key held by another payload (claimed or not)             -> key-mismatch (422; release first)
    claimed, fewer replicas hold it than store_min_replicas  -> not-replicated (release, 503)
    claimed                                                  -> send (protection, then upstream)
    not claimed, the record is our own in-flight claim       -> reclaim (release it, claim afresh)
    not claimed: the dedup table (guard/dedup.py)            -> replay / unknown / mark-stale
    not claimed, and no record holds it                      -> wait (claim again) / give-up
    in flight elsewhere, wait deadline not reached           -> wait (poll, doubling, capped)
    in flight elsewhere, wait deadline passed                -> give-up (409 in-flight)

    a duplicate finds an outcome this instance still owes the store (the settlement journal):
    key held by another payload                              -> key-mismatch (422)
    an owed release, owed to the store guarding this send    -> release-pending (go on once written)
    an owed release, owed to another store                   -> go-on
    an owed UNKNOWN                                          -> unknown (409)
    an owed completion                                       -> replay it from memory (reason:
                                                                duplicate-* while its write is
                                                                landing, duplicate-*-unsettled
                                                                once the store refused it)

    a release the store said it did not apply, read back     -> still-held (retry) / lost
    an upstream 429                                          -> wait (Retry-After floor + jitter) or
                                                                give up (the budget is spent)
    a protection verdict that refuses                        -> the error the client gets

How an attempt ended -> store action is guard/outcome.py's table, beside this one. Every reason
string the guarded path writes is a `Reason` (the values are part of the contract: the log's
`reason` field and the operator console show them). Table-tested in
tests/unit/test_guarded_decide.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from enum import StrEnum

from proxy.decision import Decision
from proxy.errors import BreakerOpen, RateLimited, SendguardError, Suppressed
from proxy.guard.dedup import Action, DedupRecord, RecordState, decide
from proxy.guard.outcome import StoreAction
from proxy.guard.protection import Verdict


class Reason(StrEnum):
    """The reasons a guarded send is decided for (values: the contract's log field)."""

    FIRST_ATTEMPT = "first-attempt"
    KEY_REUSED = "key-reused-with-other-payload"
    DUPLICATE_KEY = "duplicate-key"
    DUPLICATE_FINGERPRINT = "duplicate-fingerprint"
    DUPLICATE_KEY_UNSETTLED = "duplicate-key-unsettled"
    DUPLICATE_FINGERPRINT_UNSETTLED = "duplicate-fingerprint-unsettled"
    IN_FLIGHT_KEY = "in-flight-key"
    IN_FLIGHT_FINGERPRINT = "in-flight-fingerprint"
    IN_FLIGHT_ON_SHARED_STORE = "in-flight-on-the-shared-store"
    CLAIM_OWNER_GONE = "claim-owner-gone"
    UNKNOWN = "unknown"  # an UNKNOWN record that kept no reason of its own
    UNKNOWN_UNSETTLED = "unknown-unsettled"
    RECONCILED_FOUND = "reconciled-found"
    STORE_ERROR = "store-error"
    CLAIM_NOT_REPLICATED = "claim-not-replicated"
    JOURNAL_FULL = "settlement-journal-full"
    RELEASE_UNSETTLED = "release-unsettled"
    STORE_MERGING = "store-merging-outage-records"
    STORE_DOWN_UNGUARDED = "store-down-unguarded"
    CONNECT_FAILED = "connect-failed"
    UPSTREAM_TIMEOUT = "upstream-timeout"
    UPSTREAM_RESET = "upstream-reset"
    UPSTREAM_429_RELEASED = "upstream-429-released"
    UPSTREAM_TIMEOUT_UNGUARDED = "upstream-timeout-unguarded"
    UPSTREAM_RESET_UNGUARDED = "upstream-reset-unguarded"
    CANCELLED = "cancelled"


def upstream_5xx_reason(status: int) -> str:
    """The one family of reasons with a number in it: `upstream-503-outcome-unknown`."""
    return f"upstream-{status}-outcome-unknown"


def store_down_reason(mode: str) -> str:
    """`store-down-closed`, `store-down-local` (no outage store to fall back to)."""
    return f"store-down-{mode}"


def dedup_kind(by_key: bool) -> str:
    """The label a duplicate is counted and logged under."""
    return "key" if by_key else "fingerprint"


# --- the claim loop --------------------------------------------------------------------------


class ClaimStep(StrEnum):
    SEND = "send"  # we hold the claim: protection, then upstream
    KEY_MISMATCH = "key-mismatch"  # 422
    NOT_REPLICATED = "not-replicated"  # release, 503: a failover could lose the claim
    RECLAIM = "reclaim"  # our own claim, run twice: release it and claim afresh
    REPLAY = "replay"  # DONE: the stored answer
    UNKNOWN = "unknown"  # reconcile, or 409 outcome-unknown
    MARK_STALE = "mark-stale"  # the owner is gone: mark UNKNOWN, then re-read
    WAIT = "wait"  # in flight elsewhere: poll again after `sleep`
    GIVE_UP = "give-up"  # in flight past the wait deadline: 409 in-flight


@dataclass(frozen=True)
class ClaimView:
    """What a claim answered, in the core's terms (the store's ClaimResult, without the I/O)."""

    claimed: bool
    now_ms: int
    record: DedupRecord | None = None  # what holds the identity when not claimed
    key_owner: str | None = None  # "<recipient tag> <payload hash>" the key is indexed to
    replicas: int | None = None  # replicas that acknowledged the claim (WAIT), if asked


@dataclass(frozen=True)
class Step:
    step: ClaimStep
    reason: str
    release_first: bool = False  # KEY_MISMATCH: the claim was made, hand it back first
    record: DedupRecord | None = None
    retry_after: float | None = None  # GIVE_UP: seconds until the owner's lease ends (>= 1)
    sleep: float = 0.0  # WAIT: how long before the next claim


@dataclass(frozen=True)
class SendIdentity:
    """The parts of a send's facts the claim loop decides on."""

    recipient_tag: str
    payload_hash: str
    by_key: bool
    token: str  # this request's claim token

    @property
    def key_owner(self) -> str:
        return f"{self.recipient_tag} {self.payload_hash}"


def next_step(
    view: ClaimView, send: SendIdentity, *, min_replicas: int, wait_left: float, delay: float
) -> Step:
    """One turn of the claim loop. `wait_left`: seconds until the in-flight wait deadline;
    `delay`: the current poll interval (see `next_poll_delay`)."""
    if view.key_owner is not None and view.key_owner != send.key_owner:
        # The key is indexed to another recipient or payload (a cluster keeps the key index
        # apart from the record, so the claim itself may have gone through).
        return Step(ClaimStep.KEY_MISMATCH, Reason.KEY_REUSED, release_first=view.claimed)
    if view.claimed:
        if view.replicas is not None and view.replicas < min_replicas:
            return Step(ClaimStep.NOT_REPLICATED, Reason.CLAIM_NOT_REPLICATED)
        return Step(ClaimStep.SEND, Reason.FIRST_ATTEMPT)
    mine = view.record
    if mine is not None and mine.token == send.token and mine.state is RecordState.IN_FLIGHT:
        # Its first answer was lost and the client retried: nothing was sent yet.
        return Step(ClaimStep.RECLAIM, Reason.FIRST_ATTEMPT, record=mine)
    decision = decide(
        view.record, payload_hash=send.payload_hash, by_key=send.by_key, now_ms=view.now_ms
    )
    record = decision.record
    if record is None:
        # Not claimed, yet nothing holds the identity (it expired between the script's steps,
        # or a slot moved): nothing was sent, so claiming again is safe, within the wait.
        waiting = Reason.IN_FLIGHT_KEY if send.by_key else Reason.IN_FLIGHT_FINGERPRINT
        if wait_left <= 0:
            return Step(ClaimStep.GIVE_UP, waiting, retry_after=1.0)
        return Step(ClaimStep.WAIT, waiting, sleep=min(delay, wait_left))
    if decision.action is Action.REPLAY:
        return Step(ClaimStep.REPLAY, decision.reason, record=record)
    if decision.action is Action.KEY_MISMATCH:
        return Step(ClaimStep.KEY_MISMATCH, decision.reason, record=record)
    if decision.action is Action.OUTCOME_UNKNOWN:
        return Step(ClaimStep.UNKNOWN, decision.reason, record=record)
    if decision.action is Action.MARK_STALE:
        return Step(ClaimStep.MARK_STALE, decision.reason, record=record)
    if wait_left <= 0:
        lease_left = (record.lease_until_ms - view.now_ms) / 1000
        return Step(
            ClaimStep.GIVE_UP, decision.reason, record=record, retry_after=max(1.0, lease_left)
        )
    return Step(ClaimStep.WAIT, decision.reason, record=record, sleep=min(delay, wait_left))


def next_poll_delay(delay: float, poll_max: float) -> float:
    return min(delay * 2, poll_max)


# --- a duplicate of a send whose outcome is still owed ---------------------------------------


class OwedStep(StrEnum):
    GO_ON = "go-on"  # nothing to answer from here: claim as usual
    KEY_MISMATCH = "key-mismatch"  # 422
    RELEASE_PENDING = "release-pending"  # nothing was sent: go on once the release is written
    UNKNOWN = "unknown"  # 409 outcome-unknown
    REPLAY = "replay"  # the real answer, from memory


@dataclass(frozen=True)
class OwedOutcome:
    """An outcome the settlement journal holds, in the core's terms."""

    action: StoreAction
    payload_hash: str
    owed_here: bool  # owed to the store that guards this send now
    landing: bool  # written after the answer, its first write still under way


def answer_owed(owed: OwedOutcome, *, payload_hash: str, by_key: bool) -> tuple[OwedStep, str]:
    if by_key and owed.payload_hash != payload_hash:
        return OwedStep.KEY_MISMATCH, Reason.KEY_REUSED
    if owed.action is StoreAction.RELEASE:
        # Nothing was sent. On another store the send may go on; on the store that still
        # holds the claim, only once the release is written.
        if not owed.owed_here:
            return OwedStep.GO_ON, Reason.FIRST_ATTEMPT
        return OwedStep.RELEASE_PENDING, Reason.RELEASE_UNSETTLED
    if owed.action is StoreAction.MARK_UNKNOWN:
        return OwedStep.UNKNOWN, Reason.UNKNOWN_UNSETTLED
    if owed.landing:
        # The ordinary write behind the answer, not landed yet: the answer a store replay gives.
        return OwedStep.REPLAY, Reason.DUPLICATE_KEY if by_key else Reason.DUPLICATE_FINGERPRINT
    # Refused by the store (or, while degraded, settled there but kept here for the outage).
    return OwedStep.REPLAY, (
        Reason.DUPLICATE_KEY_UNSETTLED if by_key else Reason.DUPLICATE_FINGERPRINT_UNSETTLED
    )


# --- release -----------------------------------------------------------------------------------


class ReleaseCheck(StrEnum):
    STILL_HELD = "still-held"  # not applied: keep retrying it (the claim blocks the message)
    LOST = "lost"  # the claim is gone or someone else's: nothing to hand back


def check_unapplied_release(record: DedupRecord | None, token: str) -> ReleaseCheck:
    """The store answered "not ours / not there" to a release, and the record was read back.
    That answer can be misrouted while a cluster slot migrates (the claim ran on the importing
    node): trust it only if the read agrees."""
    if record is not None and record.token == token and record.state is RecordState.IN_FLIGHT:
        return ReleaseCheck.STILL_HELD
    return ReleaseCheck.LOST


# --- upstream 429 ------------------------------------------------------------------------------

BACKOFF_429_FIRST = 0.1
BACKOFF_429_MAX = 5.0
JITTER_429 = 0.2  # at most this fraction of the floor is added


def retry_after_seconds(value: str | None, now: float) -> float:
    """`Retry-After` (RFC 9110 §10.2.3): delay-seconds or an HTTP-date, as seconds from `now`
    (Unix time). Absent, unreadable or in the past: 0."""
    if not value:
        return 0.0
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if seconds > 0 else 0.0  # (nan compares false: 0)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return 0.0
    if when.tzinfo is None:  # asctime form: HTTP-dates are always UTC
        when = when.replace(tzinfo=UTC)
    left = when.timestamp() - now
    return left if math.isfinite(left) and left > 0 else 0.0


def wait_before_429_retry(
    retry_after: float, backoff: float, budget_left: float, draw: float
) -> float | None:
    """How long to wait before retrying an upstream 429, or None: give up and answer it.
    Retry-After is a floor (docs/contract.md#protection): the jitter only ever adds to it, up to
    20 % (`draw` in [0, 1]), and is cut where the budget ends; a floor past the budget gives up."""
    floor = max(retry_after, backoff)
    if floor > budget_left:
        return None
    return min(floor + draw * JITTER_429 * floor, budget_left)


def next_429_backoff(backoff: float) -> float:
    return min(backoff * 2, BACKOFF_429_MAX)


# --- refusals ---------------------------------------------------------------------------------


def refusal(verdict: Verdict) -> SendguardError:
    """The error a refusing recipient-protection verdict is answered with."""
    if verdict.decision is Decision.SUPPRESSED:
        assert verdict.twilio_code is not None
        return Suppressed(
            verdict.twilio_code,
            f"resending cannot succeed: Twilio answered {verdict.twilio_code} for this recipient",
            reason=verdict.reason,
        )
    error = BreakerOpen if verdict.decision is Decision.BREAKER_OPEN else RateLimited
    return error(retry_after=verdict.retry_after, reason=verdict.reason)


def account_refusal(verdict: Verdict) -> SendguardError:
    """The error a refusing account-ceiling verdict is answered with."""
    return RateLimited(
        "too many messages from this account in this window",
        retry_after=verdict.retry_after,
        reason=verdict.reason,
    )
