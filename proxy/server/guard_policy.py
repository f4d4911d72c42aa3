"""The guard's settings for one send (TTLs, lease, waits, protection, what a claim asks for),
made from the parsed Settings once at start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.guard.facts import SendFacts
from proxy.guard.protection import AccountCeiling, GuardMode, ProtectionPolicy
from proxy.guard.suppression import SuppressionRule, scope_fields
from proxy.store.send_store import ClaimRequest, key_lookup_id
from proxy.upstream.client import guarded_send_deadline

if TYPE_CHECKING:
    from proxy.settings import Settings

# Added to the guarded send's total upstream deadline (`guarded_send_deadline`) to make the
# lease: covers the store work between claim and send (an account-ceiling check), the store
# write after the answer and scheduling noise. Erring short is safe: a live owner past its
# lease can still complete, and a duplicate meanwhile finds it stale and turns it UNKNOWN,
# never a resend; the in-flight record itself lives max(ttl, 2 x lease).
LEASE_MARGIN_SECONDS = 2.0


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

    def claim_request(self, facts: SendFacts, token: str) -> ClaimRequest:
        windows = self.protection.windows if self.protection.keep_ms else ()
        return ClaimRequest(
            token=token,
            payload_hash=facts.payload_hash,
            lease_ms=self.lease_ms,
            ttl_ms=self.claim_ttl_ms(facts),
            slide_ms=0 if facts.by_key else self.ttl_ms(facts),
            meta=reconciliation_meta(facts),
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


def reconciliation_meta(facts: SendFacts) -> dict[str, str]:
    """What a later reconciliation against Twilio's message list needs to find this send."""
    return {
        "account": facts.account_sid,
        "route": facts.route.route.name,
        "to": facts.to,
        "from": facts.sender,
        "body_sha": facts.body_hash,
        "body_smart": facts.body_smart_hash,
    }


def guard_policy(settings: Settings) -> GuardPolicy:
    protection = ProtectionPolicy(
        windows=settings.recipient_limits.windows,
        limits_mode=GuardMode(settings.recipient_limits_mode),
        suppression_mode=GuardMode(settings.suppression_mode),
        cooldown=settings.breaker_cooldown,
        max_cooldown=settings.breaker_max_cooldown,
    )
    # The owner of a claim sends under a total deadline (its 429 retries plus one full
    # attempt, enforced in SendGuard), then records: the lease is that deadline plus a margin.
    lease = (
        guarded_send_deadline(
            settings.upstream_connect_timeout,
            settings.upstream_read_timeout,
            settings.upstream_429_budget,
        )
        + LEASE_MARGIN_SECONDS
    )
    return GuardPolicy(
        idempotency_ttl=settings.idempotency_ttl,
        inflight_wait=settings.inflight_wait,
        lease=lease,
        protection=protection,
        suppression_rules=settings.suppressions.rules,
        retry_429_budget=settings.upstream_429_budget,
        account_ceiling=AccountCeiling(
            windows=settings.account_limits.windows,
            mode=GuardMode(settings.account_limits_mode),
        ),
        min_replicas=settings.store_min_replicas,
    )
