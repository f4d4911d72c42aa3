"""Pure JSON shaping for the admin API: what an operator sees of the stored state.

Phone numbers leave only masked (`+155******10`); message bodies and stored response bodies never
leave at all. Times are ISO 8601 UTC alongside epoch milliseconds for scripts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from proxy.guard.dedup import DedupRecord
from proxy.guard.protection import ProtectionPolicy
from proxy.killswitch import KillSwitch
from proxy.logs import mask_phone, mask_phones_in
from proxy.store.send_store import RecipientSnapshot, SendRef

_SCOPE_NAMES = {"msg": "message", "from": "sender", "to": "recipient"}


def iso_ms(epoch_ms: int | float | None) -> str | None:
    if not epoch_ms:
        return None
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds")


def kill_switch_view(switch: KillSwitch, now: float) -> dict[str, Any]:
    return {
        **switch.to_dict(),
        "created": iso_ms(switch.created_at * 1000),
        "expires": iso_ms(switch.expires_at * 1000) if switch.expires_at else None,
        "source": "config" if switch.from_config else "store",
        "active": switch.active(now),
    }


def suppressions_view(snapshot: RecipientSnapshot, now_ms: int) -> list[dict[str, Any]]:
    views = []
    for field, suppression in sorted(snapshot.suppressions.items()):
        kind, _, detail = field.partition(":")
        views.append(
            {
                "field": mask_phones_in(field),
                "scope": _SCOPE_NAMES.get(kind, kind),
                "sender": _sender_view(detail) if kind == "from" else None,
                "code": suppression.code,
                "source": suppression.source,
                "until": iso_ms(suppression.until_ms),
                "active": suppression.until_ms > now_ms,
            }
        )
    return views


def _sender_view(sender: str) -> str:
    # A sender is a From number, a sender ID or an MG… SID: only a number is someone's phone.
    return mask_phone(sender) if sender.startswith("+") else sender


def breaker_view(
    snapshot: RecipientSnapshot, policy: ProtectionPolicy, now_ms: int
) -> dict[str, Any]:
    open_until = snapshot.breaker.open_until_ms
    if open_until > now_ms:
        state = "open"
    elif open_until:
        state = "half-open"
    else:
        state = "closed"
    windows = {
        window.label: sum(1 for t in snapshot.send_times_ms if t > now_ms - window.ms)
        for window in policy.windows
    }
    return {
        "state": state,
        "open_until": iso_ms(open_until),
        "trips": snapshot.breaker.trips,
        "probe_in_flight": snapshot.breaker.probe_in_flight,
        "sends_in_windows": windows,
        "limits": [window.label for window in policy.windows],
    }


def record_id(ref: SendRef) -> str:
    """The opaque handle of a record in the admin API (`params.record_ref` reads it back)."""
    return f"{ref.tag}.{ref.dedup_id}"


def _masked_meta(record: DedupRecord) -> dict[str, Any]:
    meta = dict(record.meta or {})
    if meta.get("to"):
        meta["to"] = mask_phone(str(meta["to"]))
    if meta.get("from"):
        meta["from"] = _sender_view(str(meta["from"]))
    return meta


def record_view(record: DedupRecord, ref: SendRef | None = None) -> dict[str, Any]:
    meta = _masked_meta(record)
    response = record.response
    return {
        "id": record_id(ref) if ref is not None else None,
        "state": record.state.value,
        "claimed_at": iso_ms(record.claimed_at_ms),
        "lease_until": iso_ms(record.lease_until_ms),
        "message_sid": record.message_sid or None,
        "upstream_status": response.status if response is not None else None,
        "unknown_reason": record.unknown_reason or None,
        "resolved_sid": record.resolved_sid or None,
        "reconciliations": record.reconciliations,
        "send": meta,  # account, route, masked to/from, body hash: what reconciliation needs
    }


def ledger_entry_view(ref: SendRef, record: DedupRecord) -> dict[str, Any]:
    """One UNKNOWN send of the operator's ledger: enough to find it in Twilio's console."""
    meta = _masked_meta(record)
    return {
        "id": record_id(ref),
        "account": meta.get("account") or None,
        "to": meta.get("to") or None,
        "from": meta.get("from") or None,
        "route": meta.get("route") or None,
        "dedup_by": "key" if ref.dedup_id.startswith("k") else "fingerprint",
        "claimed_at": iso_ms(record.claimed_at_ms),
        "reason": record.unknown_reason or None,
        "reconciliations": record.reconciliations,
        # A SID noted by a status callback or an operator, not fetched from Twilio yet.
        "resolved_sid": record.resolved_sid or None,
    }
