"""The facts of a guarded send, derived from the raw request: key, scope, fingerprint, recipient.

Everything here is pure and total over untrusted input: it either returns facts or raises an
`InvalidRequest` subclass, never anything else (fuzzed in tests/unit/test_facts.py and
tests/e2e/test_identities.py).
"""

from __future__ import annotations

import base64
import binascii
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
# Visible ASCII (0x21-0x7E), 1-255 chars: docs/contract.md#dedup.
_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")
# Separators people put in phone numbers; removing them cannot merge two different E.164 numbers.
_PHONE_NOISE_RE = re.compile(r"[\s().\-/]")
# What is left of a phone number once the separators are gone: international (`+` or `00`) or
# national digits. ASCII digits only: `str.isdigit` would also take `²` or Arabic-Indic digits.
_PHONE_RE = re.compile(r"\+?[0-9]+")
# A URI scheme (RFC 3986 §3.1): the channel prefix of a To such as `whatsapp:` or `client:`.
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
# Schemes whose addresses are names or URIs, never phone numbers, even when they look like one
# (`client:+1 555 010 0000` is a Twilio Client identity, compared exactly).
_NON_PHONE_SCHEMES = frozenset({"client", "sip", "sips"})
_BASE64_RE = re.compile(r"[A-Za-z0-9+/]*")
# parse_qsl passes "%ZZ" through as text; a bad escape means the client's encoder is broken.
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Keeps credential hashes unlinkable to a plain SHA-256 of the header should a store leak.
_SCOPE_PEPPER = b"sendguard/credential-scope/v1"

