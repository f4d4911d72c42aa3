"""Per-request context that the middleware logs once the handler is done, and the `Answer` a
handler returns: the response with what sendguard decided and why.

One writer for the decision: a handler returns an `Answer` and `app.handle` writes it to the
context once; for every error, the middleware does (from the exception). Nothing else sets it.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from proxy.decision import Decision
from proxy.server.headers import DECISION_HEADER, REQUEST_ID_HEADER

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_SCOPE_FIELDS = ("account", "to", "to_ref")


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
        self.reason = str(reason) or decision.value  # (a Reason is a str: keep its value)

    def scope_fields(self) -> dict[str, object]:
        """The send's account and (masked) recipient, for log lines about it."""
        return {key: self.fields[key] for key in _SCOPE_FIELDS if key in self.fields}


@dataclass(frozen=True)
class Answer:
    """What a handler answered, and the decision and reason it was answered for."""

    response: web.StreamResponse
    decision: Decision
    reason: str = ""


CONTEXT: web.RequestKey[RequestContext] = web.RequestKey("sendguard_context", RequestContext)


def stamp(response: web.StreamResponse, decision: Decision, request_id: str) -> None:
    """Every answer says what sendguard decided; call before a streamed response is prepared."""
    response.headers[DECISION_HEADER] = decision.value
    response.headers[REQUEST_ID_HEADER] = request_id


def request_id_from(incoming: str | None) -> str:
    """Propagate a caller's safe-looking X-Request-Id, else mint one."""
    if incoming and _REQUEST_ID_RE.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex
