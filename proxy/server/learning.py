"""Learning non-retryable codes from traffic that is not a send: fetched or listed Messages
passing through, and delivery callbacks from the status-callback tee.

Learning never delays the request it comes from: fetch/list bodies are inspected after the
answer went out, in a background task that the app awaits on shutdown.
"""

from __future__ import annotations

import asyncio
import re
import time
import zlib

from proxy.guard.facts import normalise_recipient, recipient_tag
from proxy.guard.protection import GuardMode
from proxy.guard.suppression import (
    MessageFacts,
    SuppressionRule,
    content_field,
    learn,
    messages_in,
)
from proxy.logs import get_logger, mask_phone
from proxy.metrics import Metrics
from proxy.store.send_store import SendStore, StoreError
from proxy.tee.inbound import DeliveryStatus

log = get_logger("sendguard.learning")

# GET …/Messages.json (list) and GET …/Messages/{SM…}.json (fetch), API 2010.
_MESSAGE_READ_RE = re.compile(
    r"/2010-04-01/Accounts/AC[0-9a-fA-F]{32}/Messages(?:/[SM]M[0-9a-fA-F]{32})?\.json",
    re.IGNORECASE,
)
# Waits (seconds) for a send's record when its callback arrived first: under a second in all.
CONTENT_WAITS = (0.05, 0.1, 0.2, 0.4)
MAX_PENDING = 256  # background learning tasks; beyond this, new ones are dropped (and logged)


class SuppressionLearner:
    def __init__(
        self,
        store: SendStore,
        rules: dict[int, SuppressionRule],
        mode: GuardMode,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.rules = rules
        self.enabled = mode is not GuardMode.OFF and bool(rules)
        self._tasks: set[asyncio.Task[None]] = set()

    def watches(self, method: str, path: str, status: int) -> bool:
        return (
            self.enabled
            and method == "GET"
            and status == 200
            and bool(_MESSAGE_READ_RE.fullmatch(path))
        )

    def learn_in_background(self, body: bytes, content_encoding: str = "") -> None:
        body = identity_body(body, content_encoding)
        if not body:
            return
        if len(self._tasks) >= MAX_PENDING:
            log.warning("learning_dropped", reason="too-many-pending")
            return
        task = asyncio.create_task(self.learn_from_messages(body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def learn_from_messages(self, body: bytes) -> None:
        for message in messages_in(body):
            content = content_field(message.sender, message.body)
            await self._learn(message, content, source="message")

    async def learn_delivery(self, status: DeliveryStatus) -> None:
        """A delivery callback from the tee: the body is not in it, so the message scope comes
        from the content recorded against the SID when the send completed."""
        if not self.enabled or status.error_code not in self.rules or not status.account_sid:
            return
        tag = recipient_tag(status.account_sid, normalise_recipient(status.to))
        try:
            needs_content = self.rules[status.error_code].scope == "message"
            content = await self._content_of(tag, status.message_sid) if needs_content else ""
        except StoreError as exc:
            log.error("store_error", step="content_of", error=str(exc))
            return
        message = MessageFacts(
            status.account_sid, status.message_sid, status.to, status.sender, "", status.error_code
        )
        await self._learn(message, content, source="callback")

    async def _content_of(self, tag: str, message_sid: str) -> str:
        """The content recorded for a SID at the send's completion. A fast failure's callback
        can overtake that record (Twilio answers, calls back, and only then does sendguard
        write): wait for it briefly before giving up on the message scope."""
        for pause in CONTENT_WAITS:
            content = await self.store.content_of(tag, message_sid)
            if content:
                return content
            await asyncio.sleep(pause)
        return await self.store.content_of(tag, message_sid) or ""

    async def _learn(self, message: MessageFacts, content: str, *, source: str) -> None:
        learned = learn(
            message.error_code,
            self.rules,
            sender=message.sender,
            content=content,
            now_ms=int(time.time() * 1000),
            source=source,
        )
        if learned is None:
            return
        field, suppression, ttl_ms = learned
        if not field:  # message scope, but the content of this SID is unknown
            log.warning("suppression_unscoped", code=suppression.code, message_sid=message.sid)
            return
        tag = recipient_tag(message.account_sid, normalise_recipient(message.to))
        try:
            await self.store.add_suppression(tag, field, suppression, ttl_ms)
        except StoreError as exc:
            log.error("store_error", step="add_suppression", error=str(exc))
            return
        self.metrics.suppressions_learned.labels(str(suppression.code), source).inc()
        log.warning(
            "suppression_learned",
            code=suppression.code,
            scope=field.split(":", 1)[0],
            source=source,
            account=message.account_sid,
            message_sid=message.sid,
            to=mask_phone(normalise_recipient(message.to)),
        )

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def identity_body(body: bytes, encoding: str, limit: int = 4 * 1024 * 1024) -> bytes:
    """The identity body of an answer (SDKs ask for gzip; Twilio may compress unasked); b"" when
    unreadable."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        return b""
    wbits = 31 if encoding == "gzip" else 15
    try:
        decoder = zlib.decompressobj(wbits)
        data = decoder.decompress(body, limit)
        return b"" if decoder.unconsumed_tail else data
    except zlib.error:
        return b""
