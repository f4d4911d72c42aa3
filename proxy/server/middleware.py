"""The outer layer of every proxied request: request id, refusals that need no routing,
error rendering (Twilio-shaped, never a traceback) and the one `request_finished` log line.

For every error the middleware is the one writer of the request's decision and reason (taken
from the exception); an answered request's are written once by `app.handle` (context.Answer)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.decision import Decision
from proxy.errors import BodyTooLarge, InternalError, SendguardError, UpstreamRefused
from proxy.logs import REQUEST_FINISHED, get_logger, mask_phones_in
from proxy.server.context import CONTEXT, RequestContext, request_id_from, stamp
from proxy.server.headers import REQUEST_ID_HEADER
from proxy.server.recent import RECENT
from proxy.server.target import TARGET, canonical_target
from proxy.tee.urls import CALLBACK_PATH_PREFIX

log = get_logger("sendguard.proxy")
# Set by the app: called once per answered request with the decision (metrics).
REQUEST_COUNTER: web.AppKey[Callable[[Decision], None]] = web.AppKey("request_counter")


def render_error(error: SendguardError) -> web.Response:
    response = web.Response(
        status=error.status,
        body=error.body_bytes(),
        content_type="application/json",
        headers=error.headers(),
    )
    return response


def refuse_unroutable(request: web.Request) -> None:
    """Refusals before any routing, and the request's one canonical target
    (docs/contract.md#canonical-target): every handler routes and forwards `request[TARGET]`,
    never `request.path` or `raw_path`."""
    if request.method == "CONNECT":
        raise UpstreamRefused("CONNECT is not supported: point the client's base URL here")
    if not request.raw_path.startswith("/"):
        raise UpstreamRefused("absolute-form request targets are not accepted (not a relay)")
    request[TARGET] = canonical_target(request.raw_path)


@web.middleware
async def proxy_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = RequestContext(request_id_from(request.headers.get(REQUEST_ID_HEADER)))
    request[CONTEXT] = ctx
    response: web.StreamResponse
    try:
        refuse_unroutable(request)
        response = await handler(request)
    except SendguardError as error:
        ctx.decide(error.decision, error.reason)
        response = render_error(error)
    except web.HTTPRequestEntityTooLarge:
        too_large = BodyTooLarge()
        ctx.decide(too_large.decision)
        response = render_error(too_large)
    except Exception as exc:  # a bug: answer Twilio-shaped, log the type, never echo details
        log.exception("unhandled_error", request_id=ctx.request_id, error=type(exc).__name__)
        internal = InternalError()
        ctx.decide(internal.decision, type(exc).__name__)
        response = render_error(internal)
    if not response.prepared:
        stamp(response, ctx.decision, ctx.request_id)
    count = request.app.get(REQUEST_COUNTER)
    if count is not None:
        count(ctx.decision)
    recent = request.app.get(RECENT)
    if recent is not None:  # the operator console's ring buffer (proxy/server/recent.py)
        recent.note(
            ctx.request_id, ctx.decision.value, ctx.reason, response.status, request.method,
            ctx.fields,
        )  # fmt: skip
    _log_finished(request, ctx, response.status)
    return response


def _log_finished(request: web.Request, ctx: RequestContext, status: int) -> None:
    level = "info" if status < 500 else "warning"
    if level == "info" and not log.is_enabled_for(logging.INFO):
        return  # at `warning`, skip building a line nobody prints (hot path)
    duration_ms = round((time.perf_counter() - ctx.started) * 1000, 2)
    getattr(log, level)(
        REQUEST_FINISHED,
        request_id=ctx.request_id,
        method=request.method,
        path=_loggable_path(request.path),
        decision=ctx.decision.value,
        reason=ctx.reason or ctx.decision.value,
        status=status,
        upstream_status=ctx.upstream_status,
        duration_ms=duration_ms,
        upstream_ms=ctx.upstream_ms,
        **ctx.fields,
    )


def _loggable_path(path: str) -> str:
    # A tee callback's token encodes the app's own URL, whose query may hold the app's secrets.
    if path.startswith(CALLBACK_PATH_PREFIX):
        return CALLBACK_PATH_PREFIX + "…"
    # SIDs are fine to log, but Lookups-style paths carry phone numbers: mask long digit runs.
    return mask_phones_in(path[:200])
