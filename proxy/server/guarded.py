"""Guarded sends: facts -> claim (one round trip) -> pure decision -> act -> record the outcome.

Round trips per send (SPEC §6): a fresh send costs two (claim, complete), a replay one (claim).
Every way an attempt can end is settled exactly once:

    upstream answered 2xx/4xx  -> complete (stored, replayed to duplicates)
    upstream answered 429      -> release  (never processed: a retry may send)
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
import secrets
import time
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from proxy.decision import Decision
from proxy.errors import (
    InFlight,
    KeyMismatch,
    OutcomeUnknown,
    StoreUnavailable,
    UpstreamReset,
    UpstreamTimedOut,
    UpstreamUnreachable,
)
from proxy.guard.dedup import Action, DedupRecord, Outcome, StoredResponse, classify_status, decide
from proxy.guard.facts import SendFacts, build_facts
from proxy.guard.routes import RouteMatch
from proxy.logs import (
    CLAIM_LOST,
    RECORD_MARKED_UNKNOWN,
    STORE_ERROR,
    correlation_hash,
    get_logger,
    mask_phone,
)
from proxy.server.context import CONTEXT, RequestContext
from proxy.server.forward import upstream_url
from proxy.server.headers import (
    REPLAYED_HEADER,
    downstream_response_headers,
    replayable_headers,
    upstream_request_headers,
)
from proxy.store.dedup_store import DedupStore, StoreError
from proxy.upstream.client import NotSent, SentNoAnswer, UpstreamClient, UpstreamResult
from proxy.upstream.hosts import Upstream

log = get_logger("sendguard.guard")


@dataclass(frozen=True)
class DedupPolicy:
    idempotency_ttl: float  # seconds a keyed record (and any UNKNOWN record) is kept
    inflight_wait: float  # how long a duplicate waits for the original before 409
    lease: float  # longest an owner can still be working: connect + read timeout + margin
    poll_first: float = 0.02
    poll_max: float = 0.25

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


class SendGuard:
    def __init__(self, store: DedupStore, client: UpstreamClient, policy: DedupPolicy) -> None:
        self.store = store
        self.client = client
        self.policy = policy

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
        token = secrets.token_hex(16)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.inflight_wait
        delay = self.policy.poll_first
        while True:
            try:
                claim = await self.store.claim(
                    facts.dedup_id,
                    token=token,
                    payload_hash=facts.payload_hash,
                    lease_ms=self.policy.lease_ms,
                    ttl_ms=self.policy.claim_ttl_ms(facts),
                    slide_ms=0 if facts.by_key else self.policy.ttl_ms(facts),
                    meta=_reconciliation_meta(facts),
                )
            except StoreError as exc:
                log.error(STORE_ERROR, request_id=ctx.request_id, error=str(exc))
                raise StoreUnavailable(reason="store-error") from exc
            decision = decide(
                claim.record,
                payload_hash=facts.payload_hash,
                by_key=facts.by_key,
                now_ms=claim.now_ms,
            )
            record = decision.record
            if decision.action is Action.FORWARD:
                return await self._forward(request, ctx, facts, body, upstream, token)
            assert record is not None
            if decision.action is Action.REPLAY:
                return _replay(ctx, record, decision.reason)
            if decision.action is Action.KEY_MISMATCH:
                raise KeyMismatch(reason=decision.reason)
            if decision.action is Action.OUTCOME_UNKNOWN:
                raise OutcomeUnknown(reason=decision.reason)
            if decision.action is Action.MARK_STALE:
                await self._mark_stale(ctx, facts, record)
                continue  # re-read: it is UNKNOWN now, or the owner finished after all
            remaining = deadline - loop.time()
            if remaining <= 0:
                lease_left = (record.lease_until_ms - claim.now_ms) / 1000
                raise InFlight(retry_after=max(1.0, lease_left), reason=decision.reason)
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, self.policy.poll_max)

    async def _forward(
        self,
        request: web.Request,
        ctx: RequestContext,
        facts: SendFacts,
        body: bytes,
        upstream: Upstream,
        token: str,
    ) -> web.Response:
        ctx.decide(Decision.FORWARDED, "first-attempt")
        headers = upstream_request_headers(
            request.headers, upstream.authority, identity_encoding=True
        )
        started = time.perf_counter()
        try:
            result = await self.client.send(
                request.method, upstream_url(upstream, request), headers, body
            )
        except NotSent as exc:
            await self._release(ctx, facts, token)
            raise UpstreamUnreachable(reason="connect-failed") from exc
        except SentNoAnswer as exc:
            await self._mark_own_unknown(ctx, facts, token, f"upstream-{exc.kind}")
            error = UpstreamTimedOut if exc.kind == "timeout" else UpstreamReset
            raise error(reason=f"upstream-{exc.kind}") from exc
        except asyncio.CancelledError:
            # The request may already be on the wire; settle before letting the cancel through.
            await asyncio.shield(self._mark_own_unknown(ctx, facts, token, "cancelled"))
            raise
        ctx.upstream_status = result.status
        ctx.upstream_ms = round((time.perf_counter() - started) * 1000, 2)
        outcome = classify_status(result.status)
        if outcome is Outcome.NOT_SENT:
            await self._release(ctx, facts, token)
            ctx.reason = "upstream-429-released"
        elif outcome is Outcome.AMBIGUOUS:
            await self._mark_own_unknown(ctx, facts, token, f"upstream-{result.status}")
            ctx.reason = f"upstream-{result.status}-outcome-unknown"
        else:
            await self._complete(ctx, facts, token, result)
        return web.Response(
            status=result.status,
            body=result.body,
            headers=downstream_response_headers(result.headers),
        )

    async def _complete(
        self, ctx: RequestContext, facts: SendFacts, token: str, result: UpstreamResult
    ) -> None:
        sid = _message_sid(result)
        if sid:
            ctx.fields["message_sid"] = sid
        stored = StoredResponse(result.status, replayable_headers(result.headers), result.body)
        try:
            done = await self.store.complete(
                facts.dedup_id,
                token=token,
                response=stored,
                message_sid=sid,
                ttl_ms=self.policy.ttl_ms(facts),
            )
        except StoreError as exc:
            # The message WAS sent: answer with it. The unrecorded claim turns UNKNOWN when
            # its lease runs out, so a duplicate is refused rather than resent.
            log.error(STORE_ERROR, request_id=ctx.request_id, step="complete", error=str(exc))
            return
        if done == 0:
            log.warning(CLAIM_LOST, request_id=ctx.request_id, step="complete")

    async def _release(self, ctx: RequestContext, facts: SendFacts, token: str) -> None:
        try:
            released = await self.store.release(facts.dedup_id, token=token)
        except StoreError as exc:
            log.error(STORE_ERROR, request_id=ctx.request_id, step="release", error=str(exc))
            return
        if not released:
            log.warning(CLAIM_LOST, request_id=ctx.request_id, step="release")

    async def _mark_own_unknown(
        self, ctx: RequestContext, facts: SendFacts, token: str, reason: str
    ) -> None:
        try:
            await self.store.mark_unknown(
                facts.dedup_id,
                token=token,
                reason=reason,
                ttl_ms=self.policy.unknown_ttl_ms(facts),
                require_expired=False,
            )
        except StoreError as exc:
            log.error(STORE_ERROR, request_id=ctx.request_id, step="mark_unknown", error=str(exc))
            return
        log.warning(
            RECORD_MARKED_UNKNOWN,
            request_id=ctx.request_id,
            reason=reason,
            account=facts.account_sid,
            to=mask_phone(facts.to),
        )

    async def _mark_stale(self, ctx: RequestContext, facts: SendFacts, record: DedupRecord) -> None:
        try:
            marked = await self.store.mark_unknown(
                facts.dedup_id,
                token=record.token,
                reason="claim-owner-gone",
                ttl_ms=self.policy.unknown_ttl_ms(facts),
                require_expired=True,
            )
        except StoreError as exc:
            log.error(STORE_ERROR, request_id=ctx.request_id, step="mark_stale", error=str(exc))
            raise StoreUnavailable(reason="store-error") from exc
        if marked == 1:
            log.warning(
                RECORD_MARKED_UNKNOWN,
                request_id=ctx.request_id,
                reason="claim-owner-gone",
                account=facts.account_sid,
                to=mask_phone(facts.to),
            )


def _replay(ctx: RequestContext, record: DedupRecord, reason: str) -> web.Response:
    assert record.response is not None, "a DONE record always holds its response"
    ctx.decide(Decision.REPLAYED, reason)
    ctx.upstream_status = record.response.status
    if record.message_sid:
        ctx.fields["message_sid"] = record.message_sid
    headers = CIMultiDict(record.response.headers)
    headers[REPLAYED_HEADER] = "true"
    return web.Response(status=record.response.status, body=record.response.body, headers=headers)


def _message_sid(result: UpstreamResult) -> str:
    if not 200 <= result.status < 300:
        return ""
    try:
        payload = json.loads(result.body)
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
    }
