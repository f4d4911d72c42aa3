"""Kill switches as values and the pure `match` the hot path runs.

No I/O and no clock reads: every function that needs the time takes `now` (epoch seconds).
What a switch stops is its scope (scopes.py); the addresses a scope names are canonical
(addresses.py), and a send's are canonicalised the same way once (`SendAttributes`), so
matching is comparing text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Set
from dataclasses import dataclass
from typing import Any

from proxy.guard.facts import SendFacts, recipient_phone
from proxy.killswitch.addresses import account_key, parse_sender, sender_key
from proxy.killswitch.scopes import Scope, ScopeKind

CONFIG_AUTHOR = "config"
CONFIG_REASON = "SENDGUARD_KILL_SWITCH"
DEFAULT_RETRY_AFTER = 60  # seconds, for a switch with no expiry
MAX_REASON_LENGTH = 500
MAX_AUTHOR_LENGTH = 100

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be non-empty text")
    text = value.strip()
    if len(text) > limit:
        raise ValueError(f"{what} is longer than {limit} characters")
    if _CONTROL_RE.search(text):
        raise ValueError(f"{what} must be one line without control characters")
    return text


def _time(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number of epoch seconds")
    return float(value)


@dataclass(frozen=True, slots=True)
class KillSwitch:
    scope: Scope
    reason: str
    author: str
    created_at: float  # epoch seconds
    expires_at: float | None = None  # epoch seconds; None = until released

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", _text(self.reason, "reason", MAX_REASON_LENGTH))
        object.__setattr__(self, "author", _text(self.author, "author", MAX_AUTHOR_LENGTH))
        object.__setattr__(self, "created_at", _time(self.created_at, "created_at"))
        if self.expires_at is not None:
            expires_at = _time(self.expires_at, "expires_at")
            if expires_at <= self.created_at:
                raise ValueError("expires_at must be after created_at")
            object.__setattr__(self, "expires_at", expires_at)

    @classmethod
    def engage(
        cls,
        scope: Scope | str,
        *,
        reason: str,
        author: str,
        now: float,
        ttl: float | None = None,
    ) -> KillSwitch:
        """A new switch from operator input; `ttl` seconds (> 0) makes it release itself."""
        if isinstance(scope, str):
            scope = Scope.parse(scope)
        if ttl is not None and (not math.isfinite(ttl) or ttl <= 0):
            raise ValueError("ttl must be a positive number of seconds")
        return cls(scope, reason, author, now, None if ttl is None else now + ttl)

    @property
    def from_config(self) -> bool:
        return self.author == CONFIG_AUTHOR and self.reason == CONFIG_REASON

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": str(self.scope),
            "reason": self.reason,
            "author": self.author,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: object) -> KillSwitch:
        if not isinstance(data, dict):
            raise ValueError("a kill switch is a JSON object")
        unknown = set(data) - {"scope", "reason", "author", "created_at", "expires_at"}
        if unknown:
            raise ValueError(f"unknown kill switch fields: {', '.join(sorted(unknown))}")
        scope = data.get("scope")
        if not isinstance(scope, str):
            raise ValueError("scope must be text")
        expires_at = data.get("expires_at")
        return cls(
            Scope.parse(scope),
            _text(data.get("reason"), "reason", MAX_REASON_LENGTH),
            _text(data.get("author"), "author", MAX_AUTHOR_LENGTH),
            _time(data.get("created_at"), "created_at"),
            None if expires_at is None else _time(expires_at, "expires_at"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> KillSwitch:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"kill switch is not valid JSON: {exc}") from None
        return cls.from_dict(data)


@dataclass(frozen=True, slots=True)
class SendAttributes:
    """What a switch can match on, canonicalised once per send."""

    account_sid: str
    sender: str  # sender_key(MessagingServiceSid or From); "" if absent
    recipient: str  # the To's phone number, without channel prefix; "" if absent or not a number

    @classmethod
    def of(cls, *, account_sid: str, sender: str, to: str) -> SendAttributes:
        return cls(
            account_key(account_sid),
            sender_key(sender) if sender else "",
            recipient_phone(to) or "",
        )

    @classmethod
    def from_facts(cls, facts: SendFacts) -> SendAttributes:
        return cls.of(account_sid=facts.account_sid, sender=facts.sender, to=facts.to)


def _covers(scope: Scope, attrs: SendAttributes) -> bool:
    kind = scope.kind
    if kind is ScopeKind.GLOBAL:
        return True
    if kind is ScopeKind.ACCOUNT:
        return attrs.account_sid == scope.value
    if kind is ScopeKind.SENDER:
        return attrs.sender == scope.value
    if kind is ScopeKind.RECIPIENT:
        return attrs.recipient == scope.value
    return attrs.recipient.startswith(scope.value)


def _blocking_rank(switch: KillSwitch) -> tuple[bool, float]:
    # The switch that blocks longest decides Retry-After: no expiry first, then latest expiry.
    return (switch.expires_at is None, switch.expires_at or 0.0)


def match(
    switches: Iterable[KillSwitch],
    attrs: SendAttributes,
    break_glass_senders: Set[str],
    now: float,
) -> KillSwitch | None:
    """The switch that stops this send, or None. `break_glass_senders` holds canonical senders
    (`parse_sender`); such a sender passes every switch. Expired switches never match. Of
    several matches, the one that blocks longest is returned (its expiry is the Retry-After)."""
    if attrs.sender and attrs.sender in break_glass_senders:
        return None
    best: KillSwitch | None = None
    for switch in switches:
        if not (switch.active(now) and _covers(switch.scope, attrs)):
            continue
        if best is None or _blocking_rank(switch) > _blocking_rank(best):
            best = switch
    return best


def retry_after(switch: KillSwitch, now: float) -> int:
    """Seconds a client should wait: until the expiry, else DEFAULT_RETRY_AFTER."""
    if switch.expires_at is None:
        return DEFAULT_RETRY_AFTER
    return max(1, math.ceil(switch.expires_at - now))


def parse_env_switches(text: str, now: float) -> tuple[KillSwitch, ...]:
    """`SENDGUARD_KILL_SWITCH`: comma-separated scopes, e.g. `global` or `account:AC…,prefix:+44`.
    Empty items are ignored, duplicates collapse; a bad item raises ValueError naming it."""
    switches: dict[Scope, KillSwitch] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        try:
            scope = Scope.parse(item)
        except ValueError as exc:
            raise ValueError(f"SENDGUARD_KILL_SWITCH: {item.strip()!r}: {exc}") from None
        switches.setdefault(
            scope, KillSwitch(scope, CONFIG_REASON, CONFIG_AUTHOR, now, expires_at=None)
        )
    return tuple(switches.values())


def parse_break_glass(senders: Iterable[str]) -> frozenset[str]:
    """The break-glass allowlist in canonical form; a bad entry raises ValueError naming it."""
    result: set[str] = set()
    for sender in senders:
        try:
            result.add(parse_sender(sender))
        except ValueError as exc:
            raise ValueError(f"break-glass sender {sender.strip()!r}: {exc}") from None
    return frozenset(result)


def count_by_kind(switches: Iterable[KillSwitch], now: float) -> dict[ScopeKind, int]:
    """Active switches per scope kind, every kind present (a gauge per kind, zeros included)."""
    counts = dict.fromkeys(ScopeKind, 0)
    for switch in switches:
        if switch.active(now):
            counts[switch.scope.kind] += 1
    return counts
