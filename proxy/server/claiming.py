"""The claim loop: claim the send's identity (one round trip), ask the pure core what the answer
means (guard/guarded_decide.next_step), and act on it until the send is ours or is answered.

    ours (claimed, enough replicas)            -> Claimed: the caller admits and sends it
    settled record (DONE / UNKNOWN)            -> its Step: the caller replays or reconciles
    key mismatch / not replicated / in flight  -> raised (422 / 503 / 409)
    our own claim run twice, an owner gone     -> handled here, then claimed again
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from proxy.decision import Decision
from proxy.errors import InFlight, KeyMismatch, StoreUnavailable
from proxy.guard.facts import SendFacts
from proxy.guard.guarded_decide import (
    ClaimStep,
    ClaimView,
    Reason,
    SendIdentity,
    Step,
    dedup_kind,
    next_poll_delay,
    next_step,
)
from proxy.metrics import Metrics
from proxy.server.context import RequestContext
from proxy.server.guard_policy import GuardPolicy
from proxy.server.settling import Settler
from proxy.store.send_store import ClaimRequest, ClaimResult, SendRef, SendStore, StoreError


@dataclass(frozen=True)
class Claimed:
    """The send is ours: nobody else may send it until we settle it."""

    claim: ClaimResult


def dedup_hit(metrics: Metrics, decision: Decision, by_key: bool) -> None:
    metrics.dedup_hits.labels(decision.value, dedup_kind(by_key)).inc()


class Claimer:
    def __init__(
        self, store: SendStore, policy: GuardPolicy, metrics: Metrics, settler: Settler
    ) -> None:
        self.store = store
        self.policy = policy
        self.metrics = metrics
        self.settler = settler

    async def claim(
        self, ctx: RequestContext, facts: SendFacts, ref: SendRef, token: str
    ) -> Claimed | Step:
        """Claimed, or the Step of a settled record (REPLAY / UNKNOWN, with its record)."""
        request = self.policy.claim_request(facts, token)
        send = SendIdentity(ref.tag, facts.payload_hash, facts.by_key, token)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.inflight_wait
        delay = self.policy.poll_first
        while True:
            claim = await self._claim_once(ctx, facts, ref, request)
            view = ClaimView(claim.claimed, claim.now_ms, claim.record, claim.key_owner,
                             claim.replicas)  # fmt: skip
            step = next_step(
                view,
                send,
                min_replicas=self.policy.min_replicas,
                wait_left=deadline - loop.time(),
                delay=delay,
            )
            match step.step:
                case ClaimStep.SEND:
                    return Claimed(claim)
                case ClaimStep.REPLAY | ClaimStep.UNKNOWN:
                    return step
                case ClaimStep.KEY_MISMATCH:
                    if step.release_first:
                        await self.settler.release(ctx, facts, ref, token)
                    dedup_hit(self.metrics, Decision.KEY_MISMATCH, facts.by_key)
                    raise KeyMismatch(reason=step.reason)
                case ClaimStep.NOT_REPLICATED:
                    # A failover now could lose the claim and let a retry send again: nothing
                    # leaves until enough replicas hold it (store_min_replicas,
                    # docs/contract.md#outage).
                    await self.settler.release(ctx, facts, ref, token)
                    self.metrics.store_errors.labels("replicas").inc()
                    raise StoreUnavailable(reason=step.reason)
                case ClaimStep.RECLAIM:
                    # Nothing was sent: hand it back and claim afresh for a full verdict.
                    if not await self.settler.release(ctx, facts, ref, token):
                        raise StoreUnavailable(reason=Reason.STORE_ERROR)
                case ClaimStep.MARK_STALE:
                    assert step.record is not None
                    await self.settler.mark_stale(ctx, facts, ref, step.record)
                    # then re-read: it is UNKNOWN now, or the owner finished after all
                case ClaimStep.GIVE_UP:
                    dedup_hit(self.metrics, Decision.IN_FLIGHT, facts.by_key)
                    raise InFlight(retry_after=step.retry_after, reason=step.reason)
                case ClaimStep.WAIT:
                    await asyncio.sleep(step.sleep)
                    delay = next_poll_delay(delay, self.policy.poll_max)

    async def _claim_once(
        self, ctx: RequestContext, facts: SendFacts, ref: SendRef, request: ClaimRequest
    ) -> ClaimResult:
        try:
            return await self.store.claim(ref, request)
        except StoreError as exc:
            self.settler.store_failed(ctx, "claim", exc)
            # The claim may have run with its answer lost: hand it back, or it would block
            # the message although nothing was sent ("a claim happens whole",
            # docs/contract.md#dedup).
            await self.settler.release(ctx, facts, ref, request.token)
            raise StoreUnavailable(reason=Reason.STORE_ERROR) from exc
