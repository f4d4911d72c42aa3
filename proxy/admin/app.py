"""The admin listener (SPEC §5): its own port, next to the proxy, sharing the proxy's runtime.

    GET  /healthz /readyz /metrics                   open (probes and Prometheus)
    GET  /v1/status                                  overview: store mode, switches, counters
    GET  /v1/kill-switches                           list (configured and stored)
    POST /v1/kill-switches                           engage {scope, reason, author?, ttl?}
    DELETE /v1/kill-switches/{scope}                 release {author?, reason?}
    GET  /v1/suppressions?account=&to=               one recipient's learned suppressions
    DELETE /v1/suppressions?account=&to=[&field=]    clear them (all, or one field)
    GET  /v1/breakers?account=&to=                   the recipient's breaker and window counts
    DELETE /v1/breakers?account=&to=                 reset it
    GET  /v1/records?message_sid=SM…                 a send's dedup record
    GET  /v1/records?account=AC…&key=…               … or by Idempotency-Key

Everything under /v1/ needs `Authorization: Bearer <SENDGUARD_ADMIN_TOKEN>` (constant-time
compare); with no token configured, every /v1/ call is refused. Parameters come from the query
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
from proxy.admin.params import AdminInputError, Params
from proxy.guard.facts import normalise_recipient, recipient_tag
from proxy.killswitch import KillSwitch, Scope
from proxy.logs import get_logger, mask_phone
from proxy.server.app import METRICS, RUNTIME, SETTINGS, Runtime
from proxy.server.gate import StoreMode
from proxy.settings import Settings
from proxy.store.send_store import SendRef, StoreError, key_lookup_id

log = get_logger("sendguard.admin")

PROXY_APP: web.AppKey[web.Application] = web.AppKey("proxy_app", web.Application)
SHUTTING_DOWN: web.AppKey[Callable[[], bool]] = web.AppKey("shutting_down")

SUPPRESSIONS_CLEARED = "suppressions_cleared"
BREAKER_RESET = "breaker_reset"


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
            response = _error(401, "a valid admin bearer token is required")
            response.headers["WWW-Authenticate"] = 'Bearer realm="sendguard-admin"'
            return response
    return await handler(request)


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
    sid = params.text("message_sid")
    if sid:
        if not (sid.startswith(("SM", "MM", "CA")) and len(sid) == 34 and sid.isalnum()):
            raise AdminInputError("message_sid must be a Message (SM…/MM…) or Call (CA…) SID")
        ref = await runtime.store.find_ref(message_sid=sid)
    else:
        key = params.required("key", hint="give message_sid, or account and key")
        ref = await runtime.store.find_ref(key_lookup_id=key_lookup_id(params.account(), key))
    record = await runtime.store.get(ref) if isinstance(ref, SendRef) else None
    if record is None:
        return _error(404, "no record (never sent through sendguard, or expired)")
    return web.json_response({"record": views.record_view(record)})
