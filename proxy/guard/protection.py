"""Recipient protection, decided purely: suppressions, the breaker and per-recipient windows.

Input is the snapshot the CLAIM script takes atomically with the claim (so concurrent sends to
one recipient are counted in order); output is a verdict with a reason:

    suppressed (a learned code applies to this send)     -> 400, Twilio's code, no upstream call
    breaker open (cooling down, or a probe in flight)   -> 429 breaker-open + Retry-After
    half-open and this send holds the probe slot        -> allow: one probe per cooldown
    a window is over its count                          -> 429 rate-limited, and the breaker trips
                                                           for a cooldown that doubles per trip

Each guard has a mode: `off`, `report` (forward, but log and count what would have been
blocked; the breaker never trips) or `enforce`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from proxy.decision import Decision


class GuardMode(StrEnum):
    OFF = "off"
    REPORT = "report"
    ENFORCE = "enforce"


@dataclass(frozen=True)
class LimitWindow:
    count: int
    seconds: float

    @property
    def ms(self) -> int:
        return int(self.seconds * 1000)

    @property
    def label(self) -> str:
        units = {1.0: "s", 60.0: "min", 3600.0: "h", 86400.0: "day"}
        unit = units.get(self.seconds)
        return f"{self.count}/{unit}" if unit else f"{self.count}/{self.seconds:g}s"


@dataclass(frozen=True)
class Suppression:
    code: int
    until_ms: int
    source: str  # "response", "message", "callback": where the code was learned


@dataclass(frozen=True)
class RecipientState:
    counts: tuple[int, ...]  # sends in each window, this one included
    suppressions: tuple[tuple[str, Suppression], ...]
    open_until_ms: int  # 0: the breaker never opened (or closed again)
    trips: int
    probe_is_mine: bool


@dataclass(frozen=True)
class ProtectionPolicy:
    windows: tuple[LimitWindow, ...]
    limits_mode: GuardMode
    suppression_mode: GuardMode
    cooldown: float  # first trip; doubles per consecutive trip
    max_cooldown: float

    @property
    def keep_ms(self) -> int:
        if self.limits_mode is GuardMode.OFF or not self.windows:
            return 0
        return max(window.ms for window in self.windows)

    def cooldown_ms(self, trips_before: int) -> int:
        return int(min(self.max_cooldown, self.cooldown * 2 ** min(trips_before, 32)) * 1000)

    @property
    def breaker_ttl_ms(self) -> int:
        # Trips are remembered (and cooldowns keep growing) for a while after the last one.
        return int(self.max_cooldown * 2 * 1000)


@dataclass(frozen=True)
class Verdict:
    allow: bool
    decision: Decision | None = None  # the block (or the would-block, in report mode)
    reason: str = ""
    retry_after: float | None = None
    twilio_code: int | None = None
    trip_ms: int = 0

    @property
    def would_block(self) -> bool:
        return self.allow and self.decision is not None


ALLOW = Verdict(True)


def judge(state: RecipientState, policy: ProtectionPolicy, now_ms: int) -> Verdict:
    suppressed = _suppression_verdict(state.suppressions, policy.suppression_mode, now_ms)
    if suppressed is not None:
        return suppressed
    if policy.limits_mode is GuardMode.OFF:
        return ALLOW
    verdict = _limits_verdict(state, policy, now_ms)
    if policy.limits_mode is GuardMode.REPORT and not verdict.allow:
        return Verdict(True, verdict.decision, verdict.reason, verdict.retry_after)
    return verdict


def _suppression_verdict(
    found: Sequence[tuple[str, Suppression]], mode: GuardMode, now_ms: int
) -> Verdict | None:
    if mode is GuardMode.OFF:
        return None
    active = [(field, s) for field, s in found if s.until_ms > now_ms]
    if not active:
        return None
    field, suppression = active[0]
    scope = field.split(":", 1)[0]
    return Verdict(
        allow=mode is GuardMode.REPORT,
        decision=Decision.SUPPRESSED,
        reason=f"suppressed-{suppression.code}-{scope}",
        twilio_code=suppression.code,
    )


def _limits_verdict(state: RecipientState, policy: ProtectionPolicy, now_ms: int) -> Verdict:
    if state.open_until_ms > now_ms:
        wait = (state.open_until_ms - now_ms) / 1000
        return Verdict(False, Decision.BREAKER_OPEN, "breaker-cooling-down", wait)
    if state.open_until_ms > 0:
        if state.probe_is_mine:
            return Verdict(True, reason="half-open-probe")
        return Verdict(False, Decision.BREAKER_OPEN, "breaker-probe-in-flight", 1.0)
    for window, count in zip(policy.windows, state.counts, strict=False):
        if count > window.count:
            trip_ms = policy.cooldown_ms(state.trips)
            return Verdict(
                False,
                Decision.RATE_LIMITED,
                f"recipient-limit-{window.label}",
                trip_ms / 1000,
                trip_ms=trip_ms,
            )
    return ALLOW


# -- the per-account ceiling -------------------------------------------------------------------


@dataclass(frozen=True)
class AccountCeiling:
    """Sends per account in fixed windows (e.g. 1000/h): a brake on a whole runaway account,
    where the recipient windows only cap each phone. Fixed windows keep it one counter per
    window, however busy the account; the price is up to 2x the limit across a window edge."""

    windows: tuple[LimitWindow, ...]
    mode: GuardMode

    @property
    def active(self) -> bool:
        return self.mode is not GuardMode.OFF and bool(self.windows)

    def slots(self, now_ms: int) -> tuple[tuple[int, int], ...]:
        """(window length ms, window index) of the windows `now_ms` falls in."""
        return tuple((w.ms, now_ms // w.ms) for w in self.windows)


def judge_account(counts: Sequence[int], ceiling: AccountCeiling, now_ms: int) -> Verdict:
    """`counts`: the account's sends in each current window, this one included."""
    for window, count in zip(ceiling.windows, counts, strict=False):
        if count > window.count:
            window_end = (now_ms // window.ms + 1) * window.ms
            reason = f"account-limit-{window.label}"
            retry_after = (window_end - now_ms) / 1000
            allow = ceiling.mode is GuardMode.REPORT
            return Verdict(allow, Decision.RATE_LIMITED, reason, retry_after)
    return ALLOW
