"""The gate in front of every guarded send: kill switch, then the store the send is guarded by.

    facts of the send (pure)
      -> kill switch, from local memory           engaged      -> 503 killed (no store touched)
      -> the store mode in force (SPEC §3.4):
           shared   the shared store (the normal case)
           local    shared store failed: a private embedded store, dedup within this instance
           closed   shared store failed: 503 store-unavailable
           open     shared store failed: forwarded unguarded, loudly
      -> SendGuard (claim, decide, forward, record)

A store failure while claiming means nothing was sent, so the same send can go straight on
under the new mode. A failure after sending is the guard's business (the claim turns UNKNOWN);
it still switches the mode for the sends that follow. While degraded, one task pings the shared
store, and the first answer switches back: no restart, no operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum

from aiohttp import web

from proxy.errors import Killed, StoreUnavailable
from proxy.guard.facts import SendFacts, build_facts
from proxy.guard.routes import RouteMatch
from proxy.killswitch.board import KillSwitchBoard
from proxy.killswitch.model import retry_after
from proxy.logs import correlation_hash, get_logger, mask_phone
from proxy.metrics import Metrics
from proxy.server.context import CONTEXT
from proxy.server.guarded import SendGuard
from proxy.store.send_store import StoreError
from proxy.upstream.hosts import Upstream

log = get_logger("sendguard.gate")

STORE_DEGRADED = "store_degraded"
STORE_RECOVERED = "store_recovered"
UNGUARDED_SEND = "unguarded_send"


class StoreMode(StrEnum):
    SHARED = "shared"
    LOCAL = "local"
    CLOSED = "closed"
    OPEN = "open"


class StoreFailover:
    """Which store guards sends right now. `fallback` is SENDGUARD_ON_STORE_ERROR; `make_local`
    starts the private store on first need (none when the primary store is the embedded one:
    there is nothing more local to fall back to, so `local` acts as `closed`)."""

    def __init__(
        self,
        shared: SendGuard,
        fallback: StoreMode,
        metrics: Metrics,
        make_local: Callable[[], Awaitable[SendGuard]] | None = None,
        probe_interval: float = 1.0,
    ) -> None:
        self.shared = shared
        self.fallback = (
            fallback if (fallback is not StoreMode.LOCAL or make_local) else (StoreMode.CLOSED)
        )
        self.metrics = metrics
        self._make_local = make_local
        self._local: SendGuard | None = None
        self._local_lock = asyncio.Lock()
        self._probe_interval = probe_interval
        self._probe: asyncio.Task[None] | None = None
        self.mode = StoreMode.SHARED
        self.degraded_since: float | None = None
        self._publish_mode()

    @property
    def degraded(self) -> bool:
        return self.mode is not StoreMode.SHARED

    async def guard(self) -> SendGuard | None:
        """The guard for the next send; None in `closed`/`open` while degraded."""
        if self.mode is StoreMode.SHARED:
            return self.shared
        if self.mode is StoreMode.LOCAL:
            return await self._local_guard()
        return None

    def failed(self, step: str, error: str) -> None:
        """The shared store failed: switch to the fallback until it answers again."""
        if self.degraded:
            return
        self.mode = self.fallback
        self.degraded_since = time.time()
        self._publish_mode()
        log.error(STORE_DEGRADED, mode=self.mode.value, step=step, error=error)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_back())

    async def _local_guard(self) -> SendGuard:
        if self._local is None:
            assert self._make_local is not None
            async with self._local_lock:
                if self._local is None:
                    self._local = await self._make_local()
        return self._local

    async def _probe_until_back(self) -> None:
        while True:
            await asyncio.sleep(self._probe_interval)
            try:
                await self.shared.store.ping()
            except StoreError:
                continue
            outage = time.time() - (self.degraded_since or time.time())
            self.mode = StoreMode.SHARED
            self.degraded_since = None
            self._publish_mode()
            log.warning(STORE_RECOVERED, outage_s=round(outage, 1))
            return

    def _publish_mode(self) -> None:
        for mode in StoreMode:
            self.metrics.store_mode.labels(mode.value).set(1 if mode is self.mode else 0)

    async def close(self) -> None:
        for guard in (self.shared, self._local):
            if guard is not None:
                await guard.drain()
                await guard.store.drain()
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe


class SendGate:
    def __init__(self, failover: StoreFailover, board: KillSwitchBoard, metrics: Metrics) -> None:
        self.failover = failover
        self.board = board
        self.metrics = metrics

    async def handle(
        self, request: web.Request, body: bytes, upstream: Upstream, route: RouteMatch
    ) -> web.Response:
        ctx = request[CONTEXT]
        facts = build_facts(
            route,
            authorization=request.headers.get("Authorization", ""),
            idempotency_key_header=request.headers.get("Idempotency-Key"),
            body=body,
            content_type=request.headers.get("Content-Type", ""),
        )
        ctx.fields.update(
            account=facts.account_sid,
            route=route.route.name,
            dedup_by="key" if facts.by_key else "fingerprint",
            to=mask_phone(facts.to),
            to_ref=correlation_hash(facts.to),
        )
        self._refuse_if_killed(facts)
        for _ in range(2):  # the second pass only after the shared store failed mid-claim
            guard = await self.failover.guard()
            if guard is None:
                return await self._degraded(request, facts, body, upstream)
            try:
                return await guard.handle(request, facts, body, upstream)
            except StoreUnavailable as exc:
                if guard is not self.failover.shared:
                    raise  # the local store failed too: nothing more to fall back to
                self.failover.failed("claim", str(exc.__cause__ or exc))
        return await self._degraded(request, facts, body, upstream)

    def _refuse_if_killed(self, facts: SendFacts) -> None:
        now = time.time()
        switch = self.board.check_facts(facts, now)
        if switch is not None:
            raise Killed(
                f"sending is stopped by the kill switch {switch.scope.masked()}: {switch.reason}",
                retry_after=retry_after(switch, now),
                reason=f"kill-switch-{switch.scope.kind.value}",
            )

    async def _degraded(
        self, request: web.Request, facts: SendFacts, body: bytes, upstream: Upstream
    ) -> web.Response:
        if self.failover.mode is StoreMode.OPEN:
            log.warning(UNGUARDED_SEND, request_id=request[CONTEXT].request_id,
                        account=facts.account_sid, to=mask_phone(facts.to))  # fmt: skip
            self.metrics.unguarded_sends.inc()
            return await self.failover.shared.forward_unguarded(request, facts, body, upstream)
        raise StoreUnavailable(reason=f"store-down-{self.failover.mode.value}")
