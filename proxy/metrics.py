"""Prometheus metrics, one registry per app (several instances can share a process in tests).

Label values are bounded vocabularies (decisions, guard names, Twilio codes, store steps), plus
the account SID on `sendguard_sends_total` (one series per Twilio account, which SPEC §5 asks
for): never a phone number, key or message SID.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "sendguard_requests",
            "Requests answered, by sendguard's decision.",
            ["decision"],
            registry=self.registry,
        )
        self.would_block = Counter(
            "sendguard_would_block",
            "Sends a guard in report mode would have blocked (they were forwarded).",
            ["decision"],
            registry=self.registry,
        )
        self.breaker_trips = Counter(
            "sendguard_breaker_trips",
            "Recipient breakers opened by a limit.",
            registry=self.registry,
        )
        self.suppressions_learned = Counter(
            "sendguard_suppressions_learned",
            "Non-retryable codes learned, by code and where they were seen.",
            ["code", "source"],
            registry=self.registry,
        )
        self.upstream_429_retries = Counter(
            "sendguard_upstream_429_retries",
            "Upstream 429 answers retried inside sendguard.",
            registry=self.registry,
        )

        self.upstream_latency = Histogram(
            "sendguard_upstream_latency_seconds",
            "Time from sending a request upstream to its answer, by route (or passthrough).",
            ["route"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.dedup_hits = Counter(
            "sendguard_dedup_hits",
            "Duplicates answered from the store, by outcome and by what identified them.",
            ["kind", "by"],
            registry=self.registry,
        )
        self.records_unknown = Counter(
            "sendguard_records_unknown",
            "Send records marked UNKNOWN (the send may have happened), by reason class.",
            ["reason"],
            registry=self.registry,
        )
        self.store_errors = Counter(
            "sendguard_store_errors",
            "Store operations that failed, by step.",
            ["step"],
            registry=self.registry,
        )
        self.sends = Counter(
            "sendguard_sends",
            "Guarded sends forwarded upstream, by account SID.",
            ["account"],
            registry=self.registry,
        )
        self.unguarded_sends = Counter(
            "sendguard_unguarded_sends",
            "Sends forwarded without dedup or limits (store down, on_store_error=open).",
            registry=self.registry,
        )
        self.kill_switch_engaged = Gauge(
            "sendguard_kill_switch_engaged",
            "Kill switches in force on this instance, by scope kind.",
            ["scope_kind"],
            registry=self.registry,
        )
        self.store_mode = Gauge(
            "sendguard_store_mode",
            "The store mode in use: 1 for the active one (shared, local, closed, open).",
            ["mode"],
            registry=self.registry,
        )

        self.store_up = Gauge(
            "sendguard_store_up",
            "1 while the health prober reaches the store (every master of a cluster), else 0.",
            registry=self.registry,
        )
        self.embedded_store_restarts = Counter(
            "sendguard_embedded_store_restarts",
            "Times the embedded store's server process died and was restarted.",
            registry=self.registry,
        )
        self.pending_outcome_writes = Gauge(
            "sendguard_pending_outcome_writes",
            "Outcomes of sends already made that the store has not accepted yet (kept in memory,"
            " retried).",
            registry=self.registry,
        )

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when never observed): for tests and the CLI."""
        found = self.registry.get_sample_value(name, labels)
        return found or 0.0
