"""Prometheus metrics, one registry per app (several instances can share a process in tests).

Label values are bounded vocabularies (decisions, guard names, Twilio codes, store steps), plus
the account SID on `sendguard_sends_total` (one series per Twilio account, as
docs/contract.md#admin asks): never a phone number, key or message SID.

No label takes a value from unauthenticated input without a bound: the account label is set
only for sends Twilio accepted or may have accepted (2xx, 5xx; a client inventing account SIDs
gets 401s, which are not counted), and only for the first `ACCOUNT_LABEL_LIMIT` accounts this
process has seen; later ones are counted under `account="other"`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ACCOUNT_LABEL_LIMIT = 100  # distinct `account` label values per process; the rest are "other"
OTHER_ACCOUNT = "other"


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
            "Guarded sends Twilio accepted or may have accepted (2xx, 5xx), by account SID (the"
            f' first {ACCOUNT_LABEL_LIMIT} accounts seen; later ones as account="other").',
            ["account"],
            registry=self.registry,
        )
        self._account_labels: set[str] = set()
        self.client_connections = Gauge(
            "sendguard_client_connections",
            "Client connections open, by listener (proxy, admin).",
            ["listener"],
            registry=self.registry,
        )
        self.client_connections_refused = Counter(
            "sendguard_client_connections_refused",
            "Client connections answered 503 and closed at the connection cap, by listener.",
            ["listener"],
            registry=self.registry,
        )
        self.client_connections_evicted = Counter(
            "sendguard_client_connections_evicted",
            "Connections waiting for a request closed to make room at the connection cap.",
            ["listener"],
            registry=self.registry,
        )
        self.client_timeouts = Counter(
            "sendguard_client_timeouts",
            "Client connections cut for sending too slowly, by listener and phase (head, body).",
            ["listener", "phase"],
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
        self.reconciliations = Counter(
            "sendguard_reconciliations",
            "UNKNOWN sends looked up against Twilio or resolved, by outcome (found-list,"
            " found-callback, not-found, resent, resolved-sent, resolved-not-sent, error).",
            ["outcome"],
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

    def count_send(self, account_sid: str, status: int) -> None:
        """One guarded send that reached Twilio: counted per account unless Twilio refused it
        (4xx: bad credentials, bad request), under a bounded set of account labels."""
        if 400 <= status < 500:
            return
        self.sends.labels(self.account_label(account_sid)).inc()

    def account_label(self, account_sid: str) -> str:
        labels = self._account_labels
        if account_sid in labels:
            return account_sid
        if len(labels) < ACCOUNT_LABEL_LIMIT:
            labels.add(account_sid)
            return account_sid
        return OTHER_ACCOUNT

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when never observed): for tests and the CLI."""
        found = self.registry.get_sample_value(name, labels)
        return found or 0.0
