"""The send store: a few primitives over the Lua scripts, nothing else.

All policy (forward, replay, refuse) lives in `proxy.guard`; this layer moves records and
translates every redis-py failure into `StoreError` at one boundary. A claim is one round
trip: the CLAIM script on the recipient's slot, pipelined (for keyed sends) with a
`SET NX GET` of the key index on the key's own slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from proxy.guard.dedup import DedupRecord, StoredResponse
from proxy.guard.protection import Suppression
from proxy.store import codec, keys, scripts
from proxy.store.batching import AutoPipeline, Step
from proxy.store.lean import LeanClient
from proxy.store.lean_path import LeanPath
from proxy.store.refs import (
    ClaimRequest,
    ClaimResult,
    RedisClient,
    SendRef,
    StoreError,
    key_lookup_id,
    translate_store_errors,
)
from proxy.store.upkeep import RecipientSnapshot, RecordUpkeep

__all__ = [
    "ClaimRequest",
    "ClaimResult",
    "RecipientSnapshot",
    "RedisClient",
    "SendRef",
    "SendStore",
    "StoreError",
    "key_lookup_id",
    "translate_store_errors",
]

# A cluster client opens at most this many connections per node (redis-py raises
# MaxConnectionsError past it); concurrent store operations are bounded well below it, so a
# burst of sends waits for a connection instead of failing. Each operation holds up to
# three connections at once (a keyed claim's three commands).
CLUSTER_NODE_CONNECTIONS = 384
CLUSTER_CONCURRENT_OPERATIONS = CLUSTER_NODE_CONNECTIONS // 3


def _as_eval(step: Step) -> Step:
    if not isinstance(step, tuple):
        return step
    script, script_keys, script_args = step

    def evaluate(pipe: Any) -> Any:
        return pipe.eval(script.script, len(script_keys), *script_keys, *script_args)

    return evaluate


def _now_ms() -> int:
    return int(time.time() * 1000)


class SendStore(RecordUpkeep):
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
        self._register_upkeep_scripts(redis)
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
