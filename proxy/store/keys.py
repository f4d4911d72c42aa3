"""Every Redis key sendguard uses is built here, and nowhere else.

The unit of atomicity is the **recipient** (account + normalised To): a send's dedup record,
the recipient's send log (limits), breaker and suppressions share its `{hash tag}`, so one
script claims a send and reads everything the decision needs, on one Redis Cluster slot.
One busy account is spread over as many slots as it has recipients, never one hot slot.
Keyed sends add a tiny index in the key's own slot, so one key can never name two recipients.
"""

from __future__ import annotations

PREFIX = "sg"
# Bump when a stored layout changes incompatibly: old records are then simply not seen.
LAYOUT_VERSION = "2"
_BASE = f"{PREFIX}:{LAYOUT_VERSION}"


def dedup_record(tag: str, dedup_id: str) -> str:
    """Hash: the claim/outcome record of one logical send (by key scope or fingerprint)."""
    return f"{_BASE}:{{{tag}}}:rec:{dedup_id}"


def recipient_sends(tag: str) -> str:
    """Sorted set: one member per send that reached (or is on its way to) Twilio, by time."""
    return f"{_BASE}:{{{tag}}}:sends"


def recipient_breaker(tag: str) -> str:
    """Hash: the recipient's breaker (open_until, trips, the half-open probe's token)."""
    return f"{_BASE}:{{{tag}}}:breaker"


def recipient_suppressions(tag: str) -> str:
    """Hash: scope field (`to`, `from:<sender>`, `msg:<content>`) -> learned code and expiry."""
    return f"{_BASE}:{{{tag}}}:suppressed"


def recipient_messages(tag: str) -> str:
    """Hash: Message SID -> content field. Legacy, read only: the SID index (`message_ref`)
    carries the content field now; kept for sends completed before it did."""
    return f"{_BASE}:{{{tag}}}:sids"


def key_index(dedup_id: str) -> str:
    """String: `<recipient tag> <payload hash>` of the send a key was first used for."""
    return f"{_BASE}:{{{dedup_id}}}:key"


def message_ref(message_sid: str) -> str:
    """String: the send that created a Message SID, and its content field (`codec.encode_index`):
    the admin's lookup by SID, and a status callback's message scope (it carries no body)."""
    return f"{_BASE}:{{m{message_sid}}}:ref"


def key_ref(lookup_id: str) -> str:
    """String: the last send under an account's key (`codec.encode_index`; admin)."""
    return f"{_BASE}:{{k{lookup_id}}}:ref"


def reconcile_gate(tag: str, dedup_id: str) -> str:
    """String (short-lived): one reconciliation of an UNKNOWN send at a time, fleet-wide."""
    return f"{_BASE}:{{{tag}}}:recon:{dedup_id}"


def unknown_ledger() -> str:
    """Sorted set: `<recipient tag> <dedup id>` of UNKNOWN sends by claim time (the operator's
    ledger; one slot, admin path only, cleaned lazily as records settle or expire)."""
    return f"{_BASE}:{{ledger}}:unknown"


def account_sends(account_sid: str, window_ms: int, index: int) -> str:
    """Counter: sends of one account in one fixed window (the optional per-account ceiling).
    All windows of an account share its slot, so one script counts them together."""
    return f"{_BASE}:{{a{account_sid}}}:sends:{window_ms}:{index}"


def callback_forwarded(token_digest: str) -> str:
    """String: a status callback (by its I-Twilio-Idempotency-Token digest) already forwarded."""
    return f"{_BASE}:{{cb{token_digest}}}:fwd"


def tee_secret() -> str:
    """String: the HMAC secret of callback URLs, made once and shared by every instance."""
    return f"{_BASE}:{{tee}}:secret"


def kill_switches() -> str:
    """Hash: canonical scope text (`global`, `account:AC…`, …) -> the kill switch as JSON.
    All switches share one slot: writes are rare and each is atomic with its notification."""
    return f"{_BASE}:{{killswitch}}:switches"


def kill_switch_channel() -> str:
    """Pub/sub channel: one message per engage/release; subscribers re-read `kill_switches`.
    Same tag, so a cluster subscriber connects to the switches' node (classic PUBLISH reaches
    every node of a cluster anyway)."""
    return f"{_BASE}:{{killswitch}}:changed"


# What an outage store hands over when the shared store is back (send records, key indexes).
EXPORT_PATTERN = f"{_BASE}:*"


def is_key_index(key: str) -> bool:
    return key.startswith(_BASE + ":{") and key.endswith("}:key")


def is_exported(key: str) -> bool:
    return ":rec:" in key or is_key_index(key)
