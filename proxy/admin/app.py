"""The admin listener (docs/contract.md#admin): its own port, next to the proxy, sharing the
proxy's runtime.

    GET  /healthz /readyz /metrics                   open (probes and Prometheus)
    GET  /v1/status                                  overview: store kind/mode, switches, counts
    GET  /v1/kill-switches                           list (configured and stored)
    POST /v1/kill-switches                           engage {scope, reason, author?, ttl?}
    DELETE /v1/kill-switches/{scope}                 release {author?, reason?}
    GET  /v1/suppressions?account=&to=               one recipient's learned suppressions
    DELETE /v1/suppressions?account=&to=[&field=]    clear them (all, or one field)
    GET  /v1/breakers?account=&to=                   the recipient's breaker and window counts
    DELETE /v1/breakers?account=&to=                 reset it
    GET  /v1/records?message_sid=SM…                 a send's dedup record
    GET  /v1/records?account=AC…&key=…               … or by Idempotency-Key
    GET  /v1/records?id=r….k…                         … or by its record id
    GET  /v1/records?state=unknown[&limit=]          the UNKNOWN ledger (oldest first)
    POST /v1/records/{id}/resolve                    {outcome: sent, message_sid, reason} |
                                                     {outcome: not-sent, reason} (+ author?)

Everything under /v1/ needs `Authorization: Bearer <SENDGUARD_ADMIN_TOKEN>` (constant-time
compare); with no token configured, every /v1/ call is refused (a 401's `error.code` says
which: admin-token-not-configured, -missing or -invalid). Parameters come from the query
string or a JSON body; errors are `{"error": {"status", "message"}}` with a 4xx, never a trace.
Every change is audit-logged with who (author), what and why (reason).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.admin import views
from proxy.admin.console import add_console_routes
from proxy.admin.params import AdminInputError, Params, message_sid, record_ref
from proxy.guard.dedup import RecordState
from proxy.guard.facts import normalise_recipient, recipient_tag
from proxy.killswitch import KillSwitch, Scope
from proxy.logs import get_logger, mask_phone, mask_phones_in
from proxy.server.app import METRICS, RUNTIME, SETTINGS, Runtime
from proxy.server.gate import StoreMode
from proxy.settings import Settings
from proxy.store.send_store import SendRef, StoreError, key_lookup_id

log = get_logger("sendguard.admin")

PROXY_APP: web.AppKey[web.Application] = web.AppKey("proxy_app", web.Application)
SHUTTING_DOWN: web.AppKey[Callable[[], bool]] = web.AppKey("shutting_down")

SUPPRESSIONS_CLEARED = "suppressions_cleared"
BREAKER_RESET = "breaker_reset"
RECORD_RESOLVED = "record_resolved"  # an operator settled an UNKNOWN (docs/contract.md#reconcile)

LEDGER_DEFAULT_LIMIT = 100
LEDGER_MAX_LIMIT = 500
RESOLVE_OUTCOMES = {"sent": "resolved-sent", "not-sent": "resolved-not-sent"}


def create_admin_app(
    proxy_app: web.Application, shutting_down: Callable[[], bool] = lambda: False
) -> web.Application:
    app = web.Application(middlewares=[_errors, _bearer], client_max_size=64 * 1024)
    app[PROXY_APP] = proxy_app
    app[SHUTTING_DOWN] = shutting_down
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/kill-switches", list_kill_switches)
    app.router.add_post("/v1/kill-switches", engage_kill_switch)
    app.router.add_delete("/v1/kill-switches/{scope}", release_kill_switch)
    app.router.add_get("/v1/suppressions", list_suppressions)
    app.router.add_delete("/v1/suppressions", clear_suppressions)
    app.router.add_get("/v1/breakers", show_breaker)
    app.router.add_delete("/v1/breakers", reset_breaker)
    app.router.add_get("/v1/records", show_record)
    app.router.add_post("/v1/records/{id}/resolve", resolve_record)
    add_console_routes(app, proxy_app)  # /ui/ and /v1/decisions (proxy/admin/console.py)
    return app


# -- middlewares ------------------------------------------------------------------------------


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"status": status, "message": message}}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except AdminInputError as exc:
        return _error(400, str(exc))
    except StoreError:
        return _error(503, "the store is unavailable; try again")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error(exc.status, exc.reason)
        raise
    except Exception as exc:  # a bug: say so, log the type, never echo details
        log.exception("admin_error", path=request.path, error=type(exc).__name__)
        return _error(500, "internal error")


@web.middleware
async def _bearer(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/v1/"):
        token = _runtime_settings(request).admin_token
        presented = request.headers.get("Authorization", "")
        scheme, _, credential = presented.partition(" ")
        expected = token.get_secret_value().encode() if token is not None else b""
        ok = (
            token is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(credential.strip().encode(), expected)
        )
        if not ok:
            return _unauthorized(configured=token is not None, presented=bool(presented.strip()))
    return await handler(request)


# Which 401 it is, in the body's `error.code`, so that the CLI (or anyone with curl) can say
# what to do: start the server with a token, send one, or send the right one.
TOKEN_NOT_CONFIGURED = "admin-token-not-configured"  # noqa: S105 -- codes, not secrets
TOKEN_MISSING = "admin-token-missing"  # noqa: S105
TOKEN_INVALID = "admin-token-invalid"  # noqa: S105


def _unauthorized(*, configured: bool, presented: bool) -> web.Response:
    if not configured:
        code = TOKEN_NOT_CONFIGURED
        message = (
            "this sendguard has no admin token, so every /v1/ call is refused; "
            "start it with SENDGUARD_ADMIN_TOKEN=<a secret>"
        )
    elif not presented:
        code = TOKEN_MISSING
        message = "an admin bearer token is required: Authorization: Bearer <SENDGUARD_ADMIN_TOKEN>"
    else:
        code = TOKEN_INVALID
        message = "the bearer token does not match this sendguard's SENDGUARD_ADMIN_TOKEN"
    body = {"error": {"status": 401, "code": code, "message": message}}
    response = web.json_response(body, status=401)
    response.headers["WWW-Authenticate"] = 'Bearer realm="sendguard-admin"'
    return response


def _runtime(request: web.Request) -> Runtime:
    proxy_app = request.app[PROXY_APP]
    if RUNTIME not in proxy_app:
        raise web.HTTPServiceUnavailable(reason="sendguard is starting")
    return proxy_app[RUNTIME]


def _runtime_settings(request: web.Request) -> Settings:
    return request.app[PROXY_APP][SETTINGS]


# -- probes and metrics -----------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def store_kind(settings: Settings) -> str:
    """Which store guards sends when all is well: `embedded` (no redis_url: a private one,
    single instance), `cluster`, `sentinel` (a redis+sentinel:// URL) or `standalone`.
    `store_mode` says whether that store is in use now (`shared`) or which outage policy is."""
    if settings.redis_url is None:
        return "embedded"
    if settings.redis_cluster:
        return "cluster"
    if settings.redis_url.split("://", 1)[0].lower().endswith("+sentinel"):
        return "sentinel"
    return "standalone"


async def readyz(request: web.Request) -> web.Response:
    """Ready = takes traffic: started and not shutting down. A store outage leaves a sidecar
    ready (passthrough still flows and guarded sends get the outage policy's answer), unless
    `ready_requires_store` is set (standalone deployments: route to a healthier replica)."""
    proxy_app = request.app[PROXY_APP]
    started = RUNTIME in proxy_app
    runtime = proxy_app[RUNTIME] if started else None
    mode = runtime.failover.mode if runtime else None
    store_up = runtime.prober.health.reachable if runtime else None
    stopping = request.app[SHUTTING_DOWN]()
    requires_store = proxy_app[SETTINGS].ready_requires_store
    ready = started and not stopping and (store_up or not requires_store)
    body = {
        "ready": bool(ready),
        "store_kind": store_kind(proxy_app[SETTINGS]),
        "store_mode": mode.value if mode else None,
        "store_up": store_up,
        "degraded": bool(mode and mode is not StoreMode.SHARED),
        "shutting_down": stopping,
    }
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    proxy_app = request.app[PROXY_APP]
    registry = proxy_app[METRICS]
    if RUNTIME in proxy_app:
        state = proxy_app[RUNTIME].board.state(time.time())
        for kind, count in state.engaged.items():
            registry.kill_switch_engaged.labels(kind.value).set(count)
    response = web.Response(body=generate_latest(registry.registry))
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


async def status(request: web.Request) -> web.Response:
    runtime = _runtime(request)
    now = time.time()
    board = runtime.board.state(now)
    registry = request.app[PROXY_APP][METRICS].registry
    requests: dict[str, float] = {}
    for family in registry.collect():
        if family.name == "sendguard_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    requests[sample.labels["decision"]] = sample.value
    return web.json_response(
        {
            "store_kind": store_kind(_runtime_settings(request)),
            "store_mode": runtime.failover.mode.value,
            "store_up": runtime.prober.health.reachable,
            "pending_outcome_writes": len(runtime.journal),
            "degraded_since": views.iso_ms((runtime.failover.degraded_since or 0) * 1000),
            "kill_switches": [
                views.kill_switch_view(s, now) for s in runtime.board.switches if s.active(now)
            ],
            "kill_switch_sync": {"synced": board.synced, "pushed": board.pushed},
            "requests_by_decision": requests,
            "tee": runtime.tee is not None,
        }
    )


# -- kill switches ----------------------------------------------------------------------------


async def list_kill_switches(request: web.Request) -> web.Response:
    runtime = _runtime(request)
    synced = await runtime.board.refresh()
    now = time.time()
    switches = [views.kill_switch_view(s, now) for s in runtime.board.switches if s.active(now)]
    return web.json_response({"kill_switches": switches, "synced": synced})


async def engage_kill_switch(request: web.Request) -> web.Response:
    runtime = _runtime(request)
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
    runtime = _runtime(request)
    params = await Params.of(request)
    try:
        scope = Scope.parse(request.match_info["scope"])
    except ValueError as exc:
        raise AdminInputError(str(exc)) from None
    if runtime.board.configured(scope):
        return _error(409, "this switch comes from SENDGUARD_KILL_SWITCH; change the config")
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
    runtime = _runtime(request)
    tag, to = _recipient(await Params.of(request))
    snapshot = await runtime.store.recipient_snapshot(tag)
    now_ms = int(time.time() * 1000)
    return web.json_response(
        {"to": mask_phone(to), "suppressions": views.suppressions_view(snapshot, now_ms)}
    )


async def clear_suppressions(request: web.Request) -> web.Response:
    runtime = _runtime(request)
    params = await Params.of(request)
    tag, to = _recipient(params)
    field = params.text("field")
    cleared = await runtime.store.clear_suppressions(tag, [field] if field else [])
    if field and not cleared:
        # `list` masks the sender in `field`: the exact field needs the sender in full.
        return _error(404, "no such suppression field (give it in full: from:<sender>, to, msg:…)")
    author = params.text("author") or "admin-api"
    log.warning(SUPPRESSIONS_CLEARED, account=params.account(), to=mask_phone(to),
                field=field or "all", cleared=cleared, author=author,
                reason=params.text("reason"))  # fmt: skip
    return web.json_response({"to": mask_phone(to), "cleared": cleared})


async def show_breaker(request: web.Request) -> web.Response:
    runtime = _runtime(request)
    tag, to = _recipient(await Params.of(request))
    snapshot = await runtime.store.recipient_snapshot(tag)
    policy = runtime.failover.shared.policy.protection
    view = views.breaker_view(snapshot, policy, int(time.time() * 1000))
    return web.json_response({"to": mask_phone(to), **view})


async def reset_breaker(request: web.Request) -> web.Response:
    runtime = _runtime(request)
    params = await Params.of(request)
    tag, to = _recipient(params)
    reset = await runtime.store.reset_breaker(tag)
    author = params.text("author") or "admin-api"
    log.warning(BREAKER_RESET, account=params.account(), to=mask_phone(to), was_set=reset,
                author=author, reason=params.text("reason"))  # fmt: skip
    return web.json_response({"to": mask_phone(to), "reset": reset})


# -- dedup records ----------------------------------------------------------------------------


async def show_record(request: web.Request) -> web.Response:
    runtime = _runtime(request)
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
        return _error(404, "no record (never sent through sendguard, or expired)")
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
    runtime = _runtime(request)
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
        return _error(404, "no UNKNOWN record with this id (resolved already, or expired)")
    meta = record.meta or {}
    if sid is not None and meta.get("route") == "calls":
        raise AdminInputError("a call has no Message SID: resolve it not-sent, or leave it")
    if sid is not None:
        settled = await runtime.store.note_sid(ref, sid, reason)
    else:
        settled = await runtime.store.release_unknown(ref)
    if not settled:  # settled between the read and the write (a retry, a callback)
        return _error(404, "no UNKNOWN record with this id (resolved already, or expired)")
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
