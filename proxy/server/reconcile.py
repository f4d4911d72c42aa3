"""Reconciling UNKNOWN sends against Twilio: only positive evidence resolves one
(docs/contract.md#reconcile).

Twilio's list API cannot prove that a message does not exist (a new message can be missing
from `GET …/Messages.json` for minutes, `date_sent` is null until the carrier hand-off), so
"not in the list" never means "not sent". What can resolve an UNKNOWN send:

  - a Message SID for this very send (its status callback through the tee, or an operator's
    `resolve --sent`): fetched by SID, stored, replayed;
  - a message in the account's list to the same `To` (no date filter, newest pages first,
    bounded), created at or after the claim (minus a clock allowance), with the same sender
    (From or MessagingServiceSid) and body (also after Smart Encoding), whose SID no other
    send of ours already owns: fetched by SID, stored, replayed.

Nothing found -> 409 `outcome-unknown`; an error while looking -> the same, never a send.
Only with `unknown_resend_after` set may a send with no evidence after that long go out
again, once per record, counted and logged.

Requests to Twilio use the retrying request's own credential (credentials are never written
to the store). At most one reconciliation per record every `gate_seconds`, fleet-wide (a key
in the record's slot), and one in flight per record in a process however many retries wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from multidict import CIMultiDict

from proxy.guard.dedup import DedupRecord, StoredResponse
from proxy.guard.facts import body_digest, normalise_recipient, smart_encoded
from proxy.logs import get_logger
from proxy.metrics import Metrics
from proxy.store.send_store import SendRef, SendStore, StoreError
from proxy.upstream.client import NotSent, SentNoAnswer, UpstreamClient
from proxy.upstream.hosts import Upstream

log = get_logger("sendguard.reconcile")

RECONCILED = "send_reconciled"
RESENT_AFTER_SILENCE = "unknown_send_resent"

GATE_SECONDS = 5.0
CLOCK_ALLOWANCE_SECONDS = 30.0
PAGE_SIZE = 50
MAX_PAGES = 3
LOOKUP_TIMEOUT_SECONDS = 10.0
# Routes whose sends can be found in a Messages list; a Call is never reconciled from a list.
RECONCILABLE_ROUTES = frozenset({"messages"})
_JSON_HEADERS = (("Content-Type", "application/json; charset=utf-8"),)


class Found(StrEnum):
    LIST = "found-list"
    SID = "found-callback"  # a SID noted by a callback or an operator


class LookupVerdict(StrEnum):
    FOUND = "found"
    NOT_FOUND = "not-found"
    BUSY = "busy"  # reconciled moments ago (or right now) elsewhere: same answer, later
    ERROR = "error"
    RESEND = "resent"


@dataclass(frozen=True)
class Reconciliation:
    verdict: LookupVerdict
    response: StoredResponse | None = None
    message_sid: str = ""
    token: str = ""  # RESEND: the claim token the resend goes out under


@dataclass(frozen=True)
class ReconcilePolicy:
    resend_after: float | None  # seconds; None = never resend an UNKNOWN send
    lease_ms: int
    ttl_ms: int  # how long a resolved record is kept for replay
    gate_seconds: float = GATE_SECONDS
    allowance_seconds: float = CLOCK_ALLOWANCE_SECONDS


@dataclass(frozen=True)
class _Retry:
    """The UNKNOWN send being reconciled, and what the retry asking for it brings."""

    store: SendStore
    ref: SendRef
    record: DedupRecord
    authorization: str
    upstream: Upstream
    new_token: str


class Reconciler:
    def __init__(self, client: UpstreamClient, metrics: Metrics, policy: ReconcilePolicy) -> None:
        self.client = client
        self.metrics = metrics
        self.policy = policy
        self._running: dict[tuple[int, str, str], asyncio.Task[Reconciliation]] = {}

    async def reconcile(
        self,
        store: SendStore,
        ref: SendRef,
        record: DedupRecord,
        *,
        authorization: str,
        upstream: Upstream,
        new_token: str,
    ) -> Reconciliation:
        """What a retry of this UNKNOWN send gets. Concurrent retries share one lookup."""
        key = (id(store), ref.tag, ref.dedup_id)
        running = self._running.get(key)
        if running is None:
            retry = _Retry(store, ref, record, authorization, upstream, new_token)
            running = asyncio.ensure_future(self._reconcile(retry))
            self._running[key] = running
            running.add_done_callback(lambda _: self._running.pop(key, None))
            return await asyncio.shield(running)
        result = await asyncio.shield(running)
        # Only the retry that started it may use a resend claim: the others wait on it.
        return (
            Reconciliation(LookupVerdict.BUSY) if result.verdict is LookupVerdict.RESEND else result
        )

    async def _reconcile(self, retry: _Retry) -> Reconciliation:
        store, ref, record, new_token = retry.store, retry.ref, retry.record, retry.new_token
        meta = record.meta or {}
        try:
            if not await store.reconcile_gate(ref, int(self.policy.gate_seconds * 1000)):
                return Reconciliation(LookupVerdict.BUSY)
            found = await self._evidence(retry, meta)
            if found is not None:
                sid, body, kind = found
                stored = StoredResponse(201, _JSON_HEADERS, body)
                await store.resolve_found(ref, stored, sid, self.policy.ttl_ms)
                self.metrics.reconciliations.labels(kind.value).inc()
                log.warning(RECONCILED, outcome=kind.value, message_sid=sid)
                return Reconciliation(LookupVerdict.FOUND, stored, sid)
            self.metrics.reconciliations.labels(LookupVerdict.NOT_FOUND.value).inc()
            with contextlib.suppress(StoreError):  # a count for the operator, not a verdict
                await store.note_lookup_without_evidence(ref)
            if self.policy.resend_after is not None and not record.resent:
                claimed = await store.resend_claim(
                    ref,
                    token=new_token,
                    lease_ms=self.policy.lease_ms,
                    older_than_ms=int(self.policy.resend_after * 1000),
                )
                if claimed:
                    self.metrics.reconciliations.labels(LookupVerdict.RESEND.value).inc()
                    log.warning(RESENT_AFTER_SILENCE, silent_s=self.policy.resend_after,
                                account=meta.get("account", ""))  # fmt: skip
                    return Reconciliation(LookupVerdict.RESEND, token=new_token)
            return Reconciliation(LookupVerdict.NOT_FOUND)
        except (StoreError, NotSent, SentNoAnswer, LookupFailed) as exc:
            self.metrics.reconciliations.labels(LookupVerdict.ERROR.value).inc()
            log.warning("reconcile_failed", error=type(exc).__name__)
            return Reconciliation(LookupVerdict.ERROR)

    async def _evidence(
        self, retry: _Retry, meta: dict[str, Any]
    ) -> tuple[str, bytes, Found] | None:
        store, ref, record = retry.store, retry.ref, retry.record
        authorization, upstream = retry.authorization, retry.upstream
        account = str(meta.get("account", ""))
        if not account:
            return None
        if record.resolved_sid:
            body = await self.fetch(upstream, account, record.resolved_sid, authorization)
            return (record.resolved_sid, body, Found.SID) if body is not None else None
        if meta.get("route") not in RECONCILABLE_ROUTES:
            return None
        since = record.claimed_at_ms / 1000 - self.policy.allowance_seconds
        async with asyncio.timeout(LOOKUP_TIMEOUT_SECONDS):
            for candidate in await self._candidates(upstream, account, meta, since, authorization):
                owner = await store.find_ref(message_sid=candidate)
                if owner is not None and owner != ref:
                    continue  # another send of ours created that one
                body = await self.fetch(upstream, account, candidate, authorization)
                if body is not None:
                    return candidate, body, Found.LIST
        return None

    async def _candidates(
        self, upstream: Upstream, account: str, meta: dict[str, Any], since: float, auth: str
    ) -> list[str]:
        to = str(meta.get("to", ""))
        path: str | None = (
            f"/2010-04-01/Accounts/{account}/Messages.json?To={quote(to, safe='')}"
            f"&PageSize={PAGE_SIZE}"
        )
        matches: list[str] = []
        for _ in range(MAX_PAGES):
            if path is None:
                break
            page = await self._get_json(upstream, path, auth)
            messages = page.get("messages")
            if not isinstance(messages, list):
                raise LookupFailed("no message list")
            older_seen = False
            for message in messages:
                if not isinstance(message, dict):
                    continue
                created = _created_at(message)
                if created is not None and created < since:
                    older_seen = True  # newest first: the rest is older still
                    continue
                if _is_this_send(message, meta):
                    matches.append(str(message["sid"]))
            next_page = page.get("next_page_uri")
            path = next_page if isinstance(next_page, str) and not older_seen else None
        return list(reversed(matches))  # the oldest match first: the first attempt's

    async def fetch(
        self, upstream: Upstream, account: str, message_sid: str, authorization: str
    ) -> bytes | None:
        """The message's JSON as Twilio returns it; None when Twilio has no such message."""
        path = f"/2010-04-01/Accounts/{account}/Messages/{quote(message_sid, safe='')}.json"
        result = await self.client.send("GET", upstream.origin + path,
                                        _lookup_headers(upstream, authorization), b"")  # fmt: skip
        if result.status == 404:
            return None
        if result.status != 200:
            raise LookupFailed(f"fetch answered {result.status}")
        return result.body

    async def _get_json(self, upstream: Upstream, path: str, auth: str) -> dict[str, Any]:
        result = await self.client.send(
            "GET", upstream.origin + path, _lookup_headers(upstream, auth), b""
        )
        if result.status != 200:
            raise LookupFailed(f"list answered {result.status}")
        try:
            payload = json.loads(result.body)
        except ValueError as exc:
            raise LookupFailed("list answer is not JSON") from exc
        if not isinstance(payload, dict):
            raise LookupFailed("list answer is not an object")
        return payload

    async def resolve_from_callback(
        self,
        store: SendStore,
        ref: SendRef,
        account: str,
        message_sid: str,
        authorization: str,
        upstream: Upstream,
    ) -> bool:
        """A status callback for this very send arrived: if its record is UNKNOWN, fetch the
        message (with the account's verified auth token) and store it as the send's result.
        If the fetch fails, the SID is noted and the next retry fetches it. True if resolved."""
        record = await store.get(ref)
        if record is None or record.state.value != "unknown":
            return False
        try:
            body = await self.fetch(upstream, account, message_sid, authorization)
        except (NotSent, SentNoAnswer, LookupFailed):
            body = None
        if body is None:
            await store.note_sid(ref, message_sid, "status-callback")
            return False
        stored = StoredResponse(201, _JSON_HEADERS, body)
        if await store.resolve_found(ref, stored, message_sid, self.policy.ttl_ms):
            self.metrics.reconciliations.labels(Found.SID.value).inc()
            log.warning(RECONCILED, outcome=Found.SID.value, message_sid=message_sid)
            return True
        return False


