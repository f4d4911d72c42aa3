"""The facts of a guarded send, derived from the raw request: key, scope, fingerprint, recipient.

Everything here is pure and total over untrusted input: it either returns facts or raises an
`InvalidRequest` subclass, never anything else (fuzzed in tests/test_facts_fuzz.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from proxy.errors import InvalidIdempotencyKey, InvalidRequest
from proxy.guard.routes import RouteMatch
from proxy.guard.suppression import content_field

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
# Visible ASCII (0x21-0x7E), 1-255 chars: SPEC §3.1.
_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")
# Separators people put in phone numbers; removing them cannot merge two different E.164 numbers.
_PHONE_NOISE_RE = re.compile(r"[\s().\-/]")
# parse_qsl passes "%ZZ" through as text; a bad escape means the client's encoder is broken.
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Keeps credential hashes unlinkable to a plain SHA-256 of the header should a store leak.
_SCOPE_PEPPER = b"sendguard/credential-scope/v1"

Form = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SendFacts:
    route: RouteMatch
    credential_hash: str  # keyed hash of the Authorization header: the tenant boundary
    form: Form  # pairs as the client sent them, in order
    idempotency_key: str | None
    payload_hash: str  # canonical form + route: what "same payload" means for a key
    dedup_id: str  # the identity a record is stored under (key scope or fingerprint)
    to: str  # normalised recipient ("" if absent)
    sender: str  # MessagingServiceSid, else From ("" if absent)
    body_hash: str  # for reconciliation against Twilio's message list
    recipient_tag: str  # the hash tag of every key this send touches
    content: str  # the message-scope suppression field: sender + body

    @property
    def by_key(self) -> bool:
        return self.idempotency_key is not None

    @property
    def account_sid(self) -> str:
        return self.route.account_sid


def parse_idempotency_key(raw: str | None) -> str | None:
    """`"k"` and `k` are the same key (RFC 8941 String form or bare); None when absent."""
    if raw is None:
        return None
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not _KEY_RE.fullmatch(value):
        raise InvalidIdempotencyKey()
    return value


def parse_form(body: bytes, content_type: str) -> Form:
    """Strict form decoding: a guarded send that is not valid form encoding is refused (400)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if body and media_type != FORM_CONTENT_TYPE:
        raise InvalidRequest(f"a send must be {FORM_CONTENT_TYPE}, got {media_type or 'none'!r}")
    try:
        text = body.decode("utf-8")
        if _BAD_ESCAPE_RE.search(text):
            raise ValueError("bad percent-escape")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(
            "the form body is not valid application/x-www-form-urlencoded"
        ) from exc
    return tuple(pairs)


def normalise_recipient(raw: str) -> str:
    """`+1 (555) 010-0000` and `+15550100000` are one recipient; `whatsapp:` prefixes are kept."""
    channel, sep, address = raw.strip().rpartition(":")
    address = _PHONE_NOISE_RE.sub("", address)
    if address.startswith("00") and address[2:].isdigit():
        address = "+" + address[2:]
    return f"{channel.lower()}{sep}{address}" if sep else address


def recipient_tag(account_sid: str, to: str) -> str:
    """The Redis hash tag of one recipient: opaque, so no key spells out a phone number."""
    return "r" + hashlib.sha256(f"{account_sid}\x00{to}".encode()).hexdigest()[:24]


def credential_hash(authorization: str) -> str:
    return hmac.new(_SCOPE_PEPPER, authorization.encode(), hashlib.sha256).hexdigest()[:32]


def canonical_form(form: Form) -> str:
    """Order-insensitive across keys, order-preserving within a repeated key (MediaUrl)."""
    grouped: dict[str, list[str]] = {}
    for key, value in form:
        if key == "To":
            value = normalise_recipient(value)
        grouped.setdefault(key, []).append(value)
    # JSON keeps the encoding injective: no value can forge a separator.
    return json.dumps(sorted(grouped.items()), ensure_ascii=False, separators=(",", ":"))


def _sha(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def first_value(form: Form, name: str) -> str:
    return next((value for key, value in form if key == name), "")


def build_facts(
    route: RouteMatch,
    *,
    authorization: str,
    idempotency_key_header: str | None,
    body: bytes,
    content_type: str,
) -> SendFacts:
    key = parse_idempotency_key(idempotency_key_header)
    form = parse_form(body, content_type)
    cred = credential_hash(authorization)
    canonical = canonical_form(form)
    payload_hash = _sha(route.route.name, canonical)
    account = route.account_sid
    if key is not None:
        dedup_id = "k" + _sha(account, cred, key)[:40]
    else:
        dedup_id = "f" + _sha(account, cred, route.route.name, canonical)[:40]
    to = normalise_recipient(first_value(form, "To"))
    sender = first_value(form, "MessagingServiceSid") or first_value(form, "From")
    body_text = first_value(form, "Body")
    return SendFacts(
        route=route,
        credential_hash=cred,
        form=form,
        idempotency_key=key,
        payload_hash=payload_hash,
        dedup_id=dedup_id,
        to=to,
        sender=sender,
        body_hash=_sha(body_text)[:16],
        recipient_tag=recipient_tag(account, to),
        content=content_field(sender, body_text),
    )
