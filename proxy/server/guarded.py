"""Guarded sends: facts -> claim (one round trip) -> pure decisions -> act -> record the outcome.

The orchestrator; each step lives in a module of its own, and every decision in the pure core
(proxy/guard/guarded_decide.py, proxy/guard/outcome.py):

    answer_pending   a duplicate of a send whose outcome is still owed: answered from memory
    claiming.py      the claim loop (replay, wait, reclaim, mark stale, key mismatch)
    admission.py     recipient protection and the account ceiling
    sending.py       upstream, under one deadline, 429s retried inside the budget
    settling.py      how it ended, recorded: complete / release / UNKNOWN

Round trips per send (docs/contract.md#budget): a fresh send costs two (claim, complete; the
complete written after the answer), a replay one (claim), a refused send two (claim,
release). Every way an attempt can end is settled exactly once:

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
import secrets
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from proxy.decision import Decision
from proxy.errors import (
    KeyMismatch,
    OutcomeUnknown,
    StoreUnavailable,
    UpstreamReset,
    UpstreamTimedOut,
    UpstreamUnreachable,
)
from proxy.guard.dedup import DedupRecord, StoredResponse
from proxy.guard.facts import SendFacts
from proxy.guard.guarded_decide import ClaimStep, OwedOutcome, OwedStep, Reason, answer_owed
from proxy.guard.outcome import AttemptEnd, settle
from proxy.metrics import Metrics
from proxy.server.admission import Admission
from proxy.server.claiming import Claimed, Claimer, dedup_hit
from proxy.server.context import CONTEXT, Answer, RequestContext
from proxy.server.guard_policy import GuardPolicy
from proxy.server.headers import REPLAYED_HEADER, downstream_response_headers
from proxy.server.reconcile import GATE_SECONDS, LookupVerdict, Reconciler
from proxy.server.sending import UpstreamSender
from proxy.server.settlement import SettlementJournal
from proxy.server.settling import Settler, Slots
from proxy.store.send_store import SendRef, SendStore
from proxy.tee.rewrite import encode_form, rewrite_status_callback
from proxy.tee.tokens import AuthTokenBook
from proxy.tee.urls import CallbackUrlCodec
from proxy.upstream.client import NotSent, SentNoAnswer, UpstreamClient
from proxy.upstream.hosts import Upstream

__all__ = ["CallbackRouting", "GuardPolicy", "SendGuard"]

# An UNKNOWN send is looked up in Twilio at most this often: a retry sooner learns nothing.
RECONCILE_RETRY_AFTER = GATE_SECONDS


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
        self._settler = Settler(store, policy, metrics, self.journal)
        self._claimer = Claimer(store, policy, metrics, self._settler)
        self._admission = Admission(store, policy, metrics, self._settler)
        self._sender = UpstreamSender(client, metrics, policy.retry_429_budget)
        # Records this instance is sending right now (claim made, outcome not yet settled):
        # in `local` mode a retry of one must not be claimed afresh on the outage store.
        self._sending: dict[tuple[str, str], int] = {}

    async def drain(self) -> None:
        """Wait for settling work that outlived its request (before the store closes)."""
        await self._settler.drain()

    def sending(self, ref: SendRef) -> bool:
        return (ref.tag, ref.dedup_id) in self._sending

    async def handle(
        self, request: web.Request, facts: SendFacts, body: bytes, upstream: Upstream
    ) -> Answer:
        """Claim, decide, forward, record. Raises StoreUnavailable only before anything was
        sent (the gate may then retry the whole send on another store)."""
        ctx = request[CONTEXT]
        ref = SendRef(facts.recipient_tag, facts.dedup_id)
        answered = await self.answer_pending(ctx, facts, ref)
        if answered is not None:
            return answered
        if self.journal.full:
            # Every slot holds an outcome of a send already made: take no new risk.
            raise StoreUnavailable(reason=Reason.JOURNAL_FULL)
        token = secrets.token_hex(16)
        found = await self._claimer.claim(ctx, facts, ref, token)
        if isinstance(found, Claimed):
            admitted = await self._admission.admit(ctx, facts, ref, token, found.claim)
            body = self._outbound(facts, body)
            return await self._forward(request, ctx, facts, ref, body, upstream, token, admitted)
        record = found.record
        assert record is not None
        if found.step is ClaimStep.REPLAY:
            dedup_hit(self.metrics, Decision.REPLAYED, facts.by_key)
            assert record.response is not None, "a DONE record always holds its response"
            return _replay(ctx, record.response, record.message_sid, found.reason)
        assert found.step is ClaimStep.UNKNOWN
        return await self._unknown(request, ctx, facts, ref, body, upstream, token, record,
                                   found.reason)  # fmt: skip

    async def answer_pending(
        self, ctx: RequestContext, facts: SendFacts, ref: SendRef
    ) -> Answer | None:
        """A duplicate of a send whose outcome the store has not accepted yet is answered
        from the journal: the real answer, or 409 while it is UNKNOWN. None: go on."""
        pending = self.journal.pending(ref)
        if pending is None:
            return None
        owed = OwedOutcome(
            pending.action, pending.payload_hash, pending.store is self.store, pending.landing
        )
        step, reason = answer_owed(owed, payload_hash=facts.payload_hash, by_key=facts.by_key)
        match step:
            case OwedStep.GO_ON:
                return None
            case OwedStep.KEY_MISMATCH:
                dedup_hit(self.metrics, Decision.KEY_MISMATCH, facts.by_key)
                raise KeyMismatch(reason=reason)
            case OwedStep.RELEASE_PENDING:
                if await self.journal.retry_now(pending):
                    return None
                raise StoreUnavailable(reason=reason)
            case OwedStep.UNKNOWN:
                dedup_hit(self.metrics, Decision.OUTCOME_UNKNOWN, facts.by_key)
                raise OutcomeUnknown(reason=reason)
        assert pending.response is not None
        dedup_hit(self.metrics, Decision.REPLAYED, facts.by_key)
        return _replay(ctx, pending.response, pending.message_sid, reason)

    async def forward_unguarded(
        self, request: web.Request, facts: SendFacts, body: bytes, upstream: Upstream
    ) -> Answer:
        """`on_store_error=open` with the store down: one send, no claim and no record. The
        operator chose delivery over dedup; the log line and the metric say so every time."""
        try:
            result = await self._sender.send(request, facts, body, upstream, identity=False)
        except NotSent as exc:
            raise UpstreamUnreachable(reason=Reason.CONNECT_FAILED) from exc
        except SentNoAnswer as exc:
            if exc.kind == "timeout":
                raise UpstreamTimedOut(reason=Reason.UPSTREAM_TIMEOUT_UNGUARDED) from exc
            raise UpstreamReset(reason=Reason.UPSTREAM_RESET_UNGUARDED) from exc
        response = web.Response(
            status=result.status,
            body=result.body,
            headers=downstream_response_headers(result.headers),
        )
        return Answer(response, Decision.FORWARDED, Reason.STORE_DOWN_UNGUARDED)

    def _outbound(self, facts: SendFacts, body: bytes) -> bytes:
        return self.callbacks.outbound_body(facts, body) if self.callbacks is not None else body

    async def _unknown(
        self,
        request: web.Request,
        ctx: RequestContext,
        facts: SendFacts,
        ref: SendRef,
        body: bytes,
        upstream: Upstream,
        token: str,
        record: DedupRecord,
        reason: str,
    ) -> Answer:
        """An UNKNOWN record: only positive evidence from Twilio resolves it (reconcile.py)."""
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
                dedup_hit(self.metrics, Decision.REPLAYED, facts.by_key)
                return _replay(ctx, found.response, found.message_sid, Reason.RECONCILED_FOUND)
            if found.verdict is LookupVerdict.RESEND:
                # `unknown_resend_after`: the one resend the operator opted into.
                ctx.fields["resent_after_silence"] = True
                body = self._outbound(facts, body)
                return await self._forward(request, ctx, facts, ref, body, upstream, found.token)
        dedup_hit(self.metrics, Decision.OUTCOME_UNKNOWN, facts.by_key)
        raise OutcomeUnknown(reason=reason, retry_after=RECONCILE_RETRY_AFTER)

    async def _forward(
        self,
        request: web.Request,
        ctx: RequestContext,
        facts: SendFacts,
        ref: SendRef,
        body: bytes,
        upstream: Upstream,
        token: str,
        admitted: Slots = (),
    ) -> Answer:
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
        admitted: Slots,
    ) -> Answer:
        settler = self._settler
        try:
            # Identity encoding: a stored answer must be replayable to any client.
            result = await self._sender.send(request, facts, body, upstream, identity=True)
        except NotSent as exc:
            await settler.ended(ctx, facts, ref, token, settle(AttemptEnd.CONNECT_FAILED))
            raise UpstreamUnreachable(reason=Reason.CONNECT_FAILED) from exc
        except SentNoAnswer as exc:
            timed_out = exc.kind == "timeout"
            settlement = settle(AttemptEnd.TIMED_OUT if timed_out else AttemptEnd.RESET)
            await settler.ended(ctx, facts, ref, token, settlement)
            error = UpstreamTimedOut if timed_out else UpstreamReset
            raise error(reason=settlement.reason) from exc
        except asyncio.CancelledError:
            # The request may already be on the wire; settle before letting the cancel through.
            await asyncio.shield(settler.cancelled(ctx, facts, ref, token))
            raise
        if self.callbacks is not None:
            self.callbacks.learn_credential(request.headers.get("Authorization", ""), result.status)
        # A completion is owed in the journal and written behind this answer (settlement.py).
        settlement = await settler.answered(ctx, facts, ref, token, result, admitted)
        response = web.Response(
            status=result.status,
            body=result.body,
            headers=downstream_response_headers(result.headers),
        )
        return Answer(response, Decision.FORWARDED, settlement.reason)


def _replay(ctx: RequestContext, response: StoredResponse, message_sid: str, reason: str) -> Answer:
    ctx.upstream_status = response.status
    if message_sid:
        ctx.fields["message_sid"] = message_sid
    headers = CIMultiDict(response.headers)
    headers[REPLAYED_HEADER] = "true"
    replayed = web.Response(status=response.status, body=response.body, headers=headers)
    return Answer(replayed, Decision.REPLAYED, reason)
