"""The store's operations off the hot path: reconciliation and the UNKNOWN ledger, what an
operator reads and clears (suppressions, breakers, records by SID or key), and the export and
merge of records after an outage. A part of `SendStore` (send_store.py), kept apart so that
the per-send path reads on its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import cast

from redis.commands.core import AsyncScript

from proxy.guard.dedup import DedupRecord, RecordState, StoredResponse
from proxy.guard.protection import Suppression
from proxy.store import codec, keys, scripts
from proxy.store.refs import RedisClient, SendRef, translate_store_errors


@dataclass(frozen=True)
class RecipientSnapshot:
    suppressions: dict[str, Suppression]  # scope field -> what was learned (may have expired)
    breaker: codec.BreakerState
    send_times_ms: tuple[int, ...]  # sends in the longest window, by store time


class RecordUpkeep:
    """Mixed into SendStore: uses its client and its one error boundary (`_call`)."""

    redis: RedisClient

    def _call(self) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError

    async def get(self, ref: SendRef) -> DedupRecord | None:
        raise NotImplementedError

    def _register_upkeep_scripts(self, redis: RedisClient) -> None:
        self._merge: AsyncScript = redis.register_script(scripts.MERGE_RECORD)
        self._resolve_found: AsyncScript = redis.register_script(scripts.RESOLVE_FOUND)
        self._note_sid: AsyncScript = redis.register_script(scripts.NOTE_SID)
        self._release_unknown: AsyncScript = redis.register_script(scripts.RELEASE_UNKNOWN)
        self._resend_claim: AsyncScript = redis.register_script(scripts.RESEND_CLAIM)
        self._note_lookup: AsyncScript = redis.register_script(scripts.NOTE_LOOKUP)

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

    async def note_lookup_without_evidence(self, ref: SendRef) -> bool:
        """One more lookup in Twilio's list found nothing (the record's `reconciliations`)."""
        async with self._call():
            return bool(await self._note_lookup(keys=[ref.record], args=[]))

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