class LookupFailed(Exception):
    """Twilio's list or fetch did not give a usable answer (reconciliation only)."""


def _lookup_headers(upstream: Upstream, authorization: str) -> CIMultiDict[str]:
    return CIMultiDict(
        {
            "Authorization": authorization,
            "Accept": "application/json",
            "Accept-Encoding": "identity",
            "Host": upstream.authority,
        }
    )


def _created_at(message: dict[str, Any]) -> float | None:
    raw = message.get("date_created")
    if not isinstance(raw, str):
        return None
    try:
        when: datetime = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return when.timestamp()


def _is_this_send(message: dict[str, Any], meta: dict[str, Any]) -> bool:
    """Same sender and the same body as the recorded send (To was the list's filter)."""
    if not isinstance(message.get("sid"), str):
        return False
    sender = str(meta.get("from", ""))
    senders = {
        normalise_recipient(str(message.get("from") or "")),
        str(message.get("messaging_service_sid") or ""),
    }
    if not sender or (normalise_recipient(sender) not in senders and sender not in senders):
        return False
    body = message.get("body")
    if not isinstance(body, str):
        return False
    wanted = {meta.get("body_sha"), meta.get("body_smart")} - {None, ""}
    return bool({body_digest(body), body_digest(smart_encoded(body))} & wanted)
