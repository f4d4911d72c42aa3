"""The baseline: a bare aiohttp reverse proxy with no store and no logic.

Run: `python -m bench.passthrough --port P --upstream http://127.0.0.1:S`. Same aiohttp, same
upstream pool size (100), the access log off and the same event loop (sendguard's own choice,
proxy/server/eventloop.py: uvloop when installed), as in sendguard: the difference between the
two is what sendguard's own work costs.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from proxy.server.eventloop import choose_loop

POOL_SIZE = 100  # sendguard's default upstream_pool_size
HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "host",
     "content-length", "proxy-authorization", "proxy-connection")
)  # fmt: skip
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM: web.AppKey[str] = web.AppKey("upstream", str)


async def handle(request: web.Request) -> web.Response:
    body = await request.read()
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP)
    url = request.app[UPSTREAM] + request.raw_path
    async with request.app[SESSION].request(
        request.method, url, headers=headers, data=body or None, allow_redirects=False
    ) as answer:
        payload = await answer.read()
        return web.Response(status=answer.status, body=payload, content_type=answer.content_type)


async def client_session(app: web.Application) -> AsyncIterator[None]:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=POOL_SIZE),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    app[SESSION] = session
    yield
    await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9000")
    args = parser.parse_args()
    app = web.Application()
    app[UPSTREAM] = args.upstream.rstrip("/")
    app.cleanup_ctx.append(client_session)
    app.router.add_route("*", "/{tail:.*}", handle)
    _, loop_factory = choose_loop()
    loop = loop_factory() if loop_factory else None
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
