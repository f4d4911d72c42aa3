"""What a kill switch stops: a scope, parsed strictly into canonical text.

    scope text                   matches a guarded send whose ...
    global                       (every send)
    account:AC<32 hex>           account SID is this one
    sender:<E.164|MG…|alnum>     MessagingServiceSid (else From) is this sender
    recipient:<E.164>            normalised To is this number
    prefix:+<1-6 digits>         normalised To starts with this prefix (a country, a range)

Scopes name *addresses*: a channel prefix on the send (`WhatsApp:+44…`) is ignored when
matching, so `recipient:+44…` and `prefix:+44` also stop WhatsApp sends to those numbers.
Scope text is canonical (`recipient:+1 (555) 010-0000` parses to `recipient:+15550100000`), so
one scope is one field in the store however it was typed. Recipient and prefix scopes match
phone numbers in international form only (addresses.py); a To that is not a phone number
(`client:…`, `sip:…`) or a national number without `+`/`00` is matched by no recipient or prefix
scope (global, account and sender scopes still stop it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from proxy.killswitch.addresses import ACCOUNT_SID_RE, canonical_sid, parse_e164, parse_sender
from proxy.logs import mask_phone

MAX_SCOPE_LENGTH = 100

_PREFIX_RE = re.compile(r"\+[1-9][0-9]{0,5}")


class ScopeKind(StrEnum):
    GLOBAL = "global"
    ACCOUNT = "account"
    SENDER = "sender"
    RECIPIENT = "recipient"
    PREFIX = "prefix"


_KINDS = ", ".join(kind.value for kind in ScopeKind)


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
    if not ACCOUNT_SID_RE.fullmatch(value):
        raise ValueError(f"an account scope is AC followed by 32 hex digits, got {raw!r}")
    return canonical_sid(value)


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
    ScopeKind.RECIPIENT: lambda raw: parse_e164(raw.strip(), "a recipient scope"),
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
