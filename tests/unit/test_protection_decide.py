"""The pure recipient-protection verdict, as a table: each case pins decision and reason."""

import pytest

from proxy.decision import Decision
from proxy.guard.protection import (
    AccountCeiling,
    GuardMode,
    LimitWindow,
    ProtectionPolicy,
    RecipientState,
    Suppression,
    judge,
    judge_account,
)
from proxy.guard.suppression import DEFAULT_RULES, field_for, learn, parse_rules

NOW = 10_000_000
E, R, OFF = GuardMode.ENFORCE, GuardMode.REPORT, GuardMode.OFF
WINDOWS = (LimitWindow(3, 60), LimitWindow(20, 3600))


def policy(limits=E, suppression=E) -> ProtectionPolicy:
    return ProtectionPolicy(WINDOWS, limits, suppression, cooldown=60, max_cooldown=3600)


def state(counts=(1, 1), sup=(), open_until=0, trips=0, probe=False) -> RecipientState:
    return RecipientState(counts, sup, open_until, trips, probe)


OPT_OUT = (("from:+1500", Suppression(21610, NOW + 1, "response")),)
EXPIRED = (("to", Suppression(30006, NOW, "callback")),)


@pytest.mark.parametrize(
    ("snapshot", "mode", "allow", "decision", "reason"),
    [
        (state(), policy(), True, None, ""),
        (state(counts=(3, 3)), policy(), True, None, ""),
        (state(counts=(4, 4)), policy(), False, Decision.RATE_LIMITED, "recipient-limit-3/min"),
        (state(counts=(2, 21)), policy(), False, Decision.RATE_LIMITED, "recipient-limit-20/h"),
        (state(counts=(4, 4)), policy(limits=R), True, Decision.RATE_LIMITED, "recipient-limit-3/min"),
        (state(counts=(4, 4)), policy(limits=OFF), True, None, ""),
        (state(open_until=NOW + 5000), policy(), False, Decision.BREAKER_OPEN, "breaker-cooling-down"),
        (state(open_until=NOW - 1), policy(), False, Decision.BREAKER_OPEN, "breaker-probe-in-flight"),
        (state(counts=(9, 9), open_until=NOW - 1, probe=True), policy(), True, None, "half-open-probe"),
        (state(sup=OPT_OUT), policy(), False, Decision.SUPPRESSED, "suppressed-21610-from"),
        (state(sup=OPT_OUT), policy(suppression=R), True, Decision.SUPPRESSED, "suppressed-21610-from"),
        (state(sup=OPT_OUT), policy(suppression=OFF), True, None, ""),
        (state(sup=EXPIRED), policy(), True, None, ""),
        (state(sup=OPT_OUT, open_until=NOW + 5000), policy(), False, Decision.SUPPRESSED, "suppressed-21610-from"),
    ],
)  # fmt: skip
def test_judge(snapshot, mode, allow, decision, reason):
    verdict = judge(snapshot, mode, NOW)
    assert (verdict.allow, verdict.decision, verdict.reason) == (allow, decision, reason)


def test_a_trip_carries_a_cooldown_that_doubles_and_is_capped():
    over = state(counts=(4, 4))
    assert judge(over, policy(), NOW).trip_ms == 60_000
    assert judge(state(counts=(4, 4), trips=1), policy(), NOW).trip_ms == 120_000
    assert judge(state(counts=(4, 4), trips=10), policy(), NOW).trip_ms == 3_600_000
    assert judge(over, policy(), NOW).retry_after == 60
    assert judge(over, policy(limits=R), NOW).trip_ms == 0  # report mode never trips


def test_suppressed_verdict_carries_the_twilio_code():
    assert judge(state(sup=OPT_OUT), policy(), NOW).twilio_code == 21610


def test_default_rules_and_scopes():
    rules = parse_rules(DEFAULT_RULES)
    assert {code: rule.scope for code, rule in rules.items()} == {
        21610: "sender", 30004: "recipient", 30005: "recipient",
        30006: "recipient", 30007: "message",
    }  # fmt: skip
    assert field_for(rules[21610], sender="+1500", content="msg:abc") == "from:+1500"
    assert field_for(rules[30007], sender="+1500", content="msg:abc") == "msg:abc"
    assert field_for(rules[30006], sender="+1500", content="msg:abc") == "to"
    assert learn(30008, rules, sender="s", content="c", now_ms=NOW, source="x") is None
    field, suppression, ttl = learn(21610, rules, sender="s", content="c", now_ms=NOW, source="x")
    assert (field, suppression.code, ttl) == ("from:s", 21610, 30 * 86_400_000)


@pytest.mark.parametrize(
    "spec", ["21610", "21610=everyone:1d", "x=sender:1d", "21610=sender:", "21610=sender:-1s"]
)
def test_bad_rules_are_refused(spec):
    with pytest.raises(ValueError):
        parse_rules(spec)


def test_the_account_ceiling_refuses_over_a_window_until_its_end():
    ceiling = AccountCeiling((LimitWindow(2, 60), LimitWindow(5, 3600)), E)
    now = 3_600_000 * 5 + 45_000  # 45 s into a minute window
    assert ceiling.slots(now) == ((60_000, now // 60_000), (3_600_000, 5))
    assert judge_account((2, 2), ceiling, now).allow
    refused = judge_account((3, 3), ceiling, now)
    assert (refused.allow, refused.decision, refused.reason) == (
        False, Decision.RATE_LIMITED, "account-limit-2/min",
    )  # fmt: skip
    assert refused.retry_after == 15.0
    assert judge_account((1, 6), ceiling, now).reason == "account-limit-5/h"
    reported = judge_account((3, 3), AccountCeiling(ceiling.windows, R), now)
    assert reported.allow and reported.would_block
    assert not AccountCeiling(ceiling.windows, OFF).active
    assert not AccountCeiling((), E).active
