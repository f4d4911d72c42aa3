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
from proxy.admin.access import PROXY_APP, SHUTTING_DOWN, error_response, runtime_of, settings_of
from proxy.admin.console import add_console_routes
from proxy.admin.operations import (
    clear_suppressions,
    engage_kill_switch,
    list_kill_switches,
    list_suppressions,
    release_kill_switch,
    reset_breaker,
    resolve_record,
    show_breaker,
    show_record,
)
from proxy.admin.params import AdminInputError
from proxy.logs import get_logger
from proxy.server.app import METRICS, RUNTIME, SETTINGS
from proxy.server.gate import StoreMode
from proxy.settings import Settings
from proxy.store.send_store import StoreError

log = get_logger("sendguard.admin")


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


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except AdminInputError as exc:
        return error_response(400, str(exc))
    except StoreError:
        return error_response(503, "the store is unavailable; try again")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error_response(exc.status, exc.reason)
        raise
    except Exception as exc:  # a bug: say so, log the type, never echo details
        log.exception("admin_error", path=request.path, error=type(exc).__name__)
        return error_response(500, "internal error")


@web.middleware
async def _bearer(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/v1/"):
        token = settings_of(request).admin_token
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
    runtime = runtime_of(request)
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
            "store_kind": store_kind(settings_of(request)),
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
