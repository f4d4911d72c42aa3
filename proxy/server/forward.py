"""Passthrough: any request that is not a guarded send, streamed both ways, no store touched."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web

from proxy.decision import Decision
from proxy.errors import PassthroughBroken, PassthroughTimedOut, UpstreamUnreachable
from proxy.server.context import CONTEXT, Answer, stamp
from proxy.server.headers import downstream_response_headers, upstream_request_headers
from proxy.server.target import target_of
from proxy.upstream.client import NotSent, SentNoAnswer, UpstreamClient
from proxy.upstream.hosts import Upstream

STREAM_CHUNK = 64 * 1024


def upstream_url(upstream: Upstream, request: web.Request) -> str:
    """The request's canonical target (the very path the router matched) on the upstream's
    origin; the query string is the client's, byte for byte."""
    return upstream.origin + str(target_of(request))


async def forward_passthrough(
    request: web.Request,
    body: bytes,
    upstream: Upstream,
    client: UpstreamClient,
    watch: Callable[[int], int] | None = None,
) -> tuple[Answer, bytes | None]:
    """Stream the answer back. `watch(status)` may ask to keep up to N bytes of it: the kept
    body is returned (None when it was not kept, or was larger than asked)."""
    ctx = request[CONTEXT]
    headers = upstream_request_headers(request.headers, upstream.authority, identity_encoding=False)
    started = time.perf_counter()
    response: web.StreamResponse | None = None
    try:
        async with client.stream(
            request.method, upstream_url(upstream, request), headers, body
        ) as answer:
            ctx.upstream_status = answer.status
            ctx.upstream_ms = round((time.perf_counter() - started) * 1000, 2)
            response = web.StreamResponse(
                status=answer.status,
                reason=answer.reason,
                headers=downstream_response_headers(answer.headers),
            )
            if answer.content_length is not None:
                response.content_length = answer.content_length
            stamp(response, Decision.PASSTHROUGH, ctx.request_id)
            await response.prepare(request)
            keep = watch(answer.status) if watch is not None else 0
            kept: list[bytes] | None = [] if keep else None
            size = 0
            async for chunk in answer.content.iter_chunked(STREAM_CHUNK):
                await response.write(chunk)
                if kept is not None:
                    size += len(chunk)
                    if size <= keep:
                        kept.append(chunk)
                    else:
                        kept = None
            await response.write_eof()
            streamed = Answer(response, Decision.PASSTHROUGH)
            return streamed, b"".join(kept) if kept is not None else None
    except NotSent as exc:
        raise UpstreamUnreachable(reason="connect-failed") from exc
    except SentNoAnswer as exc:
        if response is not None and response.prepared:
            # Headers are gone already: cut the connection so the client sees a truncated
            # answer as broken instead of letting a final chunk make it look complete.
            if request.transport is not None:
                request.transport.abort()
            broken = f"upstream-broke-mid-stream-{exc.kind}"
            return Answer(response, Decision.PASSTHROUGH, broken), None
        error = PassthroughTimedOut if exc.kind == "timeout" else PassthroughBroken
        raise error(reason=f"upstream-{exc.kind}") from exc
