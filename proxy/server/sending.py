"""Sending a claimed send upstream: one total deadline, Twilio's 429s retried inside a budget,
timed and counted. What NotSent or SentNoAnswer mean for the record is the caller's to settle."""

from __future__ import annotations

import asyncio
import random
import time

from aiohttp import web
from multidict import CIMultiDict

from proxy.guard.facts import SendFacts
from proxy.guard.guarded_decide import (
    BACKOFF_429_FIRST,
    next_429_backoff,
    retry_after_seconds,
    wait_before_429_retry,
)
from proxy.metrics import Metrics
from proxy.server.context import CONTEXT, RequestContext
from proxy.server.forward import upstream_url
from proxy.server.headers import upstream_request_headers
from proxy.upstream.client import SentNoAnswer, UpstreamClient, UpstreamResult
from proxy.upstream.hosts import Upstream


class UpstreamSender:
    def __init__(self, client: UpstreamClient, metrics: Metrics, retry_429_budget: float) -> None:
        self.client = client
        self.metrics = metrics
        self.retry_429_budget = retry_429_budget

    async def send(
        self,
        request: web.Request,
        facts: SendFacts,
        body: bytes,
        upstream: Upstream,
        *,
        identity: bool,
    ) -> UpstreamResult:
        """One send upstream (429s retried within the budget, all under one total deadline),
        timed and counted. NotSent and SentNoAnswer propagate."""
        ctx = request[CONTEXT]
        headers = upstream_request_headers(
            request.headers, upstream.authority, identity_encoding=identity
        )
        started = time.perf_counter()
        result = await self._within_429_budget(
            ctx, request.method, upstream_url(upstream, request), headers, body
        )
        elapsed = time.perf_counter() - started
        ctx.upstream_status = result.status
        ctx.upstream_ms = round(elapsed * 1000, 2)
        self.metrics.upstream_latency.labels(facts.route.route.name).observe(elapsed)
        self.metrics.count_send(facts.account_sid, result.status)
        return result

    async def _within_429_budget(
        self, ctx: RequestContext, method: str, url: str, headers: CIMultiDict[str], body: bytes
    ) -> UpstreamResult:
        """Twilio's 429 means "never processed": retry it here, with exponential backoff and
        jitter on top of it, never sooner than Retry-After (seconds or an HTTP-date), while the
        budget lasts; then the 429 goes back (guarded_decide.wait_before_429_retry).

        The whole of it runs under one total deadline (`UpstreamClient.deadline`: the budget
        plus one full attempt, the base of the claim's lease), so an upstream that trickles its
        answer cannot keep the owner sending after its record could be claimed again. Past the
        deadline the request is cut and the answer is ambiguous: SentNoAnswer("timeout")."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        retry_until = started + self.retry_429_budget
        deadline = started + self.client.deadline(self.retry_429_budget)
        backoff = BACKOFF_429_FIRST
        attempt = 0
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    result = await self.client.send(method, url, headers, body)
                    if result.status != 429:
                        return result
                    retry_after = retry_after_seconds(
                        result.headers.get("Retry-After"), time.time()
                    )
                    wait = wait_before_429_retry(
                        retry_after, backoff, retry_until - loop.time(), random.random()
                    )
                    if wait is None:
                        return result
                    attempt += 1
                    ctx.fields["upstream_429_retries"] = attempt
                    self.metrics.upstream_429_retries.inc()
                    await asyncio.sleep(wait)
                    backoff = next_429_backoff(backoff)
        except TimeoutError as exc:
            # Only the deadline's own expiry: the client translates its per-read timeouts.
            raise SentNoAnswer("timeout", "upstream deadline passed") from exc
