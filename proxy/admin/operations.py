"""The admin API's operations (docs/contract.md#admin): kill switches, a recipient's
suppressions and breaker, dedup records and the UNKNOWN ledger. Every change is audit-logged
with who (author), what and why (reason). The routes and the probes: app.py.
"""

from __future__ import annotations

import time

from aiohttp import web

from proxy.admin import views
from proxy.admin.access import PROXY_APP, error_response, runtime_of
from proxy.admin.params import AdminInputError, Params, message_sid, record_ref
from proxy.guard.dedup import RecordState
from proxy.guard.facts import normalise_recipient, recipient_tag
from proxy.killswitch import KillSwitch, Scope
from proxy.logs import get_logger, mask_phone, mask_phones_in
from proxy.server.app import METRICS, Runtime
from proxy.store.send_store import SendRef, key_lookup_id

log = get_logger("sendguard.admin")

SUPPRESSIONS_CLEARED = "suppressions_cleared"
BREAKER_RESET = "breaker_reset"
RECORD_RESOLVED = "record_resolved"  # an operator settled an UNKNOWN (docs/contract.md#reconcile)

LEDGER_DEFAULT_LIMIT = 100
LEDGER_MAX_LIMIT = 500
RESOLVE_OUTCOMES = {"sent": "resolved-sent", "not-sent": "resolved-not-sent"}

# -- kill switches ----------------------------------------------------------------------------


async def list_kill_switches(request: web.Request) -> web.Response:
    runtime = runtime_of(request)
    synced = await runtime.board.refresh()
    now = time.time()
    switches = [views.kill_switch_view(s, now) for s in runtime.board.switches if s.active(now)]
    return web.json_response({"kill_switches": switches, "synced": synced})


async def engage_kill_switch(request: web.Request) -> web.Response:
    runtime = runtime_of(request)
    params = await Params.of(request)
    now = time.time()
    try:
        switch = KillSwitch.engage(
            params.required("scope"),
            reason=params.required("reason"),
            author=params.text("author") or "admin-api",
            now=now,
            ttl=params.duration("ttl"),
        )
    except ValueError as exc:
        raise AdminInputError(str(exc)) from None
    result = await runtime.board.engage(switch)
    body = {
        "kill_switch": views.kill_switch_view(result.switch, now),
        "replaced": views.kill_switch_view(result.replaced, now) if result.replaced else None,
    }
    return web.json_response(body, status=201)


async def release_kill_switch(request: web.Request) -> web.Response:
    runtime = runtime_of(request)
    params = await Params.of(request)
    try:
        scope = Scope.parse(request.match_info["scope"])
    except ValueError as exc:
        raise AdminInputError(str(exc)) from None
    if runtime.board.configured(scope):
        return error_response(
            409, "this switch comes from SENDGUARD_KILL_SWITCH; change the config"
        )
    result = await runtime.board.release(
        scope, author=params.text("author") or "admin-api", reason=params.text("reason")
    )
    return web.json_response({"scope": str(scope), "released": result.was_engaged})


# -- recipients: suppressions and breakers ----------------------------------------------------


def _recipient(params: Params) -> tuple[str, str]:
    account = params.account()
    to = normalise_recipient(params.required("to"))
    return recipient_tag(account, to), to


async def list_suppressions(request: web.Request) -> web.Response:
    runtime = runtime_of(request)
    tag, to = _recipient(await Params.of(request))
    snapshot = await runtime.store.recipient_snapshot(tag)
    now_ms = int(time.time() * 1000)
    return web.json_response(
        {"to": mask_phone(to), "suppressions": views.suppressions_view(snapshot, now_ms)}
    )


async def clear_suppressions(request: web.Request) -> web.Response:
    runtime = runtime_of(request)
    params = await Params.of(request)
    tag, to = _recipient(params)
    field = params.text("field")
    cleared = await runtime.store.clear_suppressions(tag, [field] if field else [])
    if field and not cleared:
        # `list` masks the sender in `field`: the exact field needs the sender in full.
        return error_response(
            404, "no such suppression field (give it in full: from:<sender>, to, msg:…)"
        )
    author = params.text("author") or "admin-api"
    log.warning(SUPPRESSIONS_CLEARED, account=params.account(), to=mask_phone(to),
                field=field or "all", cleared=cleared, author=author,
                reason=params.text("reason"))  # fmt: skip
    return web.json_response({"to": mask_phone(to), "cleared": cleared})


async def show_breaker(request: web.Request) -> web.Response:
    runtime = runtime_of(request)
    tag, to = _recipient(await Params.of(request))
    snapshot = await runtime.store.recipient_snapshot(tag)
    policy = runtime.failover.shared.policy.protection
    view = views.breaker_view(snapshot, policy, int(time.time() * 1000))
    return web.json_response({"to": mask_phone(to), **view})


