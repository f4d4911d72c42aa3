"""Admitting a claimed send: recipient protection (from the claim's own snapshot) and, when
configured, the account ceiling (one more round trip). A refusal hands the claim back."""

from __future__ import annotations

from proxy.errors import StoreUnavailable
from proxy.guard.facts import SendFacts
from proxy.guard.guarded_decide import Reason, account_refusal, refusal
from proxy.guard.protection import GuardMode, judge, judge_account
from proxy.logs import WOULD_BLOCK, get_logger
from proxy.metrics import Metrics
from proxy.server.context import RequestContext
from proxy.server.guard_policy import GuardPolicy
from proxy.server.settling import Settler, Slots
from proxy.store.send_store import ClaimResult, SendRef, SendStore, StoreError

log = get_logger("sendguard.guard")


class Admission:
    def __init__(
        self, store: SendStore, policy: GuardPolicy, metrics: Metrics, settler: Settler
    ) -> None:
        self.store = store
        self.policy = policy
        self.metrics = metrics
        self.settler = settler

    async def admit(
        self, ctx: RequestContext, facts: SendFacts, ref: SendRef, token: str, claim: ClaimResult
    ) -> Slots:
        """Raises the refusal (claim released); else the account windows the send was counted
        in (to take it out again if Twilio refuses it)."""
        await self._protect_recipient(ctx, facts, ref, token, claim)
        if not self.policy.account_ceiling.active:
            return ()
        return await self._account_ceiling(ctx, facts, ref, token, claim.now_ms)

    async def _protect_recipient(
        self, ctx: RequestContext, facts: SendFacts, ref: SendRef, token: str, claim: ClaimResult
    ) -> None:
        assert claim.recipient is not None
        verdict = judge(claim.recipient, self.policy.protection, claim.now_ms)
        if verdict.would_block:
            log.warning(WOULD_BLOCK, request_id=ctx.request_id, decision=verdict.decision,
                        reason=verdict.reason, **ctx.scope_fields())  # fmt: skip
            ctx.fields["would_block"] = verdict.reason
            assert verdict.decision is not None
            self.metrics.would_block.labels(verdict.decision.value).inc()
        if verdict.allow:
            if verdict.reason:
                ctx.fields["protection"] = verdict.reason
            return
        await self.settler.release(
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
                        cooldown_s=verdict.trip_ms / 1000, **ctx.scope_fields())  # fmt: skip
        raise refusal(verdict)

    async def _account_ceiling(
        self, ctx: RequestContext, facts: SendFacts, ref: SendRef, token: str, now_ms: int
    ) -> Slots:
        """Its keys live in the account's slot, which the recipient's claim script cannot
        touch on a cluster: hence a round trip of its own."""
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
            self.settler.store_failed(ctx, "account", exc)
            await self.settler.release(ctx, facts, ref, token)
            raise StoreUnavailable(reason=Reason.STORE_ERROR) from exc
        verdict = judge_account(counts, ceiling, now_ms)
        if verdict.would_block:
            assert verdict.decision is not None
            ctx.fields["would_block"] = verdict.reason
            self.metrics.would_block.labels(verdict.decision.value).inc()
            log.warning(WOULD_BLOCK, request_id=ctx.request_id, decision=verdict.decision,
                        reason=verdict.reason, account=facts.account_sid)  # fmt: skip
        if not verdict.allow:
            await self.settler.release(ctx, facts, ref, token)
            raise account_refusal(verdict)
        return slots
