"""What the store's callers hold: a send's address (`SendRef`), a claim's request and result,
the store's one error and the one boundary that produces it.

Its own module so that the hot path (send_store.py) and the off-path operations (upkeep.py)
share them without importing each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from proxy.guard.dedup import DedupRecord
from proxy.guard.protection import RecipientState
from proxy.store import codec, keys

RedisClient = Redis | RedisCluster


class StoreError(Exception):
    """The store could not answer: the caller must not assume anything about the record."""


@asynccontextmanager
async def translate_store_errors() -> AsyncIterator[None]:
    """The one boundary: whatever the store client raises becomes StoreError. Not only
    RedisError: redis-py's cluster layer raises RedisClusterException (not a RedisError),
    and races on fresh cluster connections have surfaced as AttributeError/IndexError. For
    the guard every one of them means the same, "the store did not answer": refuse before
    sending, keep the outcome in the journal after. Cancellation is not an error."""
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"{type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class SendRef:
    """Where one send's state lives: its recipient's slot and its dedup identity."""

    tag: str
    dedup_id: str

    @property
    def record(self) -> str:
        return keys.dedup_record(self.tag, self.dedup_id)

    @property
    def ledger_member(self) -> str:
        return codec.ledger_member(self.tag, self.dedup_id)


@dataclass(frozen=True)
class ClaimRequest:
    token: str
    payload_hash: str
    lease_ms: int
    ttl_ms: int
    slide_ms: int
    meta: dict[str, Any]
    window_ms: tuple[int, ...]  # per-recipient windows to count; () = limits off
    keep_ms: int
    scopes: tuple[str, ...]  # suppression fields that apply to this send
    key_index: bool  # keyed send: check/claim the key's index too
    key_lookup_id: str = ""  # keyed send: where the admin API finds it by account + key
    min_replicas: int = 0  # WAIT for this many replicas to hold the claim (0 = don't)
    replica_wait_ms: int = 0


@dataclass(frozen=True)
class ClaimResult:
    claimed: bool
    now_ms: int  # the store's clock: leases are compared against it, never a local clock
    record: DedupRecord | None
    recipient: RecipientState | None  # only when claimed
    key_owner: str | None  # keyed sends: "<tag> <payload hash>" the key was first used for
    replicas: int | None = None  # replicas that acknowledged the claim (when WAIT was asked)


def key_lookup_id(account_sid: str, idempotency_key: str) -> str:
    """The admin API's handle on a keyed send: the account and the key, hashed (keys may be
    sensitive, and the key's own dedup identity also hashes the credential, which an operator
    does not have)."""
    return hashlib.sha256(f"{account_sid}\x00{idempotency_key}".encode()).hexdigest()[:32]
