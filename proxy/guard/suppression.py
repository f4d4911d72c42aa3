"""Which Twilio codes mean "resending cannot help", for whom, and for how long.

A rule maps a code to a scope and a TTL (`21610=sender:30d`):
  sender     this sender (From or Messaging Service) to this recipient  (opt-out: 21610)
  recipient  anything to this recipient                                 (landline, unknown)
  message    this content from this sender to this recipient            (carrier filtering)
Every scope lives under the recipient's hash tag, as a field of one hash, so a send checks all
three in the claim round trip: `msg:<content>`, `from:<sender>`, `to`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from proxy.durations import parse_duration
from proxy.guard.protection import Suppression

Scope = Literal["sender", "recipient", "message"]
SCOPES: tuple[Scope, ...] = ("sender", "recipient", "message")
DEFAULT_RULES = (
    "21610=sender:30d,30004=recipient:7d,30005=recipient:7d,30006=recipient:7d,30007=message:7d"
)


@dataclass(frozen=True)
class SuppressionRule:
    code: int
    scope: Scope
    ttl: float  # seconds


def parse_rules(spec: str) -> dict[int, SuppressionRule]:
    """`CODE=scope:ttl,…` -> rules by code; `off` or empty -> none. Raises ValueError."""
    rules: dict[int, SuppressionRule] = {}
    text = spec.strip()
    if text.lower() in ("", "off"):
        return rules
    for item in text.split(","):
        code_text, _, rest = item.strip().partition("=")
        scope, _, ttl_text = rest.partition(":")
        if not code_text.isdigit() or scope not in SCOPES or not ttl_text:
            raise ValueError(
                f"invalid suppression rule {item.strip()!r} (use CODE=scope:ttl with scope "
                "sender, recipient or message, e.g. 21610=sender:30d)"
            )
        ttl = parse_duration(ttl_text)
        if ttl <= 0:
            raise ValueError(f"suppression rule {item.strip()!r} needs a positive ttl")
        rules[int(code_text)] = SuppressionRule(int(code_text), scope, ttl)
    return rules


def content_field(sender: str, body: str) -> str:
    digest = hashlib.sha256(f"{sender}\x00{body}".encode()).hexdigest()[:24]
    return f"msg:{digest}"


def scope_fields(sender: str, content: str) -> tuple[str, ...]:
    """The suppression fields that apply to a send, most specific first."""
    return (content, f"from:{sender}", "to")


def field_for(rule: SuppressionRule, *, sender: str, content: str) -> str:
    if rule.scope == "message":
        return content
    if rule.scope == "sender":
        return f"from:{sender}"
    return "to"


def learn(
    code: int | None,
    rules: dict[int, SuppressionRule],
    *,
    sender: str,
    content: str,
    now_ms: int,
    source: str,
) -> tuple[str, Suppression, int] | None:
    """(field, suppression, ttl_ms) when `code` is one of the rules' codes."""
    if code is None or code not in rules:
        return None
    rule = rules[code]
    ttl_ms = int(rule.ttl * 1000)
    return (
        field_for(rule, sender=sender, content=content),
        Suppression(code, now_ms + ttl_ms, source),
        ttl_ms,
    )


def error_code_in(status: int, body: bytes) -> int | None:
    """Twilio's code in an answer: an error body's `code`, or a Message's `error_code`."""
    try:
        payload: Any = orjson.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    raw = payload.get("code") if status >= 400 else payload.get("error_code")
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class MessageFacts:
    """What a Message JSON (fetch, list, or a create's answer) tells about one sent message."""

    account_sid: str
    sid: str
    to: str
    sender: str
    body: str
    error_code: int | None


def messages_in(body: bytes) -> list[MessageFacts]:
    """Messages in a fetch (one Message) or list (`messages: [...]`) answer; else []."""
    try:
        payload: Any = orjson.loads(body)
    except ValueError:
        return []
    items = payload.get("messages") if isinstance(payload, dict) else None
    candidates = items if isinstance(items, list) else [payload]
    found = []
    for item in candidates:
        if not isinstance(item, dict) or not str(item.get("sid", "")).startswith(("SM", "MM")):
            continue
        raw_code = item.get("error_code")
        found.append(
            MessageFacts(
                account_sid=str(item.get("account_sid") or ""),
                sid=str(item["sid"]),
                to=str(item.get("to") or ""),
                sender=str(item.get("messaging_service_sid") or item.get("from") or ""),
                body=str(item.get("body") or ""),
                error_code=int(raw_code) if isinstance(raw_code, int) else None,
            )
        )
    return found
