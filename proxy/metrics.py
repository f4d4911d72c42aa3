"""Prometheus metrics, one registry per app (several instances can share a process in tests).

Label values are bounded vocabularies (decisions, guard names, Twilio codes): never a phone
number, key, SID or account, so cardinality stays flat however much traffic flows.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


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

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when never observed): for tests and the CLI."""
        found = self.registry.get_sample_value(name, labels)
        return found or 0.0
