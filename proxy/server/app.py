"""App wiring: `create_app(settings)` builds the proxy app; `serve(settings)` runs it.

Resources are set up in `cleanup_ctx` order (sandbox upstream -> store -> client and guard)
and torn down in reverse, each only if it was set up.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from proxy.decision import Decision
from proxy.errors import BodyTooLarge, TeeDisabled
from proxy.guard.routes import RouteSpec, RouteTable
from proxy.killswitch import KillSwitchBoard, KillSwitchStore
from proxy.logs import get_logger
from proxy.metrics import Metrics
from proxy.server.context import CONTEXT
from proxy.server.forward import forward_passthrough
from proxy.server.gate import SendGate, StoreFailover, StoreMode
from proxy.server.guard_policy import LEASE_MARGIN_SECONDS, guard_policy
from proxy.server.guarded import CallbackRouting, SendGuard
from proxy.server.learning import SuppressionLearner
from proxy.server.middleware import REQUEST_COUNTER, proxy_middleware
from proxy.server.prober import StoreHealth, StoreProber
from proxy.server.recent import RECENT, RecentDecisions
from proxy.server.reconcile import ReconcilePolicy, Reconciler
from proxy.server.settlement import SettlementJournal
from proxy.server.store_clients import store_client
from proxy.server.target import target_of
from proxy.store.callback_store import RedisCallbackDeduper, shared_tee_secret
from proxy.store.embedded import EmbeddedStore
from proxy.store.lean_path import lean_client_like
from proxy.store.send_store import RedisClient, SendRef, SendStore
from proxy.tee import CALLBACK_PATH_PREFIX, AuthTokenBook, CallbackTee, CallbackUrlCodec
from proxy.tee.handler import UnknownResolver
from proxy.tee.urls import CallbackBinding
from proxy.upstream.client import UpstreamClient
from proxy.upstream.hosts import UPSTREAM_HOST_HEADER, Upstream, select_upstream

if TYPE_CHECKING:
    from proxy.settings import Settings

__all__ = ["LEASE_MARGIN_SECONDS", "create_app", "guard_policy", "store_client"]

log = get_logger("sendguard")


# The tee forwards a callback to the app with a few quick tries: Twilio itself retries a failed
# callback later (502 here), so there is no point holding its connection for long.
CALLBACK_FORWARD_ATTEMPTS = 3
CALLBACK_FORWARD_TIMEOUT_SECONDS = 4.0
CALLBACK_DEDUP_TTL_SECONDS = 24 * 3600.0
# Shutdown: how long pending outcome writes may still take once the proxy has drained.
JOURNAL_FLUSH_SECONDS = 5.0


@dataclass
class Runtime:
    upstream: Upstream
    allowed_hosts: tuple[str, ...]
    sandboxed: bool  # `--upstream sandbox`: every request goes to the simulator
    max_body: int
    routes: RouteTable
    client: UpstreamClient
    metrics: Metrics
    store: SendStore
    gate: SendGate
    board: KillSwitchBoard
    failover: StoreFailover
    prober: StoreProber
    journal: SettlementJournal
    learner: SuppressionLearner
    tee: CallbackTee | None


SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
UPSTREAM_URL: web.AppKey[str] = web.AppKey("upstream_url", str)
STORE_URL: web.AppKey[str] = web.AppKey("store_url", str)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
REDIS: web.AppKey[RedisClient] = web.AppKey("redis")
RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)
EMBEDDED: web.AppKey[EmbeddedStore] = web.AppKey("embedded_store", EmbeddedStore)


async def handle(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    upstream = select_upstream(
        request.headers.get(UPSTREAM_HOST_HEADER),
        runtime.upstream,
        runtime.allowed_hosts,
        pinned=runtime.sandboxed,
    )
    body = await read_body(request, runtime.max_body)
    # One canonical target (docs/contract.md#canonical-target): the path matched here is the
    # path forwarded.
    path = target_of(request).path
    match = runtime.routes.match(request.method, path)
    ctx = request[CONTEXT]
    if match is not None:
        answer = await runtime.gate.handle(request, body, upstream, match)
        # The one place an answered request's decision is written (errors: the middleware).
        ctx.decide(answer.decision, answer.reason)
        return answer.response
    learner = runtime.learner

    def watch(status: int) -> int:
        # Keep fetched/listed Message bodies: their error codes feed suppression.
        return runtime.max_body if learner.watches(request.method, path, status) else 0

    answer, kept = await forward_passthrough(request, body, upstream, runtime.client, watch)
    ctx.decide(answer.decision, answer.reason)
    response = answer.response
    upstream_ms = ctx.upstream_ms
    if upstream_ms is not None:
        runtime.metrics.upstream_latency.labels("passthrough").observe(upstream_ms / 1000)
    if kept is not None:
        learner.learn_in_background(kept, response.headers.get("Content-Encoding", ""))
    return response


async def handle_callback(request: web.Request) -> web.StreamResponse:
    """Twilio's status callbacks for sends whose StatusCallback the tee rewrote. The tee raises
    its refusals (`SendguardError`): the middleware renders them and records their decision, as
    for any request; an answer it returns is a callback taken."""
    tee = request.app[RUNTIME].tee
    if tee is None:
        raise TeeDisabled(reason="tee-off")
    response = await tee.handle(request)
    request[CONTEXT].decide(Decision.CALLBACK, "status-callback")
    return response


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"request body exceeds {limit} bytes")
    try:
        return await request.read()  # client_max_size bounds chunked bodies too
    except web.HTTPRequestEntityTooLarge as exc:
        raise BodyTooLarge(f"request body exceeds {limit} bytes") from exc


async def _sandbox_upstream(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if settings.upstream != "sandbox":
        app[UPSTREAM_URL] = settings.upstream
        yield
        return
    from proxy.sandbox import start_sandbox
    from proxy.sandbox.state import SandboxState

    # Demo state: status callbacks on, so the tee and reconciliation can be tried offline.
    runner, url, _state = await start_sandbox(state=SandboxState.for_demo())
    app[UPSTREAM_URL] = url
    log.info("sandbox_upstream_started", url=url)
    yield
    await runner.cleanup()


async def _store(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    embedded: EmbeddedStore | None = None
    url = settings.redis_url
    supervisor: asyncio.Task[None] | None = None
    if url is None:
        embedded = EmbeddedStore(settings.data_dir)
        url = await embedded.start()
        log.info("embedded_store_started", persistent=settings.data_dir is not None)
        metrics = app[METRICS]

        def restarted(exit_code: int) -> None:
            metrics.embedded_store_restarts.inc()
            log.error("embedded_store_died", exit_code=exit_code, restarting=True)

        supervisor = asyncio.get_running_loop().create_task(embedded.supervise(restarted))
        app[EMBEDDED] = embedded
    client = store_client(url, cluster=settings.redis_cluster)
    app[STORE_URL] = url
    app[REDIS] = client
    try:
        yield
    finally:
        await client.aclose()
        if embedded is not None:
            await embedded.stop()
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor


async def _guard(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    client = UpstreamClient(
        connect_timeout=settings.upstream_connect_timeout,
        read_timeout=settings.upstream_read_timeout,
        pool_size=settings.upstream_pool_size,
        max_body=settings.max_body_bytes,
    )
    await client.start()
    # The hot path on the lean client (standalone, embedded); cluster and sentinel: redis-py.
    store = SendStore(app[REDIS], lean_client_like(app[REDIS]))
    policy = guard_policy(settings)
    metrics = app[METRICS]
    learner = SuppressionLearner(
        store, policy.suppression_rules, settings.suppression_mode, metrics
    )
    # One journal for every store mode: a duplicate finds a pending outcome whichever store
    # guards it now (settlement.py).
    journal = SettlementJournal(metrics)
    reconciler = Reconciler(
        client,
        metrics,
        ReconcilePolicy(
            resend_after=settings.unknown_resend_after,
            lease_ms=policy.lease_ms,
            ttl_ms=int(settings.idempotency_ttl * 1000),
        ),
    )
    routing: CallbackRouting | None = None
    tee: CallbackTee | None = None
    callback_session: aiohttp.ClientSession | None = None
    if settings.public_url is not None:
        routing = CallbackRouting(
            codec=CallbackUrlCodec(settings.public_url, await _callback_secret(app)),
            tokens=AuthTokenBook(
                {sid: tok.get_secret_value() for sid, tok in settings.twilio_auth_tokens.items()}
            ),
        )
        # The app's callback URL is the app's own choice: plain client, no proxy env, no cookies.
        callback_session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        tee = CallbackTee(
            codec=routing.codec,
            tokens=routing.tokens,
            learner=learner,
            deduper=RedisCallbackDeduper(app[REDIS], CALLBACK_DEDUP_TTL_SECONDS),
            session=callback_session,
            attempts=CALLBACK_FORWARD_ATTEMPTS,
            timeout=CALLBACK_FORWARD_TIMEOUT_SECONDS,
            resolver=_callback_resolver(reconciler, store, Upstream.from_url(app[UPSTREAM_URL])),
        )
    shared_guard = SendGuard(store, client, policy, metrics, routing, journal, reconciler)
    local_store: list[EmbeddedStore] = []
    local_clients: list[RedisClient] = []  # the outage store's redis-py client: ours to close

    async def make_local_guard() -> SendGuard:
        # Started on first need only: most instances never see their shared store fail.
        embedded = EmbeddedStore(None)
        url = await embedded.start()
        local_store.append(embedded)
        log.warning("local_store_started", reason="shared-store-down")
        local_client = store_client(url)
        local_clients.append(local_client)
        local = SendStore(local_client, lean_client_like(local_client))
        return SendGuard(local, client, policy, metrics, routing, journal, reconciler)

    failover = StoreFailover(
        shared_guard,
        StoreMode(settings.on_store_error),
        metrics,
        make_local=make_local_guard if settings.redis_url is not None else None,
        settle_after=policy.lease,
    )
    prober = StoreProber(
        store.ping_all, StoreHealth(settings.store_outage_after), metrics, failover.store_changed
    )
    prober.start()
    # The board's resync and subscription get their own connections, off the hot path's pool.
    board_redis = store_client(app[STORE_URL], cluster=settings.redis_cluster, timeout=None)
    board = KillSwitchBoard(
        KillSwitchStore(board_redis),
        config_switches=settings.kill_switch.switches(time.time()) if settings.kill_switch else (),
        break_glass_senders=settings.break_glass_senders,
    )
    await board.start()
    app[RUNTIME] = Runtime(
        upstream=Upstream.from_url(app[UPSTREAM_URL]),
        allowed_hosts=tuple(settings.upstream_allowed_hosts),
        sandboxed=settings.upstream_is_sandbox,
        max_body=settings.max_body_bytes,
        routes=RouteTable(route_specs(settings)),
        client=client,
        metrics=metrics,
        store=store,
        gate=SendGate(failover, board, metrics),
        board=board,
        failover=failover,
        prober=prober,
        journal=journal,
        learner=learner,
        tee=tee,
    )
    try:
        yield
    finally:
        await prober.stop()
        await board.stop()
        await board_redis.aclose()
        await failover.close()
        # Outcomes still owed to the store get their chance before it closes; what is left
        # stays in flight there and turns UNKNOWN at lease end (never a resend).
        await journal.close(within=JOURNAL_FLUSH_SECONDS)
        await learner.drain()
        await failover.close_stores()  # (after the journal's last writes)
        await client.close()
        if callback_session is not None:
            await callback_session.close()
        for local_client in local_clients:
            await local_client.aclose()
        for embedded in local_store:
            await embedded.stop()


def _callback_resolver(
    reconciler: Reconciler, store: SendStore, upstream: Upstream
) -> UnknownResolver:
    async def resolve(binding: CallbackBinding, message_sid: str, auth_token: str) -> None:
        credential = f"{binding.account_sid}:{auth_token}".encode()
        await reconciler.resolve_from_callback(
            store,
            SendRef(binding.recipient_tag, binding.dedup_id),
            binding.account_sid,
            message_sid,
            "Basic " + base64.b64encode(credential).decode(),
            upstream,
        )

    return resolve


async def _callback_secret(app: web.Application) -> bytes:
    configured = app[SETTINGS].callback_secret
    if configured is not None:
        return configured.get_secret_value().encode()
    return await shared_tee_secret(app[REDIS])


def route_specs(settings: Settings) -> list[RouteSpec]:
    return [
        RouteSpec(
            name=route.name,
            method=route.method,
            path=route.path,
            dedup_window=route.dedup_window
            if route.dedup_window is not None
            else settings.dedup_window,
        )
        for route in settings.guarded_routes
    ]


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[proxy_middleware], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    metrics = app[METRICS] = Metrics()
    app[REQUEST_COUNTER] = lambda decision: metrics.requests.labels(decision.value).inc()
    app[RECENT] = RecentDecisions()  # the operator console's recent decisions (admin /v1/)
    app.cleanup_ctx.append(_sandbox_upstream)
    app.cleanup_ctx.append(_store)
    app.cleanup_ctx.append(_guard)
    app.router.add_route("*", CALLBACK_PATH_PREFIX + "{token:.*}", handle_callback)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
