"""The gate in front of every guarded send: kill switch, then the store the send is guarded by.

    facts of the send (pure)
      -> kill switch, from local memory           engaged      -> 503 killed (no store touched)
      -> the store mode in force (docs/contract.md#outage):
           shared   the shared store (the normal case)
           local    shared store down: a private embedded store, dedup within this instance
           closed   shared store down: 503 store-unavailable
           open     shared store down: forwarded unguarded, loudly
      -> SendGuard (claim, decide, forward, record)

Only the health prober (prober.py) decides that the store is down, after
`store_outage_after` of failed probes; a store error on one send refuses that send (503,
nothing sent) and changes nothing else. Back from `local`, this instance's outage records
are merged into the shared store before any send is guarded by it again, so a retry of a
send made during the outage is still a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum

from aiohttp import web

from proxy.errors import InFlight, Killed, StoreUnavailable
from proxy.guard.facts import SendFacts, build_facts
from proxy.guard.guarded_decide import Reason, store_down_reason
from proxy.guard.routes import RouteMatch
from proxy.killswitch.board import KillSwitchBoard
from proxy.killswitch.model import retry_after
from proxy.logs import correlation_hash, get_logger, mask_phone
from proxy.metrics import Metrics
from proxy.server.context import CONTEXT, Answer, RequestContext
from proxy.server.guarded import SendGuard
from proxy.store.send_store import SendRef, SendStore, StoreError
from proxy.upstream.hosts import Upstream

log = get_logger("sendguard.gate")

STORE_DEGRADED = "store_degraded"
STORE_RECOVERED = "store_recovered"
OUTAGE_RECORDS_MERGED = "outage_records_merged"
UNGUARDED_SEND = "unguarded_send"


class StoreMode(StrEnum):
    SHARED = "shared"
    LOCAL = "local"
    CLOSED = "closed"
    OPEN = "open"


class StoreFailover:
    """Which store guards sends right now. `fallback` is SENDGUARD_ON_STORE_ERROR; `make_local`
    starts the private store on first need (none when the primary store is the embedded one:
    there is nothing more local to fall back to, so `local` acts as `closed`).
    `settle_after`: how long after the switch back a second merge pass runs, for outage
    sends that were still in flight at the first (their owners' longest lease)."""

    def __init__(
        self,
        shared: SendGuard,
        fallback: StoreMode,
        metrics: Metrics,
        make_local: Callable[[], Awaitable[SendGuard]] | None = None,
        settle_after: float = 0.0,
    ) -> None:
        self.shared = shared
        self.fallback = (
            fallback if (fallback is not StoreMode.LOCAL or make_local) else (StoreMode.CLOSED)
        )
        self.metrics = metrics
        self._make_local = make_local
        self._local: SendGuard | None = None
        self._local_lock = asyncio.Lock()
        self._settle_after = settle_after
        self._late_merge: asyncio.Task[None] | None = None
        self.mode = StoreMode.SHARED
        self.merging = False
        self.local_active = 0  # sends being guarded by the local store right now
        self.degraded_since: float | None = None
        self._publish_mode()

    @property
    def degraded(self) -> bool:
        return self.mode is not StoreMode.SHARED

    async def guard(self) -> SendGuard | None:
        """The guard for the next send; None in `closed`/`open` and while merging."""
        if self.merging:
            return None
        if self.mode is StoreMode.SHARED:
            return self.shared
        if self.mode is StoreMode.LOCAL:
            local = await self._local_guard()
            # Starting the local store takes a while: the store may be back meanwhile, and a
            # send must not begin on the outage store once the merge may have run.
            if self.mode is StoreMode.LOCAL and not self.merging:
                return local
            return await self.guard()
        return None

    async def store_changed(self, up: bool) -> bool:
        """The prober's word. False when the switch back could not complete (try again)."""
        if not up:
            if not self.degraded:
                self.mode = self.fallback
                self.degraded_since = time.time()
                if self.mode is StoreMode.LOCAL:
                    self.shared.journal.retain_settled(True)
                self._publish_mode()
                log.error(STORE_DEGRADED, mode=self.mode.value)
            return True
        if not self.degraded:
            return True
        if self.mode is StoreMode.LOCAL and self._local is not None:
            # No send starts meanwhile (503, retry); the ones under way settle first, so the
            # merge sees every outage record in its final state.
            self.merging = True
            try:
                settled = await self._local_sends_settled()
                # Outcomes still owed to the shared store go first: a held claim whose release
                # is not written yet would otherwise win over the outage record.
                journal = self.shared.journal
                if journal.owed_to(self.shared.store):
                    await journal.flush(1.0)
                if journal.owed_to(self.shared.store):
                    log.warning(STORE_DEGRADED, mode=self.mode.value, step="journal-first")
                    return False
                merged = await merge_outage_records(self._local.store, self.shared.store)
            except StoreError as exc:
                log.error(STORE_DEGRADED, mode=self.mode.value, step="merge", error=str(exc))
                return False
            finally:
                self.merging = False
            log.warning(OUTAGE_RECORDS_MERGED, records=merged, stage="first")
            if not settled:
                self._schedule_late_merge(self._local.store)
        outage = time.time() - (self.degraded_since or time.time())
        self.shared.journal.retain_settled(False)
        self.mode = StoreMode.SHARED
        self.degraded_since = None
        self._publish_mode()
        log.warning(STORE_RECOVERED, outage_s=round(outage, 1))
        return True

    async def _local_sends_settled(self) -> bool:
        """Wait (at most one lease) for the sends on the local store to finish."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settle_after
        while self.local_active > 0:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def _schedule_late_merge(self, local: SendStore) -> None:
        async def late() -> None:
            await asyncio.sleep(self._settle_after)
            for _ in range(10):
                try:
                    merged = await merge_outage_records(local, self.shared.store)
                except StoreError:
                    await asyncio.sleep(self._settle_after or 1.0)
                    continue
                log.info(OUTAGE_RECORDS_MERGED, records=merged, stage="late")
                return

        if self._late_merge is not None:
            self._late_merge.cancel()
        self._late_merge = asyncio.get_running_loop().create_task(late())

    async def _local_guard(self) -> SendGuard:
        if self._local is None:
            assert self._make_local is not None
            async with self._local_lock:
                if self._local is None:
                    self._local = await self._make_local()
        return self._local

    def _publish_mode(self) -> None:
        for mode in StoreMode:
            self.metrics.store_mode.labels(mode.value).set(1 if mode is self.mode else 0)

    async def close(self) -> None:
        if self._late_merge is not None:
            self._late_merge.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._late_merge
        for guard in (self.shared, self._local):
            if guard is not None:
                await guard.drain()
                await guard.store.drain()

    def is_shared(self, guard: SendGuard) -> bool:
        return guard is self.shared

    def sending_on_shared(self, ref: SendRef) -> bool:
        """Claimed on the shared store and still on its way (the outage store knows nothing
        of it)."""
        return self.shared.sending(ref)

    async def answer_owed(
        self, ctx: RequestContext, facts: SendFacts, ref: SendRef
    ) -> Answer | None:
        """A duplicate of a send whose outcome is still owed: answered from memory (the
        journal is one for every store mode)."""
        return await self.shared.answer_pending(ctx, facts, ref)

    async def forward_unguarded(
        self, request: web.Request, facts: SendFacts, body: bytes, upstream: Upstream
    ) -> Answer:
        """`open` with the shared store down: one send, no claim, no record."""
        return await self.shared.forward_unguarded(request, facts, body, upstream)

    async def close_stores(self) -> None:
        """Close what the stores own (their lean connections), once nothing writes to them."""
        for guard in (self.shared, self._local):
            if guard is not None:
                await guard.store.aclose()


async def merge_outage_records(local: SendStore, shared: SendStore) -> int:
    """Copy the local store's send records into the shared store: an existing shared record
    wins, except an in-flight copy of the very same claim, which takes its settled outcome."""
    merged = 0
    async for record_key, fields, ttl_ms in local.export_records():
        merged += await shared.merge_record(record_key, fields, ttl_ms)
    return merged


class SendGate:
    def __init__(self, failover: StoreFailover, board: KillSwitchBoard, metrics: Metrics) -> None:
        self.failover = failover
        self.board = board
        self.metrics = metrics

    async def handle(
        self, request: web.Request, body: bytes, upstream: Upstream, route: RouteMatch
    ) -> Answer:
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
        guard = await self.failover.guard()
        if guard is None:
            return await self._degraded(request, facts, body, upstream)
        if self.failover.is_shared(guard):
            return await guard.handle(request, facts, body, upstream)
        if self.failover.sending_on_shared(_ref(facts)):
            # Claimed on the shared store just before the outage and still on its way: the
            # outage store knows nothing of it, so claiming there could send it twice.
            raise InFlight(retry_after=1.0, reason=Reason.IN_FLIGHT_ON_SHARED_STORE)
        # Counted from the moment it was chosen (no await in between): the merge waits for it.
        self.failover.local_active += 1
        try:
            return await guard.handle(request, facts, body, upstream)
        finally:
            self.failover.local_active -= 1

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
    ) -> Answer:
        # A duplicate of a send whose outcome is still owed to the store: answered from memory.
        pending = await self.failover.answer_owed(request[CONTEXT], facts, _ref(facts))
        if pending is not None:
            return pending
        if self.failover.merging:
            raise StoreUnavailable(reason=Reason.STORE_MERGING)
        if self.failover.mode is StoreMode.OPEN:
            log.warning(UNGUARDED_SEND, request_id=request[CONTEXT].request_id,
                        account=facts.account_sid, to=mask_phone(facts.to))  # fmt: skip
            self.metrics.unguarded_sends.inc()
            return await self.failover.forward_unguarded(request, facts, body, upstream)
        raise StoreUnavailable(reason=store_down_reason(self.failover.mode.value))


def _ref(facts: SendFacts) -> SendRef:
    return SendRef(facts.recipient_tag, facts.dedup_id)