async def reset_breaker(request: web.Request) -> web.Response:
    runtime = runtime_of(request)
    params = await Params.of(request)
    tag, to = _recipient(params)
    reset = await runtime.store.reset_breaker(tag)
    author = params.text("author") or "admin-api"
    log.warning(BREAKER_RESET, account=params.account(), to=mask_phone(to), was_set=reset,
                author=author, reason=params.text("reason"))  # fmt: skip
    return web.json_response({"to": mask_phone(to), "reset": reset})


# -- dedup records ----------------------------------------------------------------------------


async def show_record(request: web.Request) -> web.Response:
    runtime = runtime_of(request)
    params = await Params.of(request)
    if params.text("state") is not None:
        return await _unknown_ledger(runtime, params)
    sid = params.text("message_sid")
    record_id = params.text("id")
    ref: SendRef | None
    if record_id:
        ref = record_ref(record_id)
    elif sid:
        if not (sid.startswith(("SM", "MM", "CA")) and len(sid) == 34 and sid.isalnum()):
            raise AdminInputError("message_sid must be a Message (SM…/MM…) or Call (CA…) SID")
        ref = await runtime.store.find_ref(message_sid=sid)
    else:
        key = params.required(
            "key", hint="give message_sid, id, or account and key; or state=unknown"
        )
        ref = await runtime.store.find_ref(key_lookup_id=key_lookup_id(params.account(), key))
    record = await runtime.store.get(ref) if isinstance(ref, SendRef) else None
    if ref is None or record is None:
        return error_response(404, "no record (never sent through sendguard, or expired)")
    return web.json_response({"record": views.record_view(record, ref)})


async def _unknown_ledger(runtime: Runtime, params: Params) -> web.Response:
    """The UNKNOWN sends an operator may settle (docs/contract.md#reconcile), oldest first."""
    if params.text("state") != RecordState.UNKNOWN.value:
        raise AdminInputError("'state' lists UNKNOWN sends only: state=unknown")
    for other in ("message_sid", "key", "id"):
        if params.text(other) is not None:
            raise AdminInputError(f"give state=unknown or {other!r}, not both")
    limit = _limit(params)
    entries = await runtime.store.unknown_ledger(limit=limit + 1)
    return web.json_response(
        {
            "records": [views.ledger_entry_view(ref, record) for ref, record in entries[:limit]],
            "truncated": len(entries) > limit,
        }
    )


def _limit(params: Params) -> int:
    raw = params.text("limit")
    if raw is None:
        return LEDGER_DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= LEDGER_MAX_LIMIT:
        raise AdminInputError(f"'limit' must be a whole number from 1 to {LEDGER_MAX_LIMIT}")
    return int(raw)


async def resolve_record(request: web.Request) -> web.Response:
    """An operator's word on an UNKNOWN send: `sent` (with the Message SID Twilio shows) makes
    the next retry fetch that message and replay it; `not-sent` releases the record, so the
    next retry sends. Audit-logged and counted."""
    runtime = runtime_of(request)
    ref = record_ref(request.match_info["id"])
    params = await Params.of(request)
    outcome = params.required("outcome", hint="sent or not-sent")
    if outcome not in RESOLVE_OUTCOMES:
        raise AdminInputError("'outcome' must be sent or not-sent")
    # Free text may hold a customer's number: it reaches the log and the store masked.
    reason = mask_phones_in(params.required("reason", hint="what you checked, a ticket"))
    author = mask_phones_in(params.text("author") or "admin-api")
    raw_sid = params.text("message_sid")
    if outcome == "sent":
        if raw_sid is None:
            raise AdminInputError("'message_sid' is required with outcome sent (SM…)")
        sid: str | None = message_sid(raw_sid)
    elif raw_sid is not None:
        raise AdminInputError("'message_sid' goes with outcome sent only")
    else:
        sid = None
    record = await runtime.store.get(ref)
    if record is None or record.state is not RecordState.UNKNOWN:
        return error_response(404, "no UNKNOWN record with this id (resolved already, or expired)")
    meta = record.meta or {}
    if sid is not None and meta.get("route") == "calls":
        raise AdminInputError("a call has no Message SID: resolve it not-sent, or leave it")
    if sid is not None:
        settled = await runtime.store.note_sid(ref, sid, reason)
    else:
        settled = await runtime.store.release_unknown(ref)
    if not settled:  # settled between the read and the write (a retry, a callback)
        return error_response(404, "no UNKNOWN record with this id (resolved already, or expired)")
    label = RESOLVE_OUTCOMES[outcome]
    request.app[PROXY_APP][METRICS].reconciliations.labels(label).inc()
    entry = views.ledger_entry_view(ref, record)
    log.warning(RECORD_RESOLVED, outcome=label, record_id=entry["id"], account=entry["account"],
                route=entry["route"], to=entry["to"], claimed_at=entry["claimed_at"],
                unknown_reason=entry["reason"], message_sid=sid,
                previous_sid=record.resolved_sid or None, author=author,
                reason=reason)  # fmt: skip
    next_retry = (
        f"the next retry fetches {sid} from Twilio and replays it"
        if sid is not None
        else "released: the next retry sends"
    )
    return web.json_response(
        {"record": {**entry, "resolved_sid": sid}, "outcome": outcome, "next_retry": next_retry}
    )
