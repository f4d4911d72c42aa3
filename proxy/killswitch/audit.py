"""Audit events of the kill switch: who changed what, why, until when.

Event names are constants (like `proxy.logs`); scopes are logged masked (`Scope.masked`), so a
recipient's number never reaches a log line in full. Times are ISO 8601 UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from proxy.killswitch.model import KillSwitch
from proxy.logs import get_logger

KILL_SWITCH_ENGAGED = "kill_switch_engaged"
KILL_SWITCH_RELEASED = "kill_switch_released"
KILL_SWITCH_EXPIRED = "kill_switch_expired"  # deleted from the store after its expiry
KILL_SWITCH_SYNC_FAILED = "kill_switch_sync_failed"  # store unreadable: last known state kept
KILL_SWITCH_SYNC_RESTORED = "kill_switch_sync_restored"
KILL_SWITCH_PUSH_LOST = "kill_switch_push_lost"  # subscription down: resync alone keeps state
KILL_SWITCH_PUSH_RESTORED = "kill_switch_push_restored"
KILL_SWITCH_MALFORMED = "kill_switch_malformed"  # a stored entry that is not a kill switch
KILL_SWITCH_TASK_FAILED = "kill_switch_task_failed"  # a board task ended with an error (a bug)

log = get_logger(__name__)


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def switch_fields(switch: KillSwitch) -> dict[str, Any]:
    return {
        "scope": switch.scope.masked(),
        "scope_kind": switch.scope.kind.value,
        "reason": switch.reason,
        "author": switch.author,
        "created_at": _iso(switch.created_at),
        "expires_at": _iso(switch.expires_at),
    }


def engaged(switch: KillSwitch, replaced: KillSwitch | None) -> None:
    fields = switch_fields(switch)
    if replaced is not None:
        fields["replaced_author"] = replaced.author
        fields["replaced_reason"] = replaced.reason
    log.warning(KILL_SWITCH_ENGAGED, **fields)


def released(switch: KillSwitch, *, by: str, reason: str | None) -> None:
    fields = switch_fields(switch)
    fields.update(
        engaged_by=fields.pop("author"),
        engaged_reason=fields.pop("reason"),
        author=by,
        reason=reason,
    )
    log.info(KILL_SWITCH_RELEASED, **fields)


def expired(switch: KillSwitch) -> None:
    log.info(KILL_SWITCH_EXPIRED, **switch_fields(switch))
