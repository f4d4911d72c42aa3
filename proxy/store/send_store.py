"""The send store: a few primitives over the Lua scripts, nothing else.

All policy (forward, replay, refuse) lives in `proxy.guard`; this layer moves records and
translates every redis-py failure into `StoreError` at one boundary. A claim is one round
trip: the CLAIM script on the recipient's slot, pipelined (for keyed sends) with a
`SET NX GET` of the key index on the key's own slot.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from proxy.guard.dedup import DedupRecord, RecordState, StoredResponse
from proxy.guard.protection import RecipientState, Suppression
from proxy.store import codec, keys, scripts
from proxy.store.batching import AutoPipeline, Step
from proxy.store.lean import LeanClient
from proxy.store.lean_path import LeanPath

RedisClient = Redis | RedisCluster
# A cluster client opens at most this many connections per node (redis-py raises
# MaxConnectionsError past it); concurrent store operations are bounded well below it, so a
# burst of sends waits for a connection instead of failing. Each operation holds up to
# three connections at once (a keyed claim's three commands).
CLUSTER_NODE_CONNECTIONS = 384
CLUSTER_CONCURRENT_OPERATIONS = CLUSTER_NODE_CONNECTIONS // 3


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


@dataclass(frozen=True)
class RecipientSnapshot:
    suppressions: dict[str, Suppression]  # scope field -> what was learned (may have expired)
    breaker: codec.BreakerState
    send_times_ms: tuple[int, ...]  # sends in the longest window, by store time


def _as_eval(step: Step) -> Step:
    if not isinstance(step, tuple):
        return step
    script, script_keys, script_args = step

    def evaluate(pipe: Any) -> Any:
        return pipe.eval(script.script, len(script_keys), *script_keys, *script_args)

    return evaluate


def _now_ms() -> int:
    return int(time.time() * 1000)


def key_lookup_id(account_sid: str, idempotency_key: str) -> str:
    """The admin API's handle on a keyed send: the account and the key, hashed (keys may be
    sensitive, and the key's own dedup identity also hashes the credential, which an operator
    does not have)."""
    return hashlib.sha256(f"{account_sid}\x00{idempotency_key}".encode()).hexdigest()[:32]


class SendStore:
    def __init__(self, redis: RedisClient, lean: LeanClient | None = None) -> None:
        """`lean`: the hot path's client for a standalone or embedded store (lean_path.py),
        owned by the store from now on (`aclose`); None keeps everything on redis-py."""
        self.redis = redis
        self.lean = LeanPath(lean) if lean is not None else None
        # register_script: EVALSHA with a transparent SCRIPT LOAD on NOSCRIPT (store restarts).
        self._claim = redis.register_script(scripts.CLAIM)
        self._complete = redis.register_script(scripts.COMPLETE)
        self._release = redis.register_script(scripts.RELEASE)
        self._mark_unknown = redis.register_script(scripts.MARK_UNKNOWN)
        self._account_admit = redis.register_script(scripts.ACCOUNT_ADMIT)
        self._account_unadmit = redis.register_script(scripts.ACCOUNT_UNADMIT)
        # The hot path's calls are auto-pipelined on a standalone Redis (batching.py).
        self._batch = None if isinstance(redis, RedisCluster) else AutoPipeline(redis)
        self._merge = redis.register_script(scripts.MERGE_RECORD)
        self._resolve_found = redis.register_script(scripts.RESOLVE_FOUND)
        self._note_sid = redis.register_script(scripts.NOTE_SID)
        self._release_unknown = redis.register_script(scripts.RELEASE_UNKNOWN)
        self._resend_claim = redis.register_script(scripts.RESEND_CLAIM)
        self._admission = (
            asyncio.Semaphore(CLUSTER_CONCURRENT_OPERATIONS)
            if isinstance(redis, RedisCluster)
            else None
        )

    @asynccontextmanager
    async def _call(self) -> AsyncIterator[None]:
        """One store operation: admitted (cluster: bounded concurrency), errors translated."""
        if self._admission is None:
            async with translate_store_errors():
                yield
            return
        async with self._admission, translate_store_errors():
            yield

    async def claim(self, ref: SendRef, request: ClaimRequest) -> ClaimResult:
        claim_keys = [
            ref.record,
            keys.recipient_sends(ref.tag),
            keys.recipient_breaker(ref.tag),
            keys.recipient_suppressions(ref.tag),
        ]
        args: list[str | int] = [
            request.token,
            request.lease_ms,
            request.ttl_ms,
            request.slide_ms,
            ",".join(str(ms) for ms in request.window_ms),
            request.keep_ms,
            "\n".join(request.scopes),
            *codec.claim_fields(request.payload_hash, request.meta, by_key=request.key_index),
        ]
        key_owner: str | None = None
        replicas: int | None = None
        # (WAIT for replicas must not hold the multiplexed connection: such claims stay on
        # redis-py, WAIT on the claim's own connection.)
        lean = self.lean if not request.min_replicas else None
        async with self._call():
            if request.key_index:
                index_key = keys.key_index(ref.dedup_id)
                index_value = codec.encode_key_owner(ref.tag, request.payload_hash)
                lookup_key = keys.key_ref(request.key_lookup_id)
                lookup_value = codec.encode_index(ref.tag, ref.dedup_id)
                if lean is not None:
                    # (A dropped connection re-runs all three: as harmless as below.)
                    owner, reply, _ = await lean.run(
                        (b"SET", index_key, index_value, b"NX", b"GET", b"PX", request.ttl_ms),
                        lean.claim.call(claim_keys, args),
                        (b"SET", lookup_key, lookup_value, b"PX", request.ttl_ms),
                    )
                elif isinstance(self.redis, RedisCluster):
                    # Cluster pipelines refuse scripts: concurrent calls, one round trip.
                    owner, reply, _ = await asyncio.gather(
                        self.redis.set(
                            index_key, index_value, nx=True, get=True, px=request.ttl_ms
                        ),
                        self._claim(keys=claim_keys, args=args),
                        self.redis.set(lookup_key, lookup_value, px=request.ttl_ms),
                    )
                else:
                    # Re-running the SETs after a NOSCRIPT is harmless: the index then holds
                    # our own value, which is what the first run wrote.
                    (owner, reply, _), replicas = await self._claim_pipelined(
                        request,
                        lambda pipe: pipe.set(
                            index_key, index_value, nx=True, get=True, px=request.ttl_ms
                        ),
                        (self._claim, claim_keys, args),
                        lambda pipe: pipe.set(lookup_key, lookup_value, px=request.ttl_ms),
                    )
                key_owner = codec.decode_key_owner(cast(bytes, owner)) if owner else None
            elif lean is not None:
                reply = await lean.script(lean.claim, claim_keys, args)
            elif self._batch is None:
                reply = await self._claim(keys=claim_keys, args=args)
            else:
                (reply,), replicas = await self._claim_pipelined(
                    request, (self._claim, claim_keys, args)
                )
        reply = cast(list[bytes], reply)
        now_ms = int(reply[1])
        if reply[0] == b"claimed":
            state = codec.decode_recipient_state(reply[2], request.token)
            return ClaimResult(True, now_ms, None, state, key_owner, replicas)
        record = codec.decode_record(codec.fields_from_reply(reply[2:]))
        return ClaimResult(False, now_ms, record, None, key_owner)

    async def _claim_pipelined(
        self, request: ClaimRequest, *steps: Step
    ) -> tuple[list[Any], int | None]:
        """The claim's steps, then (store_min_replicas) `WAIT` on the same connection, in the
        same pipeline: it counts the replicas holding every write before it, the claim's
        included. With WAIT the script goes as EVAL, not EVALSHA: a NOSCRIPT re-run would
        happen on another connection, where WAIT could not vouch for it."""
        if not request.min_replicas:
            return await self._pipelined(*steps), None

        def wait(pipe: Any) -> Any:
            return pipe.wait(request.min_replicas, request.replica_wait_ms)

        *results, acknowledged = await self._pipelined(*map(_as_eval, steps), wait)
        return results, int(acknowledged)

    async def _pipelined(self, *steps: Step) -> list[Any]:
        """One round trip for a script and plain commands (standalone Redis only), batched
        with other sends' calls of the same loop turn (batching.py). A NOSCRIPT (the server
        restarted and lost its scripts) loads the script and runs just the script again; the
        plain commands' answers from the first run stand."""
        assert self._batch is not None
        results = await self._batch.execute(steps)
        for index, (step, result) in enumerate(zip(steps, results, strict=True)):
            if isinstance(result, NoScriptError) and isinstance(step, tuple):
                script, script_keys, script_args = step
                results[index] = await script(keys=script_keys, args=script_args)
            elif isinstance(result, Exception):
                raise result
        return results

    async def drain(self) -> None:
        if self._batch is not None:
            await self._batch.drain()
        if self.lean is not None:
            await self.lean.drain()

    async def aclose(self) -> None:
        """Close what the store owns: the lean connection (the redis-py client is its
        maker's). After the settlement journal's last writes: a closed client stays closed."""
        if self.lean is not None:
            await self.lean.aclose()

    async def complete(
        self,
        ref: SendRef,
        *,
        token: str,
        response: StoredResponse,
        message_sid: str,
        ttl_ms: int,
        content: str,
        learned: Sequence[tuple[str, Suppression, int]] = (),
        uncount: bool = False,
    ) -> int:
        """Store the answer; `uncount` takes the send out of the recipient's send log (a
        definite refusal: nothing reached a person)."""
        args: list[str | int | bytes] = [
            token,
            ttl_ms,
            codec.learned_lines(learned),
            "1" if uncount else "0",
            *codec.answer_fields(response, message_sid),
        ]
        complete_keys = [
            ref.record,
            keys.recipient_breaker(ref.tag),
            keys.recipient_suppressions(ref.tag),
            keys.recipient_sends(ref.tag),
        ]
        # The SID index (admin lookups; a status callback's content field) rides along in the
        # same round trip.
        sid_key = keys.message_ref(message_sid)
        sid_value = codec.encode_index(ref.tag, ref.dedup_id, content)
        sid_ttl_ms = codec.sid_index_ttl_ms(ttl_ms, content)
        lean = self.lean
        async with self._call():
            if lean is not None:
                if not message_sid:
                    return int(await lean.script(lean.complete, complete_keys, args))
                done, _ = await lean.run(
                    lean.complete.call(complete_keys, args),
                    (b"SET", sid_key, sid_value, b"PX", sid_ttl_ms),
                )
                return int(done)
            if not message_sid:
                if self._batch is None:
                    return int(await self._complete(keys=complete_keys, args=args))
                (done,) = await self._pipelined((self._complete, complete_keys, args))
                return int(done)
            if isinstance(self.redis, RedisCluster):
                done, _ = await asyncio.gather(
                    self._complete(keys=complete_keys, args=args),
                    self.redis.set(sid_key, sid_value, px=sid_ttl_ms),
                )
            else:
                done, _ = await self._pipelined(
                    (self._complete, complete_keys, args),
                    lambda pipe: pipe.set(sid_key, sid_value, px=sid_ttl_ms),
                )
            return int(done)

    async def release(
        self, ref: SendRef, *, token: str, trip_ms: int = 0, breaker_ttl_ms: int = 0
    ) -> bool:
        release_keys = [ref.record, keys.recipient_sends(ref.tag), keys.recipient_breaker(ref.tag)]
        args: list[str | int] = [token, trip_ms, breaker_ttl_ms]
        async with self._call():
            if self.lean is not None:
                return bool(await self.lean.script(self.lean.release, release_keys, args))
            return bool(await self._release(keys=release_keys, args=args))

    async def mark_unknown(
        self, ref: SendRef, *, token: str, reason: str, ttl_ms: int, require_expired: bool
    ) -> int:
        args: list[str | int] = [token, reason, ttl_ms, "1" if require_expired else "0"]
        mark_keys = [ref.record, keys.recipient_breaker(ref.tag)]
        async with self._call():
            if self.lean is not None:
                marked = int(await self.lean.script(self.lean.mark_unknown, mark_keys, args))
            else:
                marked = int(await self._mark_unknown(keys=mark_keys, args=args))
            if marked:
                # The operator's ledger (another slot: its own command, after the mark).
                await self.redis.zadd(
                    keys.unknown_ledger(), {ref.ledger_member: _now_ms()}, nx=True
                )
            return marked

    # -- resolving UNKNOWN sends -----------------------------------------------------------

    async def reconcile_gate(self, ref: SendRef, hold_ms: int) -> bool:
        """True for the one caller (fleet-wide) that may reconcile this record now."""
        async with self._call():
            gate = keys.reconcile_gate(ref.tag, ref.dedup_id)
            return bool(await self.redis.set(gate, "1", nx=True, px=hold_ms))

    async def resolve_found(
        self, ref: SendRef, response: StoredResponse, message_sid: str, ttl_ms: int
    ) -> bool:
        args: list[str | int | bytes] = [ttl_ms, *codec.answer_fields(response, message_sid)]
        async with self._call():
            done = bool(await self._resolve_found(keys=[ref.record], args=args))
            if done:
                index = codec.encode_index(ref.tag, ref.dedup_id)
                await self.redis.set(keys.message_ref(message_sid), index, px=ttl_ms)
                await self.redis.zrem(keys.unknown_ledger(), ref.ledger_member)
            return done

    async def note_sid(self, ref: SendRef, message_sid: str, reason: str) -> bool:
        """Evidence arrived: the next retry may fetch it at once (the lookup gate opens)."""
        async with self._call():
            noted = bool(await self._note_sid(keys=[ref.record], args=[message_sid, reason]))
            if noted:
                await self.redis.delete(keys.reconcile_gate(ref.tag, ref.dedup_id))
            return noted

    async def release_unknown(self, ref: SendRef) -> bool:
        release_keys = [ref.record, keys.recipient_sends(ref.tag)]
        async with self._call():
            released = bool(await self._release_unknown(keys=release_keys, args=[]))
            if released:
                await self.redis.zrem(keys.unknown_ledger(), ref.ledger_member)
            return released

    async def resend_claim(
        self, ref: SendRef, *, token: str, lease_ms: int, older_than_ms: int
    ) -> bool:
        args: list[str | int] = [token, lease_ms, older_than_ms]
        async with self._call():
            reply = cast(list[int], await self._resend_claim(keys=[ref.record], args=args))
        return int(reply[0]) == 1

    async def unknown_ledger(self, limit: int = 500) -> list[tuple[SendRef, DedupRecord]]:
        """The UNKNOWN sends, oldest first (admin path); entries that settled are dropped."""
        found: list[tuple[SendRef, DedupRecord]] = []
        async with translate_store_errors():
            members = cast(
                list[bytes], await self.redis.zrange(keys.unknown_ledger(), 0, limit * 2)
            )
            for member in members:
                ref = SendRef(*codec.parse_ledger_member(member))
                record = await self.get(ref)
                if record is None or record.state is not RecordState.UNKNOWN:
                    await self.redis.zrem(keys.unknown_ledger(), member)
                    continue
                found.append((ref, record))
                if len(found) >= limit:
                    break
        return found

    async def admit_account(
        self,
        account_sid: str,
        slots: Sequence[tuple[int, int]],
        limits: Sequence[int],
        *,
        enforce: bool,
    ) -> tuple[int, ...]:
        """Count a send against the account's windows; the counts, this send included (when
        `enforce` and over a limit, it was not counted: the counts show what it would make)."""
        admit_keys = [keys.account_sends(account_sid, ms, index) for ms, index in slots]
        args: list[str | int] = ["1" if enforce else "0"]
        for (window_ms, _), limit in zip(slots, limits, strict=True):
            args += [limit, window_ms * 2]  # kept past its window: Retry-After stays readable
        async with self._call():
            if self.lean is not None:
                reply = await self.lean.script(self.lean.account_admit, admit_keys, args)
            else:
                reply = await self._account_admit(keys=admit_keys, args=args)
            reply = cast(list[int], reply)
        return tuple(int(count) for count in reply[1:])

    async def unadmit_account(self, account_sid: str, slots: Sequence[tuple[int, int]]) -> None:
        """Undo `admit_account` for one send (Twilio refused it: nothing was sent)."""
        unadmit_keys = [keys.account_sends(account_sid, ms, index) for ms, index in slots]
        async with self._call():
            if self.lean is not None:
                await self.lean.script(self.lean.account_unadmit, unadmit_keys, [])
            else:
                await self._account_unadmit(keys=unadmit_keys, args=[])

    async def get(self, ref: SendRef) -> DedupRecord | None:
        async with self._call():
            if self.lean is not None:
                raw = await self.lean.hgetall(ref.record)
            else:
                raw = cast(dict[bytes, bytes], await self.redis.hgetall(ref.record))
        if not raw:
            return None
        return codec.decode_record(codec.fields_of(raw))

    async def add_suppression(
        self, tag: str, field: str, suppression: Suppression, ttl_ms: int
    ) -> None:
        """Learned outside a send (a fetched Message, a status callback)."""
        key = keys.recipient_suppressions(tag)
        async with translate_store_errors(), self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, field, codec.encode_suppression(suppression))
            pipe.pexpire(key, ttl_ms, gt=True)
            pipe.pexpire(key, ttl_ms, nx=True)
            await pipe.execute()

    async def content_of(self, tag: str, message_sid: str) -> str | None:
        """The message-scope field recorded for a SID when its send completed, if the SID is
        one of this recipient's sends."""
        async with translate_store_errors():
            raw = cast(bytes | None, await self.redis.get(keys.message_ref(message_sid)))
            if raw is not None:
                indexed = codec.decode_index(raw)
                if indexed.tag == tag and indexed.content:
                    return indexed.content
            # Sends completed before the SID index carried it: the recipient's legacy hash.
            legacy = await self.redis.hget(keys.recipient_messages(tag), message_sid)
        return cast(bytes, legacy).decode() if legacy else None

    # -- the admin path: lookups and operator changes, never on the hot path -----------------

    async def find_ref(self, *, message_sid: str = "", key_lookup_id: str = "") -> SendRef | None:
        index = keys.message_ref(message_sid) if message_sid else keys.key_ref(key_lookup_id)
        async with translate_store_errors():
            raw = cast(bytes | None, await self.redis.get(index))
        if not raw:
            return None
        indexed = codec.decode_index(raw)
        return SendRef(indexed.tag, indexed.dedup_id)

    async def recipient_snapshot(self, tag: str) -> RecipientSnapshot:
        async with translate_store_errors():
            suppressions = cast(
                dict[bytes, bytes], await self.redis.hgetall(keys.recipient_suppressions(tag))
            )
            breaker = cast(
                dict[bytes, bytes], await self.redis.hgetall(keys.recipient_breaker(tag))
            )
            sends = cast(
                list[tuple[bytes, float]],
                await self.redis.zrange(keys.recipient_sends(tag), 0, -1, withscores=True),
            )
        return RecipientSnapshot(
            suppressions={k.decode(): codec.decode_suppression(v) for k, v in suppressions.items()},
            breaker=codec.decode_breaker(breaker),
            send_times_ms=tuple(int(score) for _, score in sends),
        )

    async def clear_suppressions(self, tag: str, fields: Sequence[str] = ()) -> int:
        """Remove the named suppression fields (all of them when none are named)."""
        key = keys.recipient_suppressions(tag)
        async with translate_store_errors():
            if fields:
                return int(await self.redis.hdel(key, *fields))
            count = int(await self.redis.hlen(key))
            await self.redis.delete(key)
            return count

    async def reset_breaker(self, tag: str) -> bool:
        """Close the breaker and forget the recent sends it counted; True if there was any."""
        async with translate_store_errors():
            breaker = int(await self.redis.delete(keys.recipient_breaker(tag)))
            sends = int(await self.redis.delete(keys.recipient_sends(tag)))
        return bool(breaker or sends)

    async def ping(self) -> None:
        async with translate_store_errors():
            await self.redis.ping()

    async def ping_all(self) -> None:
        """The prober's check: every master answers (a cluster is only up when every slot is)."""
        async with translate_store_errors():
            if isinstance(self.redis, RedisCluster):
                await self.redis.ping(target_nodes=RedisCluster.PRIMARIES)
            else:
                await self.redis.ping()

    # -- the outage merge (gate.py): records made on the local store during an outage ---------

    async def export_records(self) -> AsyncIterator[tuple[str, dict[bytes, bytes], int]]:
        """Every send record and key index here, with its remaining lifetime (ms)."""
        async with translate_store_errors():
            async for raw in self.redis.scan_iter(match=keys.EXPORT_PATTERN, count=500):
                key = raw.decode() if isinstance(raw, bytes) else str(raw)
                if not keys.is_exported(key):
                    continue
                ttl_ms = int(await self.redis.pttl(key))
                if ttl_ms <= 0:
                    continue  # expired meanwhile (or, never, kept without a lifetime)
                if keys.is_key_index(key):
                    value = cast(bytes | None, await self.redis.get(key))
                    if value is not None:
                        yield key, {b"": value}, ttl_ms
                    continue
                fields = cast(dict[bytes, bytes], await self.redis.hgetall(key))
                if fields:
                    yield key, fields, ttl_ms

    async def merge_record(self, key: str, fields: dict[bytes, bytes], ttl_ms: int) -> int:
        """1 when the record was taken, 0 when the shared store's own one stands."""
        async with self._call():
            if keys.is_key_index(key):
                taken = await self.redis.set(key, fields[b""], nx=True, px=ttl_ms)
                return 1 if taken else 0
            flat: list[bytes | int] = [ttl_ms]
            for name, value in fields.items():
                flat += [name, value]
            return int(await self._merge(keys=[key], args=flat))
