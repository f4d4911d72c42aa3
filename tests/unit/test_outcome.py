"""The outcome table (proxy/guard/outcome.py): action, client answer, reason and counting pinned
for every way a forwarded attempt can end."""

from __future__ import annotations

import pytest

from proxy.guard.outcome import AttemptEnd, ClientAnswer, StoreAction, settle

A = AttemptEnd
S = StoreAction
C = ClientAnswer

TABLE = [
    # end,             status, action,                answer,        reason,                              counted, unknown reason
    (A.ANSWERED,        201,   S.COMPLETE,            C.UPSTREAM,    "first-attempt",                     True,    ""),
    (A.ANSWERED,        200,   S.COMPLETE,            C.UPSTREAM,    "first-attempt",                     True,    ""),
    (A.ANSWERED,        400,   S.COMPLETE_UNCOUNTED,  C.UPSTREAM,    "first-attempt",                     False,   ""),
    (A.ANSWERED,        401,   S.COMPLETE_UNCOUNTED,  C.UPSTREAM,    "first-attempt",                     False,   ""),
    (A.ANSWERED,        404,   S.COMPLETE_UNCOUNTED,  C.UPSTREAM,    "first-attempt",                     False,   ""),
    (A.ANSWERED,        429,   S.RELEASE,             C.UPSTREAM,    "upstream-429-released",             False,   ""),
    (A.ANSWERED,        500,   S.MARK_UNKNOWN,        C.UPSTREAM,    "upstream-500-outcome-unknown",      True,    "upstream-500"),
    (A.ANSWERED,        503,   S.MARK_UNKNOWN,        C.UPSTREAM,    "upstream-503-outcome-unknown",      True,    "upstream-503"),
    (A.CONNECT_FAILED,  None,  S.RELEASE,             C.UNREACHABLE, "connect-failed",                    False,   ""),
    (A.TIMED_OUT,       None,  S.MARK_UNKNOWN,        C.TIMED_OUT,   "upstream-timeout",                  True,    "upstream-timeout"),
    (A.RESET,           None,  S.MARK_UNKNOWN,        C.RESET,       "upstream-reset",                    True,    "upstream-reset"),
    (A.CANCELLED,       None,  S.MARK_UNKNOWN,        C.NONE,        "cancelled",                         True,    "cancelled"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("end", "status", "action", "answer", "reason", "counted", "unknown"), TABLE
)
def test_outcome_table(end, status, action, answer, reason, counted, unknown):
    settlement = settle(end, status)
    assert (settlement.action, settlement.answer, settlement.reason) == (action, answer, reason)
    assert settlement.counted is counted
    assert settlement.unknown_reason == unknown
    assert settlement.sent is (action is not StoreAction.RELEASE)
    # Only a definite answer (replayable from memory) is written after the client's answer.
    definite = action in (StoreAction.COMPLETE, StoreAction.COMPLETE_UNCOUNTED)
    assert settlement.written_after_answer is definite


@pytest.mark.parametrize("status", range(100, 600))
def test_every_status_has_exactly_one_meaning(status):
    settlement = settle(AttemptEnd.ANSWERED, status)
    if status >= 500:
        assert settlement.action is StoreAction.MARK_UNKNOWN  # Twilio may have created it
    elif status == 429:
        assert settlement.action is StoreAction.RELEASE
    elif 200 <= status < 300:
        assert settlement.action is StoreAction.COMPLETE and settlement.counted
    else:
        assert settlement.action is StoreAction.COMPLETE_UNCOUNTED and not settlement.counted