Form = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SendFacts:
    route: RouteMatch
    credential_hash: str  # keyed hash of the credential (`credential_hash`): the tenant boundary
    form: Form  # pairs as the client sent them, in order
    idempotency_key: str | None
    payload_hash: str  # canonical form + route: what "same payload" means for a key
    dedup_id: str  # the identity a record is stored under (key scope or fingerprint)
    to: str  # normalised recipient ("" if absent)
    sender: str  # MessagingServiceSid, else From ("" if absent)
    body_hash: str  # for reconciliation against Twilio's message list
    body_smart_hash: str  # the same, after Twilio's Smart Encoding (curly quotes -> ASCII, …)
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
    """Strict form decoding: a guarded send that is not valid form encoding is refused (400).

    Empty segments (a trailing `&`, `&&`, a leading `&`) carry nothing and are skipped: the
    body is still forwarded as sent, and `To=1&` is the same send as `To=1`."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if body and media_type != FORM_CONTENT_TYPE:
        raise InvalidRequest(f"a send must be {FORM_CONTENT_TYPE}, got {media_type or 'none'!r}")
    try:
        text = body.decode("utf-8")
        if _BAD_ESCAPE_RE.search(text):
            raise ValueError("bad percent-escape")
        text = "&".join(segment for segment in text.split("&") if segment)
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(
            "the form body is not valid application/x-www-form-urlencoded"
        ) from exc
    return tuple(pairs)


def _split_scheme(address: str) -> tuple[str, str]:
    """(scheme lower-cased, rest) for `scheme:rest`; ("", address) when there is no scheme."""
    found = _SCHEME_RE.match(address)
    if found is None:
        return "", address
    return found.group(1).lower(), address[found.end() :]


def _phone_number(text: str) -> str | None:
    """`text` as a phone number, separators removed and `00` read as `+`; None if it is not one.

    Conservative: only `+` (or `00`) and digits, or digits alone, once the separators are gone.
    National digits keep no country code: `5550100000` is not `+15550100000` (no region guessed).
    """
    compact = _PHONE_NOISE_RE.sub("", text)
    if not _PHONE_RE.fullmatch(compact):
        return None
    if compact.startswith("00") and len(compact) > 2:
        return "+" + compact[2:]
    return compact


def recipient_phone(raw: str) -> str | None:
    """The phone number a To addresses, without its channel prefix (`WhatsApp:+1 555 010 0000`
    -> `+15550100000`); None when the To is not a phone number (`client:…`, `sip:…`, a name)."""
    scheme, address = _split_scheme(raw.strip())
    if scheme in _NON_PHONE_SCHEMES:
        return None
    return _phone_number(address)


def normalise_recipient(raw: str) -> str:
    """The identity of a recipient (docs/contract.md#dedup): one string per recipient, never two
    recipients per string.

    Phone numbers, bare or behind a channel prefix, lose their separators and the prefix its case:
    `+1 (555) 010-0000` = `+15550100000` = `0015550100000`, `WhatsApp:+1 555…` = `whatsapp:+1555…`.
    Any other address is the string as sent apart from the case of its scheme: `client:agent-1`
    is not `client:agent1`, `sip:alice.b@ex.com` is not `sip:aliceb@ex.com`.
    """
    number = recipient_phone(raw)
    if number is not None:
        scheme, _ = _split_scheme(raw.strip())
        return f"{scheme}:{number}" if scheme else number
    scheme, rest = _split_scheme(raw)
    return f"{scheme}:{rest}" if scheme else raw


def recipient_tag(account_sid: str, to: str) -> str:
    """The Redis hash tag of one recipient: opaque, so no key spells out a phone number."""
    return "r" + hashlib.sha256(f"{account_sid}\x00{to}".encode()).hexdigest()[:24]


def basic_credential(authorization: str) -> bytes | None:
    """The decoded `username:password` of a Basic Authorization header; None when it is not one.

    The scheme's case, whitespace around and between the parts, and the base64 padding do not
    matter (`basic  YWI6Yw` = `Basic YWI6Yw==`): they are one credential to Twilio too.
    """
    parts = authorization.split()
    if len(parts) != 2 or not parts[0].isascii() or parts[0].lower() != "basic":
        return None
    token = parts[1].rstrip("=")
    if len(token) % 4 == 1 or not _BASE64_RE.fullmatch(token):
        return None
    try:
        return base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
    except binascii.Error:
        return None


def credential_hash(authorization: str) -> str:
    """The tenant boundary: a keyed hash of the credential, never the credential itself.

    A Basic credential is hashed as `Basic <canonical base64 of username:password>`, which is
    what SDKs send, so their scopes are the ones earlier versions stored. Anything else (another
    scheme, undecodable) is hashed as the stripped header: it can never take that form, since
    it would then have decoded, so the two kinds cannot collide.
    """
    decoded = basic_credential(authorization)
    if decoded is not None:
        material = "Basic " + base64.b64encode(decoded).decode("ascii")
    else:
        material = authorization.strip()
    # surrogatepass: a header can carry any code point (aiohttp's surrogateescape); stay total.
    digest = hmac.new(_SCOPE_PEPPER, material.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return digest.hexdigest()[:32]


def canonical_form(form: Form) -> str:
    """Order-insensitive across keys, order-preserving within a repeated key (MediaUrl)."""
    grouped: dict[str, list[str]] = {}
    for key, value in form:
        if key == "To":
            value = normalise_recipient(value)
        grouped.setdefault(key, []).append(value)
    # JSON keeps the encoding injective: no value can forge a separator.
    return json.dumps(sorted(grouped.items()), ensure_ascii=False, separators=(",", ":"))


# Twilio's Smart Encoding swaps look-alike Unicode for GSM-7 characters, so the body in its
# message list may differ from the one sent; reconciliation compares both forms.
_SMART_ENCODING = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
        "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-", "\u2010": "-",
        "\u2011": "-", "\u00a0": " ", "\u2002": " ", "\u2003": " ", "\u2009": " ",
        "\u202f": " ", "\u2026": "...", "\u02c6": "^", "\u02dc": "~", "\u00ab": '"',
        "\u00bb": '"', "\u2039": "'", "\u203a": "'", "\u2022": "-",
    }
)  # fmt: skip


def smart_encoded(body: str) -> str:
    return body.translate(_SMART_ENCODING)


def body_digest(body: str) -> str:
    """A short digest of a message body: records keep this, never the body itself."""
    return _sha(body)[:16]


def _sha(*parts: str) -> str:
    """SHA-256 of the parts, each followed by a NUL (one encode and one update: the hot path)."""
    return hashlib.sha256(("\x00".join(parts) + "\x00").encode()).hexdigest()


def _first_values(form: Form) -> dict[str, str]:
    """Each field's first value, in one pass: the recipient, sender and body a send is for."""
    firsts: dict[str, str] = {}
    for key, value in form:
        firsts.setdefault(key, value)
    return firsts


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
    firsts = _first_values(form)
    to = normalise_recipient(firsts.get("To", ""))
    sender = firsts.get("MessagingServiceSid") or firsts.get("From", "")
    body_text = firsts.get("Body", "")
    return SendFacts(
        route=route,
        credential_hash=cred,
        form=form,
        idempotency_key=key,
        payload_hash=payload_hash,
        dedup_id=dedup_id,
        to=to,
        sender=sender,
        body_hash=body_digest(body_text),
        body_smart_hash=body_digest(smart_encoded(body_text)),
        recipient_tag=recipient_tag(account, to),
        content=content_field(sender, body_text),
    )
