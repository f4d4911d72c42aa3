"""Guarded sends: facts -> claim (one round trip) -> pure decisions -> act -> record the outcome.

Round trips per send (docs/contract.md#budget): a fresh send costs two (claim, complete), a
replay one (claim), a refused send two (claim, release). Every way an attempt can end is
settled exactly once:

    upstream answered 2xx/4xx  -> complete (stored, replayed to duplicates; codes learned)
    upstream answered 429      -> retried inside the budget; then release (a retry may send)
    upstream answered 5xx      -> UNKNOWN  (Twilio may have created it)
    connect failed             -> release  (nothing left this host)
    timeout/reset after send   -> UNKNOWN
    request cancelled mid-send -> UNKNOWN
A failure to record is never answered by sending again: the claim stays in flight until its
lease ends, and a later duplicate then finds it stale and turns it UNKNOWN.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from proxy.decision import Decision
from proxy.errors import (
    BreakerOpen,
    InFlight,
    KeyMismatch,
    OutcomeUnknown,
    RateLimited,
    SendguardError,
    StoreUnavailable,
    Suppressed,
    UpstreamReset,
    UpstreamTimedOut,
    UpstreamUnreachable,
)
from proxy.guard.dedup import (
    Action,
    DedupRecord,
    RecordState,
    StoredResponse,
    decide,
)
from proxy.guard.facts import SendFacts
from proxy.guard.outcome import AttemptEnd, Settlement, StoreAction, settle
from proxy.guard.protection import (
    AccountCeiling,
    GuardMode,
    ProtectionPolicy,
    Verdict,
    judge,
    judge_account,
)
from proxy.guard.suppression import SuppressionRule, error_code_in, learn, scope_fields
from proxy.logs import (
    CLAIM_LOST,
    RECORD_MARKED_UNKNOWN,
    STORE_ERROR,
    WOULD_BLOCK,
    get_logger,
)
from proxy.metrics import Metrics
from proxy.server.context import CONTEXT, RequestContext
from proxy.server.forward import upstream_url
from proxy.server.headers import (
    REPLAYED_HEADER,
    downstream_response_headers,
    replayable_headers,
    upstream_request_headers,
)
from proxy.server.learning import identity_body
from proxy.server.reconcile import GATE_SECONDS, LookupVerdict, Reconciler
from proxy.server.settlement import PendingOutcome, SettlementJournal
from proxy.store.send_store import (
    ClaimRequest,
    ClaimResult,
    SendRef,
    SendStore,
    StoreError,
    key_lookup_id,
)
from proxy.tee.rewrite import encode_form, rewrite_status_callback
from proxy.tee.tokens import AuthTokenBook
from proxy.tee.urls import CallbackUrlCodec
from proxy.upstream.client import NotSent, SentNoAnswer, UpstreamClient, UpstreamResult
from proxy.upstream.hosts import Upstream

log = get_logger("sendguard.guard")

# An UNKNOWN send is looked up in Twilio at most this often: a retry sooner learns nothing.
RECONCILE_RETRY_AFTER = GATE_SECONDS


@dataclass(frozen=True)
class GuardPolicy:
    idempotency_ttl: float  # seconds a keyed record (and any UNKNOWN record) is kept
    inflight_wait: float  # how long a duplicate waits for the original before 409
    lease: float  # longest an owner can still be working on its send
    protection: ProtectionPolicy
    suppression_rules: dict[int, SuppressionRule]
    retry_429_budget: float  # seconds of upstream-429 retries inside the proxy
    account_ceiling: AccountCeiling
    poll_first: float = 0.02
    poll_max: float = 0.25
    min_replicas: int = 0  # store_min_replicas: replicas that must hold a claim before sending
    replica_wait_ms: int = 500

    def ttl_ms(self, facts: SendFacts) -> int:
        if facts.by_key:
            return int(self.idempotency_ttl * 1000)
        return int(facts.route.route.dedup_window * 1000)

    def claim_ttl_ms(self, facts: SendFacts) -> int:
        # An in-flight record must outlive its lease, or a duplicate could claim it afresh.
        return max(self.ttl_ms(facts), self.lease_ms * 2)

    def unknown_ttl_ms(self, facts: SendFacts) -> int:
        # "Never released automatically": an UNKNOWN outlives even a short fingerprint window.
        return max(self.ttl_ms(facts), int(self.idempotency_ttl * 1000))

    @property
    def lease_ms(self) -> int:
        return int(self.lease * 1000)

    def claim_request(self, facts: SendFacts, token: str, meta: dict[str, str]) -> ClaimRequest:
        windows = self.protection.windows if self.protection.keep_ms else ()
        return ClaimRequest(
            token=token,
            payload_hash=facts.payload_hash,
            lease_ms=self.lease_ms,
            ttl_ms=self.claim_ttl_ms(facts),
            slide_ms=0 if facts.by_key else self.ttl_ms(facts),
            meta=meta,
            window_ms=tuple(window.ms for window in windows),
            keep_ms=self.protection.keep_ms,
            scopes=scope_fields(facts.sender, facts.content),
            key_index=facts.by_key,
            key_lookup_id=(
                key_lookup_id(facts.account_sid, facts.idempotency_key)
                if facts.idempotency_key is not None
                else ""
            ),
            min_replicas=self.min_replicas,
            replica_wait_ms=self.replica_wait_ms,
        )


@dataclass(frozen=True)
class CallbackRouting:
    """The tee's part in a send: StatusCallback rewritten to sendguard (bound to this send's
    account, recipient and dedup id), and the auth token of a send Twilio accepted remembered
    to verify that send's callbacks."""

    codec: CallbackUrlCodec
    tokens: AuthTokenBook

    def outbound_body(self, facts: SendFacts, body: bytes) -> bytes:
        # The fingerprint stays that of the app's own form: a retry dedups either way.
        rewritten = rewrite_status_callback(facts.form, self.codec, facts)
        return body if rewritten is None else encode_form(rewritten)

    def learn_credential(self, authorization: str, upstream_status: int) -> None:
        # Only from a create Twilio accepted (2xx): a 400/404/final 429 proves nothing about
        # the credential, and a refused one may be a forger's (tee/tokens.py).
        if 200 <= upstream_status < 300:
            self.tokens.learn_from_authorization(authorization)


