"""Kill switches as values: scopes, switches and the pure `match` the hot path runs.

No I/O and no clock reads: every function that needs the time takes `now` (epoch seconds).

    scope text                   matches a guarded send whose ...
    global                       (every send)
    account:AC<32 hex>           account SID is this one
    sender:<E.164|MG…|alnum>     MessagingServiceSid (else From) is this sender
    recipient:<E.164>            normalised To is this number
    prefix:+<1-6 digits>         normalised To starts with this prefix (a country, a range)

Scopes name *addresses*: a channel prefix on the send (`WhatsApp:+44…`) is ignored when
matching, so `recipient:+44…` and `prefix:+44` also stop WhatsApp sends to those numbers.
Scope text is canonical (`recipient:+1 (555) 010-0000` parses to `recipient:+15550100000`), so
one scope is one field in the store however it was typed. Numbers are read exactly as facts.py
reads a To (`recipient_phone`): recipient and prefix scopes match phone numbers in international
form only; a To that is not a phone number (`client:…`, `sip:…`) or a national number without
`+`/`00` is matched by no recipient or prefix scope (global, account and sender scopes still
stop it).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Set
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from proxy.guard.facts import SendFacts, normalise_recipient, recipient_phone
from proxy.logs import mask_phone

CONFIG_AUTHOR = "config"
CONFIG_REASON = "SENDGUARD_KILL_SWITCH"
DEFAULT_RETRY_AFTER = 60  # seconds, for a switch with no expiry
MAX_SCOPE_LENGTH = 100
MAX_REASON_LENGTH = 500
MAX_AUTHOR_LENGTH = 100

_ACCOUNT_RE = re.compile(r"AC[0-9a-f]{32}", re.IGNORECASE)
_SERVICE_RE = re.compile(r"MG[0-9a-f]{32}", re.IGNORECASE)
_E164_RE = re.compile(r"\+[1-9][0-9]{1,14}")
_PREFIX_RE = re.compile(r"\+[1-9][0-9]{0,5}")
_SHORT_CODE_RE = re.compile(r"[0-9]{3,8}")
# Twilio alphanumeric sender IDs: up to 11 of A-Z a-z 0-9 and space, at least one letter.
_ALPHANUMERIC_RE = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")
_PHONE_LIKE_RE = re.compile(r"[+0-9][0-9\s().\-/]*")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class ScopeKind(StrEnum):
    GLOBAL = "global"
    ACCOUNT = "account"
    SENDER = "sender"
    RECIPIENT = "recipient"
    PREFIX = "prefix"


_KINDS = ", ".join(kind.value for kind in ScopeKind)


def _sid(value: str) -> str:
    """`AC`/`MG` + hex, case-folded the way Twilio prints SIDs (routes accept either case)."""
    return value[:2].upper() + value[2:].lower()


def _e164(value: str, what: str) -> str:
    number = normalise_recipient(value)
    if ":" in number and recipient_phone(value) is None:
        raise ValueError(
            f"{what} must be an E.164 number such as +14155550100, got {value!r}: an address "
            f"that is not a phone number (client:, sip:) has no recipient scope; stop it with a "
            f"sender, account or global scope"
        )
    if ":" in number:
        raise ValueError(
            f"{what} must be a bare E.164 number (e.g. +14155550100), without a channel "
            f"prefix such as 'whatsapp:': the scope already covers every channel"
        )
    if not _E164_RE.fullmatch(number):
        raise ValueError(f"{what} must be an E.164 number such as +14155550100, got {value!r}")
    return number


def parse_sender(text: str) -> str:
    """A sender in canonical form: `MG<hex>`, an E.164 number, a short code or an alphanumeric
    sender ID (upper-cased: Twilio treats them case-insensitively). Raises ValueError."""
    value = text.strip()
    if _SERVICE_RE.fullmatch(value):
        return _sid(value)
    if len(value) == 34 and value[:2].upper() == "MG":
        raise ValueError(f"a Messaging Service SID is MG followed by 32 hex digits, got {text!r}")
    if _PHONE_LIKE_RE.fullmatch(value):
        if _SHORT_CODE_RE.fullmatch(value):
            return value
        if not value.startswith(("+", "00")):
            raise ValueError(
                f"a sender number must be E.164 with a leading '+' (or a 3-8 digit short "
                f"code), got {text!r}"
            )
        return _e164(value, "a sender number")
    if ":" in value:
        raise ValueError(
            f"a sender must be given without a channel prefix such as 'whatsapp:' (the scope "
            f"already covers every channel), got {text!r}"
        )
    if _ALPHANUMERIC_RE.fullmatch(value):
        return value.upper()
    raise ValueError(
        f"a sender must be a Messaging Service SID (MG + 32 hex), an E.164 number, a short code "
        f"or an alphanumeric sender ID (1-11 letters, digits, spaces), got {text!r}"
    )


def sender_key(raw: str) -> str:
    """The canonical sender of a send (MessagingServiceSid, else From), total over any input:
    the address without channel prefix, in `parse_sender`'s form where it has one."""
    value = raw.strip()
    if _SERVICE_RE.fullmatch(value):
        return _sid(value)
    number = recipient_phone(value) if ":" in value else None
    address = number if number is not None else value.rpartition(":")[2]
    try:
        return parse_sender(address)
    except ValueError:
        return address


