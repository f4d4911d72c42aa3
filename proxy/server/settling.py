"""Settling a claimed send: how the attempt ended (guard/outcome.py) written to the store.

    answered (2xx/4xx)   complete, written after the answer: owed in the journal first (a
                         duplicate here is replayed from memory), then written in the background
    5xx / timeout / ...  mark UNKNOWN, tried inline, then from the journal
    nothing sent         release, tried inline, then from the journal
    owner gone           mark stale (a duplicate found an in-flight record past its lease)

Never raises a store failure for an outcome: what the store does not accept now, the journal
keeps and retries. A crash before a write lands leaves the record in flight, and it turns
UNKNOWN at lease end (never a resend).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine

import orjson

from proxy.errors import StoreUnavailable
from proxy.guard.dedup import DedupRecord, StoredResponse
from proxy.guard.facts import SendFacts
from proxy.guard.guarded_decide import Reason, ReleaseCheck, check_unapplied_release
from proxy.guard.outcome import AttemptEnd, Settlement, StoreAction, settle
from proxy.guard.suppression import error_code_in, learn
from proxy.logs import CLAIM_LOST, RECORD_MARKED_UNKNOWN, STORE_ERROR, get_logger
from proxy.metrics import Metrics
from proxy.server.context import RequestContext
from proxy.server.guard_policy import GuardPolicy
from proxy.server.headers import replayable_headers
from proxy.server.learning import identity_body
from proxy.server.settlement import PendingOutcome, SettlementJournal
from proxy.store.send_store import SendRef, SendStore, StoreError
from proxy.upstream.client import UpstreamResult

log = get_logger("sendguard.guard")

Slots = tuple[tuple[int, int], ...]  # the account-ceiling windows a send was counted in


class Settler:
    def __init__(
        self, store: SendStore, policy: GuardPolicy, metrics: Metrics, journal: SettlementJournal
    ) -> None:
        self.store = store
        self.policy = policy
        self.metrics = metrics
        self.journal = journal
        # Settling work that outlives its request (a cancelled send's UNKNOWN mark, an
        # account un-count after the answer): shutdown waits for it before the store closes.
        self._background: set[asyncio.Future[None]] = set()

    async def drain(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def store_failed(self, ctx: RequestContext, step: str, exc: StoreError) -> None:
        # Counted and logged only: whether the store is down is the health prober's call,
        # never one failed command's (docs/contract.md#outage).
        self.metrics.store_errors.labels(step).inc()
        log.error(STORE_ERROR, request_id=ctx.request_id, step=step, error=str(exc))

    def _track(self, work: Coroutine[object, object, None]) -> asyncio.Future[None]:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def answered(
        self,
        ctx: RequestContext,
        facts: SendFacts,
        ref: SendRef,
        token: str,
        result: UpstreamResult,
        admitted: Slots,
    ) -> Settlement:
        """Twilio answered: settle it. A completion returns at once (written behind the
        answer); a release or UNKNOWN mark is tried inline, as before any answer."""
        settlement = settle(AttemptEnd.ANSWERED, result.status)
        if settlement.written_after_answer:
            pending = self._completion(ctx, facts, ref, token, result, settlement)
            step = settlement.action.value
            self.journal.settle_behind(pending, lambda exc: self.store_failed(ctx, step, exc))
        else:
            await self.ended(ctx, facts, ref, token, settlement)
        if admitted and not settlement.counted:
            self._track(self._unadmit(ctx, facts, admitted))
        return settlement

    async def ended(
        self,
        ctx: RequestContext,
        facts: SendFacts,
        ref: SendRef,
        token: str,
        settlement: Settlement,
    ) -> None:
        """An attempt that ended without a completion to store: release or mark UNKNOWN."""
        if settlement.action is StoreAction.RELEASE:
            await self.release(ctx, facts, ref, token)
            return
        assert settlement.action is StoreAction.MARK_UNKNOWN
        pending = self._unknown_outcome(ctx, facts, ref, token, settlement.unknown_reason)
        error = await self.journal.settle(pending)
        if error is not None:
            self.store_failed(ctx, settlement.action.value, error)

    def cancelled(
        self, ctx: RequestContext, facts: SendFacts, ref: SendRef, token: str
    ) -> asyncio.Future[None]:
        """The request may already be on the wire: its UNKNOWN mark is written even though
        the request is being cancelled (shield the returned future), and shutdown waits."""
        return self._track(self.ended(ctx, facts, ref, token, settle(AttemptEnd.CANCELLED)))

    def _completion(
        self,
        ctx: RequestContext,
        facts: SendFacts,
        ref: SendRef,
        token: str,
        result: UpstreamResult,
        settlement: Settlement,
    ) -> PendingOutcome:
        # Parsed from the identity form: Twilio may compress although sendguard asked it not to.
        readable = identity_body(result.body, result.headers.get("Content-Encoding", ""))
        sid = message_sid(result.status, readable)
        if sid:
            ctx.fields["message_sid"] = sid
        learned = learn(
            error_code_in(result.status, readable),
            self.policy.suppression_rules,
            sender=facts.sender,
            content=facts.content,
            now_ms=int(time.time() * 1000),
            source="response",
        )
        if learned is not None:
            self.metrics.suppressions_learned.labels(str(learned[1].code), "response").inc()
            log.warning("suppression_learned", request_id=ctx.request_id,
                        code=learned[1].code, scope=learned[0].split(":", 1)[0],
                        **ctx.scope_fields())  # fmt: skip
        stored = StoredResponse(result.status, replayable_headers(result.headers), result.body)
        request_id = ctx.request_id

        async def write() -> None:
            done = await self.store.complete(
                ref,
                token=token,
                response=stored,
                message_sid=sid,
                ttl_ms=self.policy.ttl_ms(facts),
                content=facts.content,
                learned=[learned] if learned else [],
                uncount=not settlement.counted,
            )
            if done == 0:
                log.warning(CLAIM_LOST, request_id=request_id, step="complete")

        return PendingOutcome(
            ref, settlement.action, facts.payload_hash, write, self.store, stored, sid
        )

    def _unknown_outcome(
        self, ctx: RequestContext, facts: SendFacts, ref: SendRef, token: str, reason: str
    ) -> PendingOutcome:
        # Counted and logged when decided: from this instance's view the send is UNKNOWN now,
        # whether the store takes the mark at once or only later from the journal.
        self.metrics.records_unknown.labels(reason.split("-", 1)[-1]).inc()
        log.warning(RECORD_MARKED_UNKNOWN, request_id=ctx.request_id, reason=reason,
                    **ctx.scope_fields())  # fmt: skip

        async def write() -> None:
            await self.store.mark_unknown(
                ref,
                token=token,
                reason=reason,
                ttl_ms=self.policy.unknown_ttl_ms(facts),
                require_expired=False,
            )

        return PendingOutcome(ref, StoreAction.MARK_UNKNOWN, facts.payload_hash, write, self.store)

    async def release(
        self,
        ctx: RequestContext,
        facts: SendFacts,
        ref: SendRef,
        token: str,
        *,
        trip_ms: int = 0,
        breaker_ttl_ms: int = 0,
    ) -> bool:
        """Hand back a claim (nothing was sent). True when the store took it now; otherwise
        the journal keeps retrying, so the claim never blocks the message for long."""
        request_id = ctx.request_id

        async def write() -> None:
            released = await self.store.release(
                ref, token=token, trip_ms=trip_ms, breaker_ttl_ms=breaker_ttl_ms
            )
            if released:
                return
            check = check_unapplied_release(await self.store.get(ref), token)
            if check is ReleaseCheck.STILL_HELD:
                raise StoreError("release not applied: the claim is still held")
            log.warning(CLAIM_LOST, request_id=request_id, step="release")

        pending = PendingOutcome(ref, StoreAction.RELEASE, facts.payload_hash, write, self.store)
        error = await self.journal.settle(pending)
        if error is not None:
            self.store_failed(ctx, "release", error)
            return False
        return True

    async def _unadmit(self, ctx: RequestContext, facts: SendFacts, slots: Slots) -> None:
        """Twilio refused the send: it leaves the account's windows. Best effort, not
        journaled (a decrement is not safe to repeat); a failure only over-counts."""
        try:
            await self.store.unadmit_account(facts.account_sid, slots)
        except StoreError as exc:
            self.store_failed(ctx, "account", exc)

    async def mark_stale(
        self, ctx: RequestContext, facts: SendFacts, ref: SendRef, record: DedupRecord
    ) -> None:
        """An in-flight record past its lease: its owner is gone. UNKNOWN, never retaken."""
        try:
            marked = await self.store.mark_unknown(
                ref,
                token=record.token,
                reason=Reason.CLAIM_OWNER_GONE.value,
                ttl_ms=self.policy.unknown_ttl_ms(facts),
                require_expired=True,
            )
        except StoreError as exc:
            self.store_failed(ctx, "mark_stale", exc)
            raise StoreUnavailable(reason=Reason.STORE_ERROR) from exc
        if marked == 1:
            self.metrics.records_unknown.labels("owner-gone").inc()
            log.warning(RECORD_MARKED_UNKNOWN, request_id=ctx.request_id,
                        reason=Reason.CLAIM_OWNER_GONE, **ctx.scope_fields())  # fmt: skip


def message_sid(status: int, body: bytes) -> str:
    """The Message (or Call) SID of a created resource, from Twilio's JSON answer."""
    if not 200 <= status < 300:
        return ""
    try:
        payload = orjson.loads(body)
    except ValueError:
        return ""  # e.g. the XML flavour of the API
    sid = payload.get("sid") if isinstance(payload, dict) else None
    return sid if isinstance(sid, str) else ""