class SendGuard:
    def __init__(
        self,
        store: SendStore,
        client: UpstreamClient,
        policy: GuardPolicy,
        metrics: Metrics,
        callbacks: CallbackRouting | None = None,
        journal: SettlementJournal | None = None,
        reconciler: Reconciler | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.policy = policy
        self.metrics = metrics
        self.callbacks = callbacks
        # Outcomes the store has not accepted yet; shared by the guards of every store mode.
        self.journal = journal if journal is not None else SettlementJournal(metrics)
        self.reconciler = reconciler
        # Records this instance is sending right now (claim made, outcome not yet settled):
        # in `local` mode a retry of one must not be claimed afresh on the outage store.
        self._sending: dict[tuple[str, str], int] = {}
        self._settling: set[asyncio.Future[None]] = set()

    async def drain(self) -> None:
        """Wait for cancelled sends to finish recording UNKNOWN (before the store closes)."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def handle(
        self, request: web.Request, facts: SendFacts, body: bytes, upstream: Upstream
    ) -> web.Response:
        """Claim, decide, forward, record. Raises StoreUnavailable only before anything was
        sent (the gate may then retry the whole send on another store)."""
        ctx = request[CONTEXT]
        ref = SendRef(facts.recipient_tag, facts.dedup_id)
        answered = await self.answer_pending(ctx, facts, ref)
        if answered is not None:
            return answered
        if self.journal.full:
            # Every slot holds an outcome of a send already made: take no new risk.
            raise StoreUnavailable(reason="settlement-journal-full")
        token = secrets.token_hex(16)
        claim_request = self.policy.claim_request(facts, token, _reconciliation_meta(facts))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.inflight_wait
        delay = self.policy.poll_first
        while True:
            claim = await self._claim(ctx, facts, ref, claim_request)
            if claim.key_owner is not None and claim.key_owner != f"{ref.tag} {facts.payload_hash}":
                if claim.claimed:
                    await self._release(ctx, facts, ref, token)
                self._dedup_hit(Decision.KEY_MISMATCH, facts)
                raise KeyMismatch(reason="key-reused-with-other-payload")
            if claim.claimed:
                if claim.replicas is not None and claim.replicas < self.policy.min_replicas:
                    # A failover now could lose the claim and let a retry send again: nothing
                    # leaves until enough replicas hold it (store_min_replicas,
                    # docs/contract.md#outage).
                    await self._release(ctx, facts, ref, token)
                    self.metrics.store_errors.labels("replicas").inc()
                    raise StoreUnavailable(reason="claim-not-replicated")
                await self._apply_protection(ctx, facts, ref, token, claim)
                admitted: tuple[tuple[int, int], ...] = ()
                if self.policy.account_ceiling.active:
                    admitted = await self._apply_account_ceiling(
                        ctx, facts, ref, token, claim.now_ms
                    )
                if self.callbacks is not None:
                    body = self.callbacks.outbound_body(facts, body)
                return await self._forward(
                    request, ctx, facts, ref, body, upstream, token, admitted
                )
            mine = claim.record
            if mine is not None and mine.token == token and mine.state is RecordState.IN_FLIGHT:
                # Our own claim, run twice: its first answer was lost and the client retried
                # it. Nothing was sent; hand it back and claim afresh for a full verdict.
                if not await self._release(ctx, facts, ref, token):
                    raise StoreUnavailable(reason="store-error")
                continue
            decision = decide(
                claim.record,
                payload_hash=facts.payload_hash,
                by_key=facts.by_key,
                now_ms=claim.now_ms,
            )
            record = decision.record
            assert record is not None
            if decision.action is Action.REPLAY:
                self._dedup_hit(Decision.REPLAYED, facts)
                return _replay(ctx, record, decision.reason)
            if decision.action is Action.KEY_MISMATCH:
                self._dedup_hit(Decision.KEY_MISMATCH, facts)
                raise KeyMismatch(reason=decision.reason)
            if decision.action is Action.OUTCOME_UNKNOWN:
                if self.reconciler is not None:
                    found = await self.reconciler.reconcile(
                        self.store,
                        ref,
                        record,
                        authorization=request.headers.get("Authorization", ""),
                        upstream=upstream,
                        new_token=token,
                    )
                    if found.verdict is LookupVerdict.FOUND:
                        assert found.response is not None
                        self._dedup_hit(Decision.REPLAYED, facts)
                        return _replay_response(
                            ctx, found.response, found.message_sid, "reconciled-found"
                        )
                    if found.verdict is LookupVerdict.RESEND:
                        # `unknown_resend_after`: the one resend the operator opted into.
                        ctx.fields["resent_after_silence"] = True
                        if self.callbacks is not None:
                            body = self.callbacks.outbound_body(facts, body)
                        return await self._forward(
                            request, ctx, facts, ref, body, upstream, found.token
                        )
                self._dedup_hit(Decision.OUTCOME_UNKNOWN, facts)
                raise OutcomeUnknown(reason=decision.reason, retry_after=RECONCILE_RETRY_AFTER)
            if decision.action is Action.MARK_STALE:
                await self._mark_stale(ctx, facts, ref, record)
                continue  # re-read: it is UNKNOWN now, or the owner finished after all
            remaining = deadline - loop.time()
            if remaining <= 0:
                lease_left = (record.lease_until_ms - claim.now_ms) / 1000
                self._dedup_hit(Decision.IN_FLIGHT, facts)
                raise InFlight(retry_after=max(1.0, lease_left), reason=decision.reason)
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, self.policy.poll_max)

    def sending(self, ref: SendRef) -> bool:
        return (ref.tag, ref.dedup_id) in self._sending

    def _store_failed(self, ctx: RequestContext, step: str, exc: StoreError) -> None:
        # Counted and logged only: whether the store is down is the health prober's call,
        # never one failed command's (docs/contract.md#outage).
        self.metrics.store_errors.labels(step).inc()
        log.error(STORE_ERROR, request_id=ctx.request_id, step=step, error=str(exc))

    async def answer_pending(
        self, ctx: RequestContext, facts: SendFacts, ref: SendRef
    ) -> web.Response | None:
        """A duplicate of a send whose outcome the store has not accepted yet is answered
        from the journal: the real answer, or 409 while it is UNKNOWN. None: go on."""
        pending = self.journal.pending(ref)
        if pending is None:
            return None
        if facts.by_key and pending.payload_hash != facts.payload_hash:
            self._dedup_hit(Decision.KEY_MISMATCH, facts)
            raise KeyMismatch(reason="key-reused-with-other-payload")
        kind = "key" if facts.by_key else "fingerprint"
        if pending.action is StoreAction.RELEASE:
            # Nothing was sent. On another store the send may go on; on the store that still
            # holds the claim, only once the release is written.
            if pending.store is not self.store or await self.journal.retry_now(pending):
                return None
            raise StoreUnavailable(reason="release-unsettled")
        if pending.action is StoreAction.MARK_UNKNOWN:
            self._dedup_hit(Decision.OUTCOME_UNKNOWN, facts)
            raise OutcomeUnknown(reason="unknown-unsettled")
        assert pending.response is not None
        self._dedup_hit(Decision.REPLAYED, facts)
        return _replay_response(ctx, pending.response, pending.message_sid,
                                f"duplicate-{kind}-unsettled")  # fmt: skip

    def _dedup_hit(self, kind: Decision, facts: SendFacts) -> None:
        self.metrics.dedup_hits.labels(kind.value, "key" if facts.by_key else "fingerprint").inc()

    async def _claim(
        self, ctx: RequestContext, facts: SendFacts, ref: SendRef, request: ClaimRequest
    ) -> ClaimResult:
        try:
            return await self.store.claim(ref, request)
        except StoreError as exc:
            self._store_failed(ctx, "claim", exc)
            # The claim may have run with its answer lost: hand it back, or it would block
            # the message although nothing was sent ("a claim happens whole",
            # docs/contract.md#dedup).
            await self._release(ctx, facts, ref, request.token)
            raise StoreUnavailable(reason="store-error") from exc

    async def _apply_protection(
        self, ctx: RequestContext, facts: SendFacts, ref: SendRef, token: str, claim: ClaimResult
    ) -> None:
        assert claim.recipient is not None
        verdict = judge(claim.recipient, self.policy.protection, claim.now_ms)
        if verdict.would_block:
            log.warning(WOULD_BLOCK, request_id=ctx.request_id, decision=verdict.decision,
                        reason=verdict.reason, **_scope_fields(ctx))  # fmt: skip
            ctx.fields["would_block"] = verdict.reason
            assert verdict.decision is not None
            self.metrics.would_block.labels(verdict.decision.value).inc()
        if verdict.allow:
            if verdict.reason:
                ctx.fields["protection"] = verdict.reason
            return
        await self._release(
            ctx,
            facts,
            ref,
            token,
            trip_ms=verdict.trip_ms,
            breaker_ttl_ms=self.policy.protection.breaker_ttl_ms,
        )
        if verdict.trip_ms:
            self.metrics.breaker_trips.inc()
            log.warning("breaker_opened", request_id=ctx.request_id, reason=verdict.reason,
                        cooldown_s=verdict.trip_ms / 1000, **_scope_fields(ctx))  # fmt: skip
        raise _refusal(verdict)

    async def forward_unguarded(
        self, request: web.Request, facts: SendFacts, body: bytes, upstream: Upstream
    ) -> web.Response:
        """`on_store_error=open` with the store down: one send, no claim and no record. The
        operator chose delivery over dedup; the log line and the metric say so every time."""
        ctx = request[CONTEXT]
        ctx.decide(Decision.FORWARDED, "store-down-unguarded")
        try:
            result = await self._timed_send(request, facts, body, upstream, identity=False)
        except NotSent as exc:
            raise UpstreamUnreachable(reason="connect-failed") from exc
        except SentNoAnswer as exc:
            error = UpstreamTimedOut if exc.kind == "timeout" else UpstreamReset
            raise error(reason=f"upstream-{exc.kind}-unguarded") from exc
        return web.Response(
            status=result.status,
            body=result.body,
            headers=downstream_response_headers(result.headers),
        )

    async def _apply_account_ceiling(
        self, ctx: RequestContext, facts: SendFacts, ref: SendRef, token: str, now_ms: int
    ) -> tuple[tuple[int, int], ...]:
        """One more round trip, only when a ceiling is configured (its keys live in the
        account's slot, which the recipient's claim script cannot touch on a cluster).
        The windows the send was counted in (to take it out again if Twilio refuses it)."""
        ceiling = self.policy.account_ceiling
        slots = ceiling.slots(now_ms)
        try:
            counts = await self.store.admit_account(
                facts.account_sid,
                slots,
                [window.count for window in ceiling.windows],
                enforce=ceiling.mode is GuardMode.ENFORCE,
            )
        except StoreError as exc:
            self._store_failed(ctx, "account", exc)
            await self._release(ctx, facts, ref, token)
            raise StoreUnavailable(reason="store-error") from exc
        verdict = judge_account(counts, ceiling, now_ms)
        if verdict.would_block:
            assert verdict.decision is not None
            ctx.fields["would_block"] = verdict.reason
            self.metrics.would_block.labels(verdict.decision.value).inc()
            log.warning(WOULD_BLOCK, request_id=ctx.request_id, decision=verdict.decision,
                        reason=verdict.reason, account=facts.account_sid)  # fmt: skip
        if not verdict.allow:
            await self._release(ctx, facts, ref, token)
            raise RateLimited(
                "too many messages from this account in this window",
                retry_after=verdict.retry_after,
                reason=verdict.reason,
            )
        return slots

    async def _forward(
        self,
        request: web.Request,
        ctx: RequestContext,
        facts: SendFacts,
        ref: SendRef,
        body: bytes,
        upstream: Upstream,
        token: str,
        admitted: tuple[tuple[int, int], ...] = (),
    ) -> web.Response:
        key = (ref.tag, ref.dedup_id)
        self._sending[key] = self._sending.get(key, 0) + 1
        try:
            return await self._forward_claimed(
                request, ctx, facts, ref, body, upstream, token, admitted
            )
        finally:
            left = self._sending[key] - 1
            if left:
                self._sending[key] = left
            else:
                del self._sending[key]

    async def _forward_claimed(
        self,
        request: web.Request,
        ctx: RequestContext,
        facts: SendFacts,
        ref: SendRef,
        body: bytes,
        upstream: Upstream,
        token: str,
        admitted: tuple[tuple[int, int], ...] = (),
    ) -> web.Response:
        ctx.decide(Decision.FORWARDED, "first-attempt")
        try:
            # Identity encoding: a stored answer must be replayable to any client.
            result = await self._timed_send(request, facts, body, upstream, identity=True)
        except NotSent as exc:
            await self._settle(ctx, facts, ref, token, settle(AttemptEnd.CONNECT_FAILED))
            raise UpstreamUnreachable(reason="connect-failed") from exc
        except SentNoAnswer as exc:
            timed_out = exc.kind == "timeout"
            settlement = settle(AttemptEnd.TIMED_OUT if timed_out else AttemptEnd.RESET)
            await self._settle(ctx, facts, ref, token, settlement)
            error = UpstreamTimedOut if timed_out else UpstreamReset
            raise error(reason=settlement.reason) from exc
        except asyncio.CancelledError:
            # The request may already be on the wire; settle before letting the cancel through.
            # The task is tracked so that shutdown waits for it before closing the store.
            cancelled = asyncio.ensure_future(
                self._settle(ctx, facts, ref, token, settle(AttemptEnd.CANCELLED))
            )
            self._settling.add(cancelled)
            cancelled.add_done_callback(self._settling.discard)
            await asyncio.shield(cancelled)
            raise
        if self.callbacks is not None:
            self.callbacks.learn_credential(request.headers.get("Authorization", ""), result.status)
        settlement = settle(AttemptEnd.ANSWERED, result.status)
        if settlement.reason != "first-attempt":
            ctx.reason = settlement.reason
        await self._settle(ctx, facts, ref, token, settlement, result)
        if admitted and not settlement.counted:
            await self._unadmit(ctx, facts, admitted)
        return web.Response(
            status=result.status,
            body=result.body,
            headers=downstream_response_headers(result.headers),
        )

    async def _timed_send(
        self,
        request: web.Request,
        facts: SendFacts,
        body: bytes,
        upstream: Upstream,
        *,
        identity: bool,
    ) -> UpstreamResult:
        """One send upstream (429s retried within the budget, all under one total deadline),
        timed and counted. NotSent and SentNoAnswer propagate: what they mean for the record is
        the caller's to settle."""
        ctx = request[CONTEXT]
        headers = upstream_request_headers(
            request.headers, upstream.authority, identity_encoding=identity
        )
        started = time.perf_counter()
        result = await self._send_within_429_budget(
            ctx, request.method, upstream_url(upstream, request), headers, body
        )
        elapsed = time.perf_counter() - started
        ctx.upstream_status = result.status
        ctx.upstream_ms = round(elapsed * 1000, 2)
        self.metrics.upstream_latency.labels(facts.route.route.name).observe(elapsed)
        self.metrics.count_send(facts.account_sid, result.status)
        return result

    async def _send_within_429_budget(
        self, ctx: RequestContext, method: str, url: str, headers: CIMultiDict[str], body: bytes
    ) -> UpstreamResult:
        """Twilio's 429 means "never processed": retry it here, with exponential backoff and
        jitter on top of it, never sooner than Retry-After, while the budget lasts; then the
        429 goes back.

        The whole of it runs under one total deadline (`UpstreamClient.deadline`: the budget
        plus one full attempt, the base of the claim's lease), so an upstream that trickles its
        answer cannot keep the owner sending after its record could be claimed again. Past the
        deadline the request is cut and the answer is ambiguous: SentNoAnswer("timeout")."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        retry_until = started + self.policy.retry_429_budget
        deadline = started + self.client.deadline(self.policy.retry_429_budget)
        backoff = 0.1
        attempt = 0
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    result = await self.client.send(method, url, headers, body)
                    if result.status != 429:
                        return result
                    # Retry-After is a floor (docs/contract.md#protection): the jitter only
                    # ever adds to it, up to 20 %, and is cut where the budget ends; a floor
                    # past it gives up.
                    floor = max(_retry_after(result), backoff)
                    left = retry_until - loop.time()
                    if floor > left:
                        return result
                    wait = min(floor + random.uniform(0, 0.2 * floor), left)
                    attempt += 1
                    ctx.fields["upstream_429_retries"] = attempt
                    self.metrics.upstream_429_retries.inc()
                    await asyncio.sleep(wait)
                    backoff = min(backoff * 2, 5.0)
        except TimeoutError as exc:
            # Only the deadline's own expiry: the client translates its per-read timeouts.
            raise SentNoAnswer("timeout", "upstream deadline passed") from exc

    async def _settle(
        self,
        ctx: RequestContext,
        facts: SendFacts,
        ref: SendRef,
        token: str,
        settlement: Settlement,
        result: UpstreamResult | None = None,
    ) -> None:
        """Record how the attempt ended (guard/outcome.py). Never raises a store failure:
        what the store does not accept now, the journal keeps and retries."""
        action = settlement.action
        if action is StoreAction.RELEASE:
            await self._release(ctx, facts, ref, token)
            return
        if action is StoreAction.MARK_UNKNOWN:
            pending = self._unknown_outcome(ctx, facts, ref, token, settlement.unknown_reason)
        else:
            assert result is not None
            pending = self._completion(ctx, facts, ref, token, result, settlement)
        error = await self.journal.settle(pending)
        if error is not None:
            self._store_failed(ctx, action.value, error)

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
        sid = _message_sid(result.status, readable)
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
                        **_scope_fields(ctx))  # fmt: skip
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
                    **_scope_fields(ctx))  # fmt: skip

        async def write() -> None:
            await self.store.mark_unknown(
                ref,
                token=token,
                reason=reason,
                ttl_ms=self.policy.unknown_ttl_ms(facts),
                require_expired=False,
            )

        return PendingOutcome(ref, StoreAction.MARK_UNKNOWN, facts.payload_hash, write, self.store)

    async def _release(
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
            # "Not ours / not there" can be a misrouted answer while a cluster slot migrates
            # (the claim ran on the importing node): trust it only if a read agrees, or the
            # claim would block the message although nothing was sent.
            record = await self.store.get(ref)
            if (
                record is not None
                and record.token == token
                and record.state is RecordState.IN_FLIGHT
            ):
                raise StoreError("release not applied: the claim is still held")
            log.warning(CLAIM_LOST, request_id=request_id, step="release")

        pending = PendingOutcome(ref, StoreAction.RELEASE, facts.payload_hash, write, self.store)
        error = await self.journal.settle(pending)
        if error is not None:
            self._store_failed(ctx, "release", error)
            return False
        return True

    async def _unadmit(
        self, ctx: RequestContext, facts: SendFacts, slots: tuple[tuple[int, int], ...]
    ) -> None:
        """Twilio refused the send: it leaves the account's windows. Best effort, not
        journaled (a decrement is not safe to repeat); a failure only over-counts."""
        try:
            await self.store.unadmit_account(facts.account_sid, slots)
        except StoreError as exc:
            self._store_failed(ctx, "account", exc)

    async def _mark_stale(
        self, ctx: RequestContext, facts: SendFacts, ref: SendRef, record: DedupRecord
    ) -> None:
        try:
            marked = await self.store.mark_unknown(
                ref,
                token=record.token,
                reason="claim-owner-gone",
                ttl_ms=self.policy.unknown_ttl_ms(facts),
                require_expired=True,
            )
        except StoreError as exc:
            self._store_failed(ctx, "mark_stale", exc)
            raise StoreUnavailable(reason="store-error") from exc
        if marked == 1:
            self.metrics.records_unknown.labels("owner-gone").inc()
            log.warning(RECORD_MARKED_UNKNOWN, request_id=ctx.request_id,
                        reason="claim-owner-gone", **_scope_fields(ctx))  # fmt: skip


def _refusal(verdict: Verdict) -> SendguardError:
    if verdict.decision is Decision.SUPPRESSED:
        assert verdict.twilio_code is not None
        return Suppressed(
            verdict.twilio_code,
            f"resending cannot succeed: Twilio answered {verdict.twilio_code} for this recipient",
            reason=verdict.reason,
        )
    error = BreakerOpen if verdict.decision is Decision.BREAKER_OPEN else RateLimited
    return error(retry_after=verdict.retry_after, reason=verdict.reason)


def _scope_fields(ctx: RequestContext) -> dict[str, object]:
    return {key: ctx.fields[key] for key in ("account", "to", "to_ref") if key in ctx.fields}


def _retry_after(result: UpstreamResult) -> float:
    try:
        return max(0.0, float(result.headers.get("Retry-After", "0")))
    except ValueError:
        return 0.0


def _replay(ctx: RequestContext, record: DedupRecord, reason: str) -> web.Response:
    assert record.response is not None, "a DONE record always holds its response"
    return _replay_response(ctx, record.response, record.message_sid, reason)


def _replay_response(
    ctx: RequestContext, response: StoredResponse, message_sid: str, reason: str
) -> web.Response:
    ctx.decide(Decision.REPLAYED, reason)
    ctx.upstream_status = response.status
    if message_sid:
        ctx.fields["message_sid"] = message_sid
    headers = CIMultiDict(response.headers)
    headers[REPLAYED_HEADER] = "true"
    return web.Response(status=response.status, body=response.body, headers=headers)


def _message_sid(status: int, body: bytes) -> str:
    if not 200 <= status < 300:
        return ""
    try:
        payload = json.loads(body)
    except ValueError:
        return ""  # e.g. the XML flavour of the API
    sid = payload.get("sid") if isinstance(payload, dict) else None
    return sid if isinstance(sid, str) else ""


def _reconciliation_meta(facts: SendFacts) -> dict[str, str]:
    """What a later reconciliation against Twilio's message list needs to find this send."""
    return {
        "account": facts.account_sid,
        "route": facts.route.route.name,
        "to": facts.to,
        "from": facts.sender,
        "body_sha": facts.body_hash,
        "body_smart": facts.body_smart_hash,
    }