@dataclass(frozen=True, slots=True)
class Scope:
    """What a switch stops. Build with `Scope.parse`; direct construction must be canonical."""

    kind: ScopeKind
    value: str = ""

    def __post_init__(self) -> None:
        if Scope.parse(str(self)) != self:
            raise ValueError(f"not a canonical scope: {self.kind.value}:{self.value!r}")

    @staticmethod
    def parse(text: str) -> Scope:
        """Strict: returns a canonical Scope or raises ValueError saying what is wrong."""
        if not isinstance(text, str):
            raise ValueError(f"a scope is text, got {type(text).__name__}")
        stripped = text.strip()
        if not stripped:
            raise ValueError(f"empty scope: expected one of {_KINDS}")
        if len(stripped) > MAX_SCOPE_LENGTH:
            raise ValueError(f"scope longer than {MAX_SCOPE_LENGTH} characters")
        name, sep, raw = stripped.partition(":")
        try:
            kind = ScopeKind(name.strip().lower())
        except ValueError:
            raise ValueError(
                f"unknown scope kind {name.strip()!r}: expected one of {_KINDS}"
            ) from None
        if kind is ScopeKind.GLOBAL:
            if sep:
                raise ValueError("the global scope takes no value: write just 'global'")
            return _make(kind, "")
        if not raw.strip():
            raise ValueError(f"the {kind.value} scope needs a value: {kind.value}:<{_HINTS[kind]}>")
        return _make(kind, _CANONICAL[kind](raw))

    def __str__(self) -> str:
        return self.kind.value if self.kind is ScopeKind.GLOBAL else f"{self.kind}:{self.value}"

    def masked(self) -> str:
        """For logs: a person's number (recipient) or a sender number is masked."""
        if self.kind is ScopeKind.RECIPIENT or (
            self.kind is ScopeKind.SENDER and self.value.startswith("+")
        ):
            return f"{self.kind}:{mask_phone(self.value)}"
        return str(self)


def _account(raw: str) -> str:
    value = raw.strip()
    if not _ACCOUNT_RE.fullmatch(value):
        raise ValueError(f"an account scope is AC followed by 32 hex digits, got {raw!r}")
    return _sid(value)


def _prefix(raw: str) -> str:
    value = raw.strip()
    if not _PREFIX_RE.fullmatch(value):
        raise ValueError(
            f"a prefix scope is '+' and 1-6 digits, not starting with 0 (e.g. +44), got {raw!r}"
        )
    return value


_CANONICAL = {
    ScopeKind.ACCOUNT: _account,
    ScopeKind.SENDER: parse_sender,
    ScopeKind.RECIPIENT: lambda raw: _e164(raw.strip(), "a recipient scope"),
    ScopeKind.PREFIX: _prefix,
}
_HINTS = {
    ScopeKind.ACCOUNT: "AC…",
    ScopeKind.SENDER: "+E.164 | MG… | sender ID",
    ScopeKind.RECIPIENT: "+E.164",
    ScopeKind.PREFIX: "+CC",
}


def _make(kind: ScopeKind, value: str) -> Scope:
    scope = object.__new__(Scope)  # already canonical: skip __post_init__'s re-parse
    object.__setattr__(scope, "kind", kind)
    object.__setattr__(scope, "value", value)
    return scope


GLOBAL = _make(ScopeKind.GLOBAL, "")


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
            _sid(account_sid) if _ACCOUNT_RE.fullmatch(account_sid) else account_sid,
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
