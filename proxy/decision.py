"""The decision vocabulary: the values of `X-Sendguard-Decision`, log fields and metric labels.

The first block is the contract's decision table (docs/contract.md#responses); the second
holds the situations it leaves open, documented in the README's error table.
"""

from enum import StrEnum


class Decision(StrEnum):
    # docs/contract.md#responses
    PASSTHROUGH = "passthrough"
    FORWARDED = "forwarded"
    REPLAYED = "replayed"
    IN_FLIGHT = "in-flight"
    KEY_MISMATCH = "key-mismatch"
    INVALID_KEY = "invalid-key"
    OUTCOME_UNKNOWN = "outcome-unknown"
    SUPPRESSED = "suppressed"
    RATE_LIMITED = "rate-limited"
    BREAKER_OPEN = "breaker-open"
    KILLED = "killed"
    REFUSED = "refused"
    STORE_UNAVAILABLE = "store-unavailable"
    # sendguard extensions
    INVALID_REQUEST = "invalid-request"
    TOO_LARGE = "too-large"
    UPSTREAM_UNREACHABLE = "upstream-unreachable"
    INTERNAL_ERROR = "internal-error"
    CALLBACK = "callback"  # a Twilio status callback taken by the tee and handed to the app
