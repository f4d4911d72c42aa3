"""The addresses a kill switch names, in canonical form: senders, recipient numbers, SIDs.

Pure. Numbers are read exactly as facts.py reads a To (`recipient_phone`): international form
only, without channel prefix, so one sender or number is one spelling in the store however it
was typed.
"""

from __future__ import annotations

import re

from proxy.guard.facts import normalise_recipient, recipient_phone

ACCOUNT_SID_RE = re.compile(r"AC[0-9a-f]{32}", re.IGNORECASE)
_SERVICE_RE = re.compile(r"MG[0-9a-f]{32}", re.IGNORECASE)
_E164_RE = re.compile(r"\+[1-9][0-9]{1,14}")
_SHORT_CODE_RE = re.compile(r"[0-9]{3,8}")
# Twilio alphanumeric sender IDs: up to 11 of A-Z a-z 0-9 and space, at least one letter.
_ALPHANUMERIC_RE = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")
_PHONE_LIKE_RE = re.compile(r"[+0-9][0-9\s().\-/]*")


def canonical_sid(value: str) -> str:
    """`AC`/`MG` + hex, case-folded the way Twilio prints SIDs (routes accept either case)."""
    return value[:2].upper() + value[2:].lower()


def parse_e164(value: str, what: str) -> str:
    """A bare E.164 number, or ValueError naming `what` and why (a channel prefix, say)."""
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
        return canonical_sid(value)
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
        return parse_e164(value, "a sender number")
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
        return canonical_sid(value)
    number = recipient_phone(value) if ":" in value else None
    address = number if number is not None else value.rpartition(":")[2]
    try:
        return parse_sender(address)
    except ValueError:
        return address


def account_key(raw: str) -> str:
    """The canonical account SID of a send, total over any input (unchanged if not a SID)."""
    return canonical_sid(raw) if ACCOUNT_SID_RE.fullmatch(raw) else raw
