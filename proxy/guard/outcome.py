"""How a forwarded attempt ended -> what the store must record, what the client is told, why.

One table for the outcome classes (docs/contract.md#outcomes), used by the guard (right after
the attempt) and by the settlement journal (when the store only accepts the outcome later):

    attempt ended                    store action         counted  written  client answer
    answered 2xx                     complete             yes      after    upstream's answer
    answered 4xx (not 429)           complete-uncounted   no       after    upstream's answer
    answered 429 (budget spent)      release              no       before   upstream's answer
    answered 5xx                     mark-unknown         yes      before   upstream's answer
    connect failed                   release              no       before   502 upstream-unreachable
    read timeout                     mark-unknown         yes      before   504 outcome-unknown
    reset / body cut short           mark-unknown         yes      before   502 outcome-unknown
    request cancelled mid-send       mark-unknown         yes      before   (nobody is listening)

"Counted" is whether the send stays in the recipient's send log and the account ceiling:
only what Twilio accepted or may have accepted counts, so nobody can spend a recipient's
budget with bad credentials or bad requests (docs/contract.md#protection). "Written" is when
the store write is made: a definite answer is replayable from memory, so its write follows the
answer (owed in the settlement journal first, proxy/server/settlement.py); a release or an
UNKNOWN mark is tried before it. Pure: table-tested in tests/unit/test_outcome.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class AttemptEnd(StrEnum):
    ANSWERED = "answered"  # a whole answer came back, with its status
    CONNECT_FAILED = "connect-failed"  # nothing left this host
    TIMED_OUT = "timeout"  # sent, no (whole) answer in time
    RESET = "reset"  # sent, connection lost or answer cut short
    CANCELLED = "cancelled"  # the client went away while the request may be on the wire


class StoreAction(StrEnum):
    COMPLETE = "complete"  # store the answer; duplicates replay it
    COMPLETE_UNCOUNTED = "complete-uncounted"  # store it, and take it out of the budgets
    MARK_UNKNOWN = "mark-unknown"  # Twilio may have created it: never resent blindly
    RELEASE = "release"  # nothing was created: a retry may send


class ClientAnswer(StrEnum):
    UPSTREAM = "upstream"  # Twilio's own answer, whatever the store does
    UNREACHABLE = "unreachable"  # 502 upstream-unreachable
    TIMED_OUT = "timed-out"  # 504 outcome-unknown
    RESET = "reset"  # 502 outcome-unknown
    NONE = "none"  # cancelled: there is no one to answer


@dataclass(frozen=True)
class Settlement:
    action: StoreAction
    answer: ClientAnswer
    reason: str  # logged with the request's decision
    unknown_reason: str = ""  # kept on an UNKNOWN record (the ledger shows it)

    @property
    def counted(self) -> bool:
        return self.action in (StoreAction.COMPLETE, StoreAction.MARK_UNKNOWN)

    @property
    def written_after_answer(self) -> bool:
        """The store write may follow the client's answer (the "written" column)."""
        return self.action in (StoreAction.COMPLETE, StoreAction.COMPLETE_UNCOUNTED)

    @property
    def sent(self) -> bool:
        """Twilio may hold a message because of this attempt."""
        return self.action is not StoreAction.RELEASE


def settle(end: AttemptEnd, status: int | None = None) -> Settlement:
    if end is AttemptEnd.ANSWERED:
        assert status is not None
        return _settle_answer(status)
    if end is AttemptEnd.CONNECT_FAILED:
        return Settlement(StoreAction.RELEASE, ClientAnswer.UNREACHABLE, "connect-failed")
    if end is AttemptEnd.TIMED_OUT:
        return Settlement(
            StoreAction.MARK_UNKNOWN, ClientAnswer.TIMED_OUT, "upstream-timeout", "upstream-timeout"
        )
    if end is AttemptEnd.RESET:
        return Settlement(
            StoreAction.MARK_UNKNOWN, ClientAnswer.RESET, "upstream-reset", "upstream-reset"
        )
    return Settlement(StoreAction.MARK_UNKNOWN, ClientAnswer.NONE, "cancelled", "cancelled")


def _settle_answer(status: int) -> Settlement:
    if status == 429:  # Twilio: "never processed and is always safe to retry"
        return Settlement(StoreAction.RELEASE, ClientAnswer.UPSTREAM, "upstream-429-released")
    if status >= 500:
        return Settlement(
            StoreAction.MARK_UNKNOWN,
            ClientAnswer.UPSTREAM,
            f"upstream-{status}-outcome-unknown",
            f"upstream-{status}",
        )
    if 200 <= status < 300:
        return Settlement(StoreAction.COMPLETE, ClientAnswer.UPSTREAM, "first-attempt")
    # 1xx/3xx do not occur on a create; 4xx are definite refusals: stored, not counted.
    return Settlement(StoreAction.COMPLETE_UNCOUNTED, ClientAnswer.UPSTREAM, "first-attempt")
