"""Per-request context that the middleware logs once the handler is done."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from proxy.decision import Decision

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


@dataclass
class RequestContext:
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    decision: Decision = Decision.PASSTHROUGH
    reason: str = ""
    upstream_status: int | None = None
    upstream_ms: float | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # extra, already-redacted log fields

    def decide(self, decision: Decision, reason: str = "") -> None:
        self.decision = decision
        self.reason = reason or decision.value


CONTEXT: web.RequestKey[RequestContext] = web.RequestKey("sendguard_context", RequestContext)


def request_id_from(incoming: str | None) -> str:
    """Propagate a caller's safe-looking X-Request-Id, else mint one."""
    if incoming and _REQUEST_ID_RE.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex
