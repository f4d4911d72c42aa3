"""Forwarding fidelity: everything that is not a guarded send passes through untouched."""

from __future__ import annotations

import gzip
import json

import pytest
from aiohttp import web

from tests.harness import ACCOUNT, basic_auth
from tests.webapps import serving


@pytest.fixture
async def echo_upstream():
    """An upstream that answers with exactly what it received."""
    seen: list[dict] = []

    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        record = {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": list(request.headers.items()),
            "body": body.decode("latin-1"),
        }
        seen.append(record)
        if request.path == "/gzipped":
            return web.Response(
                body=gzip.compress(b'{"zipped": true}'),
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            )
        if request.path == "/big":
            response = web.StreamResponse(headers={"X-Upstream": "yes"})
            await response.prepare(request)
            for _ in range(64):
                await response.write(b"x" * 65536)
            await response.write_eof()
            return response
        return web.json_response(
            record, status=207, headers={"X-Upstream": "yes", "Connection": "keep-alive"}
        )

    async with serving(echo) as url:
        yield url, seen


@pytest.fixture
async def proxy(proxies, echo_upstream, shared_redis_url):
    url, _ = echo_upstream
    return await proxies.start(
        upstream=url, redis_url=shared_redis_url, upstream_allowed_hosts="127.0.0.1"
    )


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_any_method_path_query_and_body_pass_through(proxy, echo_upstream, http, method):
    _, seen = echo_upstream
    path = f"/2010-04-01/Accounts/{ACCOUNT}/Messages/SM1.json?To=%2B1555&DateSent%3E=2026-01-01&a=1&a=2"
    headers = {
        "Authorization": basic_auth(),
        "X-Custom": "kept",
        "Idempotency-Key": "passes-through",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "dropped",
        "Proxy-Authorization": "dropped",
    }
    async with http.request(method, proxy.url + path, data=b"a=1&b=2", headers=headers) as answer:
        assert answer.headers["X-Sendguard-Decision"] == "passthrough"
        assert answer.headers["X-Request-Id"]
        assert answer.headers["X-Upstream"] == "yes"
        assert answer.status == 207
    received = seen[-1]
    got = {name.lower(): value for name, value in received["headers"]}
    assert received["method"] == method
    assert received["raw_path"] == path
    assert received["body"] == "a=1&b=2"
    assert got["authorization"] == basic_auth()
    assert got["x-custom"] == "kept"
    assert got["idempotency-key"] == "passes-through"
    assert got["host"] == proxy.url.removeprefix("http://").replace(
        proxy.url.rsplit(":", 1)[1], echo_upstream[0].rsplit(":", 1)[1]
    )
    for hop in ("x-hop", "proxy-authorization", "x-sendguard-upstream-host"):
        assert hop not in got


async def test_compressed_answers_pass_through_byte_for_byte(proxy, http):
    async with http.get(proxy.url + "/gzipped", auto_decompress=False) as answer:
        assert answer.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(await answer.read()) == b'{"zipped": true}'


async def test_large_answers_stream_through(proxy, http):
    async with http.get(proxy.url + "/big") as answer:
        assert len(await answer.read()) == 64 * 65536
        assert answer.headers["X-Sendguard-Decision"] == "passthrough"


async def test_request_id_is_propagated_or_minted(proxy, http):
    async with http.get(proxy.url + "/x", headers={"X-Request-Id": "abc-123"}) as answer:
        assert answer.headers["X-Request-Id"] == "abc-123"
    async with http.get(proxy.url + "/x", headers={"X-Request-Id": "bad id\twith junk"}) as answer:
        assert answer.headers["X-Request-Id"] != "bad id\twith junk"
        assert len(answer.headers["X-Request-Id"]) == 32


async def test_allowlisted_upstream_header_is_honoured(proxy, echo_upstream, http):
    url, seen = echo_upstream
    host = url.removeprefix("http://")
    async with http.get(
        proxy.url + "/routed", headers={"X-Sendguard-Upstream-Host": host}
    ) as answer:
        assert answer.status == 207
    assert seen[-1]["raw_path"] == "/routed"


async def test_guarded_sends_ask_for_an_uncompressed_answer(proxy, echo_upstream, http):
    """A stored answer must replay to any client, so guarded sends ask for identity."""
    _, seen = echo_upstream
    headers = {"Authorization": basic_auth(), "Accept-Encoding": "gzip"}
    path = f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    async with http.post(
        proxy.url + path, data={"To": "+1555", "Body": "x"}, headers=headers
    ) as answer:
        assert answer.headers["X-Sendguard-Decision"] == "forwarded"
        echoed = json.loads(await answer.read())
    assert [v for n, v in echoed["headers"] if n.lower() == "accept-encoding"] == ["identity"]
    assert seen[-1]["body"] == "To=%2B1555&Body=x"


async def test_with_the_sandbox_upstream_a_client_naming_twilio_stays_in_the_sandbox(proxies, http):
    """A demo with real credentials and an SDK recipe that names api.twilio.com in
    X-Sendguard-Upstream-Host must not send a real SMS."""
    from tests.harness import SENDER, post_send

    demo = await proxies.start(upstream="sandbox")
    status, headers, body = await post_send(
        http, demo.url, {"To": "+15558675310", "From": SENDER, "Body": "demo"},
        headers={"X-Sendguard-Upstream-Host": "api.twilio.com"},
    )  # fmt: skip
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    assert body["sid"].startswith("SM")
