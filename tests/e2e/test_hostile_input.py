"""Hostile and malformed input: a clear Twilio-shaped 4xx, no traceback, nothing lost or sent,
and the process keeps serving. Raw sockets where an HTTP client would refuse to misbehave."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import MESSAGES, SENDER, basic_auth, post_send

GOOD = {"To": "+15558675310", "From": SENDER, "Body": "ok"}


@pytest.fixture
async def proxy(proxies, fake_twilio, shared_redis_url):
    return await proxies.start(
        upstream=fake_twilio.url, redis_url=shared_redis_url, max_body_bytes=4096
    )


async def raw_exchange(url: str, payload: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(payload)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


def assert_twilio_shaped(body: dict, status: int, code: int) -> None:
    assert body["status"] == status and body["code"] == code
    assert body["message"].startswith("sendguard: ")
    assert body["more_info"].startswith("https://")
    assert not ({"type", "title"} <= body.keys())


async def still_serving(http, proxy) -> None:
    status, headers, _ = await post_send(http, proxy.url, {**GOOD, "Body": "still alive"})
    assert status == 201 and headers["X-Sendguard-Decision"] in {"forwarded", "replayed"}


async def test_oversized_body_is_413(proxy, fake_twilio, http):
    status, headers, body = await post_send(http, proxy.url, {**GOOD, "Body": "x" * 5000})
    assert status == 413 and headers["X-Sendguard-Decision"] == "too-large"
    assert_twilio_shaped(body, 413, 79012)
    assert fake_twilio.creates == 0
    await still_serving(http, proxy)


async def test_oversized_chunked_body_is_413(proxy, fake_twilio, http):
    async def chunks():
        for _ in range(10):
            yield b"Body=" + b"x" * 1000

    headers = {"Authorization": basic_auth(), "Content-Type": "application/x-www-form-urlencoded"}
    async with http.post(proxy.url + MESSAGES, data=chunks(), headers=headers) as response:
        assert response.status == 413
        assert_twilio_shaped(await response.json(), 413, 79012)
    assert fake_twilio.creates == 0


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"To=%2B1555&Body=%ZZ", "application/x-www-form-urlencoded"),
        (b"\xff\xfe\xfd", "application/x-www-form-urlencoded"),
        (b'{"To": "+15558675310"}', "application/json"),
        (b"just text", "text/plain"),
    ],
)
async def test_malformed_send_is_400(proxy, fake_twilio, http, body, content_type):
    headers = {"Authorization": basic_auth(), "Content-Type": content_type}
    async with http.post(proxy.url + MESSAGES, data=body, headers=headers) as response:
        assert response.status == 400
        assert response.headers["X-Sendguard-Decision"] == "invalid-request"
        assert_twilio_shaped(await response.json(), 400, 79011)
    assert fake_twilio.creates == 0


@pytest.mark.parametrize(
    "host", ["evil.example", "api.twilio.com.evil.example", "127.0.0.1", "api.twilio.com/x", "a b"]
)
async def test_upstream_host_outside_allowlist_is_refused(proxy, fake_twilio, http, host):
    status, headers, body = await post_send(
        http, proxy.url, GOOD, headers={"X-Sendguard-Upstream-Host": host}
    )
    assert (status, headers["X-Sendguard-Decision"]) == (400, "refused")
    assert_twilio_shaped(body, 400, 79010)
    assert fake_twilio.received == []


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n",
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n",
        b"POST https://api.twilio.com" + MESSAGES.encode() + b" HTTP/1.1\r\nHost: x\r\n",
    ],
)
async def test_relay_attempts_are_refused(proxy, fake_twilio, request_line, http):
    answer = await raw_exchange(proxy.url, request_line + b"Connection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"X-Sendguard-Decision: refused" in head
    assert_twilio_shaped(json.loads(body), 400, 79010)
    assert fake_twilio.received == []
    await still_serving(http, proxy)


@pytest.mark.parametrize(
    "garbage",
    [
        b"POST / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x00\x01\x02 garbage\r\n\r\n",
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
)
async def test_garbage_on_the_wire_gets_a_4xx_and_no_traceback(proxy, http, garbage):
    answer = await raw_exchange(proxy.url, garbage)
    assert answer.startswith(b"HTTP/1.") and answer[9:10] == b"4", answer[:200]
    assert b"Traceback" not in answer
    await still_serving(http, proxy)


header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.binary(max_size=600),
    content_type=st.sampled_from(
        ["application/x-www-form-urlencoded", "application/json", "", "text/plain; charset=x"]
    ),
    key=st.one_of(st.none(), header_text),
    upstream_host=st.one_of(st.none(), header_text),
    request_id=st.one_of(st.none(), header_text),
)
async def test_fuzzed_sends_never_5xx(
    proxy, http, body, content_type, key, upstream_host, request_id
):
    headers = {"Authorization": basic_auth(), "Content-Type": content_type}
    for name, value in (
        ("Idempotency-Key", key),
        ("X-Sendguard-Upstream-Host", upstream_host),
        ("X-Request-Id", request_id),
    ):
        if value is not None:
            headers[name] = value
    try:
        async with http.post(proxy.url + MESSAGES, data=body, headers=headers) as response:
            payload = await response.read()
            assert response.status < 500, payload[:300]
            assert b"Traceback" not in payload
            assert response.headers["X-Sendguard-Decision"]
            assert response.headers["X-Request-Id"]
    except aiohttp.ClientResponseError:
        pass  # the client library itself refused to send a malformed header value


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#?"),
        max_size=120,
    ),
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"]),
)
async def test_fuzzed_paths_never_5xx(proxy, path, method):
    line = f"{method} /{path} HTTP/1.1\r\nHost: x\r\nAuthorization: {basic_auth()}\r\n"
    answer = await raw_exchange(
        proxy.url, line.encode() + b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    assert answer[9:10] in (b"2", b"4"), answer[:200]
    assert b"Traceback" not in answer
