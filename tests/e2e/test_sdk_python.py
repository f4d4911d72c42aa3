"""twilio-python's recipes from docs/sdk-recipes.md, run for real: SDK -> sendguard -> fake Twilio.

test_dedup_e2e.py already covers the sync client with a per-domain base URL (recipe A: dedup by
fingerprint, and the 422 key mismatch as a TwilioRestException). This file adds the async client
(`AsyncTwilioHttpClient`, `create_async`), the custom HTTP client that routes everything through
sendguard with `X-Sendguard-Upstream-Host` (recipe B, sync and async, with an Idempotency-Key
carried in a context variable), and the region/edge pitfall.

The fake Twilio answers on 127.0.0.1, never on api.twilio.com. Where recipe B names the host in
the header, the SDK's api domain is pointed at the fake (the fake stands in for api.twilio.com)
and the fake's address is allowlisted; the recipe's code is otherwise the one in the docs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from tests.harness import ACCOUNT, SENDER, TOKEN, in_thread

TO = "+15558675310"

# twilio-python's AsyncTwilioHttpClient passes an aiohttp.BasicAuth as `auth=`; aiohttp 3.14
# deprecates both. The warnings are the SDK's own (they happen without sendguard too): only
# those two are let through, for the tests that use the stock async client.
sdk_async_basic_auth = pytest.mark.filterwarnings(
    "ignore:BasicAuth is deprecated:DeprecationWarning",
    "ignore:The 'auth' parameter is deprecated:DeprecationWarning",
)

# --- recipe B, as in docs/sdk-recipes.md ---------------------------------------------------------

# The Idempotency-Key of the send being made: twilio-python has no per-call headers, so the key
# travels in a context variable from the call site to the HTTP client (per thread / per task).
idempotency_key: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "idempotency_key", default=None
)


@contextlib.contextmanager
def idempotency(key: str) -> Iterator[None]:
    """Send the calls made inside this block (and tasks started in it) under `key`."""
    token = idempotency_key.set(key)
    try:
        yield
    finally:
        idempotency_key.reset(token)


def _through_sendguard(
    sendguard: Any, method: str, url: str, headers: dict[str, str] | None
) -> tuple[str, dict[str, str]]:
    target = urlsplit(url)  # region/edge already applied by the SDK: the header keeps them
    headers = dict(headers or {})
    headers["X-Sendguard-Upstream-Host"] = target.netloc
    key = idempotency_key.get()
    if key is not None and method.upper() == "POST":
        headers["Idempotency-Key"] = key
    url = urlunsplit((sendguard.scheme, sendguard.netloc, target.path, target.query, ""))
    return url, headers


class SendguardHttpClient(TwilioHttpClient):
    """Sends every request to sendguard, naming the Twilio host it was meant for."""

    def __init__(self, sendguard_url: str = "http://127.0.0.1:8080", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sendguard = urlsplit(sendguard_url)

    def request(self, method, url, params=None, data=None, headers=None, **kwargs):  # type: ignore[no-untyped-def]
        url, headers = _through_sendguard(self.sendguard, method, url, headers)
        return super().request(method, url, params=params, data=data, headers=headers, **kwargs)


class SendguardAsyncHttpClient(AsyncTwilioHttpClient):
    """The same for `AsyncTwilioHttpClient` (create it inside a running event loop)."""

    def __init__(self, sendguard_url: str = "http://127.0.0.1:8080", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sendguard = urlsplit(sendguard_url)

    async def request(self, method, url, params=None, data=None, headers=None, **kwargs):  # type: ignore[no-untyped-def]
        url, headers = _through_sendguard(self.sendguard, method, url, headers)
        return await super().request(
            method, url, params=params, data=data, headers=headers, **kwargs
        )


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
async def proxy(proxies, fake_twilio):
    """One sendguard in front of the fake; the fake's own address is allowlisted so recipe B's
    header can name it (it stands in for api.twilio.com)."""
    return await proxies.start(
        upstream=fake_twilio.url, upstream_allowed_hosts=["*.twilio.com", "127.0.0.1"]
    )


# --- tests ---------------------------------------------------------------------------------------


@sdk_async_basic_auth
async def test_async_client_same_send_twice_creates_once(proxy, fake_twilio):
    """Recipe A with the async client: base URL on the api domain, `create_async` twice."""
    client = Client(ACCOUNT, TOKEN, http_client=AsyncTwilioHttpClient())
    client.api.base_url = proxy.url
    try:
        one = await client.messages.create_async(to=TO, from_=SENDER, body="async hello")
        two = await client.messages.create_async(to=TO, from_=SENDER, body="async hello")
        fetched = await client.messages(one.sid).fetch_async()  # passthrough, same client
    finally:
        await client.http_client.close()
    assert one.sid.startswith("SM") and two.sid == one.sid
    assert fetched.sid == one.sid
    assert fake_twilio.creates == 1


@sdk_async_basic_auth
async def test_async_concurrent_sends_under_one_key_create_once(proxy, fake_twilio):
    """Recipe B, async: five concurrent tasks send under one Idempotency-Key; one create, one
    SID. The same key with another body is refused as the SDK's normal TwilioRestException."""
    http_client = SendguardAsyncHttpClient(proxy.url)
    client = Client(ACCOUNT, TOKEN, http_client=http_client)
    client.api.base_url = fake_twilio.url  # where the SDK believes api.twilio.com is

    def send(body: str) -> Any:
        return client.messages.create_async(to=TO, from_=SENDER, body=body)

    try:
        with idempotency("order-7"):  # the tasks gather() starts here copy the key
            sent = await asyncio.gather(*(send("order 7 shipped") for _ in range(5)))
        with idempotency("order-7"), pytest.raises(TwilioRestException) as refused:
            await send("order 7 cancelled")
        unkeyed = await send("no key: deduped by fingerprint instead")
    finally:
        await http_client.close()
    assert len({message.sid for message in sent}) == 1
    assert unkeyed.sid not in {message.sid for message in sent}
    assert fake_twilio.creates == 2
    assert (refused.value.status, refused.value.code) == (422, 79002)
    assert idempotency_key.get() is None


async def test_sync_client_through_sendguard_by_upstream_host_header(proxy, fake_twilio):
    """Recipe B, sync: every request goes to sendguard with the original host in the header;
    the same send twice is one create; the header is sendguard's own and never reaches Twilio."""
    http_client = SendguardHttpClient(proxy.url)
    client = Client(ACCOUNT, TOKEN, http_client=http_client)
    client.api.base_url = fake_twilio.url  # where the SDK believes api.twilio.com is

    def send_twice_and_fetch() -> tuple[Any, Any, Any]:
        one = client.messages.create(to=TO, from_=SENDER, body="sync hello")
        two = client.messages.create(to=TO, from_=SENDER, body="sync hello")
        return one, two, client.messages(one.sid).fetch()

    try:
        one, two, fetched = await in_thread(send_twice_and_fetch)
    finally:
        http_client.session.close()
    assert one.sid.startswith("SM") and two.sid == one.sid == fetched.sid
    assert fake_twilio.creates == 1
    assert fake_twilio.received, "nothing reached the fake Twilio"
    for received in fake_twilio.received:
        assert "X-Sendguard-Upstream-Host" not in received.headers


async def test_sync_client_idempotency_key_from_context(proxy, fake_twilio):
    """Recipe B, sync, keyed: the key set around the call reaches sendguard; a new key is a new
    message even with the same content; a malformed key is refused before anything is sent."""
    http_client = SendguardHttpClient(proxy.url)
    client = Client(ACCOUNT, TOKEN, http_client=http_client)
    client.api.base_url = fake_twilio.url

    def send(key: str) -> Any:
        with idempotency(key):
            return client.messages.create(to=TO, from_=SENDER, body="your code is 4711")

    try:
        first = await in_thread(send, "login-1")
        again = await in_thread(send, '"login-1"')  # quoted and bare are the same key
        other = await in_thread(send, "login-2")
        with pytest.raises(TwilioRestException) as malformed:
            await in_thread(send, "has space")
    finally:
        http_client.session.close()
    assert again.sid == first.sid and other.sid != first.sid
    assert fake_twilio.creates == 2
    assert (malformed.value.status, malformed.value.code) == (400, 79001)


def test_region_rewrites_a_base_url_override(monkeypatch):
    """The pitfall of recipe A: TWILIO_REGION alone (no code change) rewrites the proxy's host
    before the HTTP client sees it, so requests no longer reach sendguard."""
    monkeypatch.setenv("TWILIO_REGION", "au1")
    client = Client(ACCOUNT, TOKEN)
    client.api.base_url = "http://127.0.0.1:8080"
    url = client.get_hostname(client.api.absolute_url("/2010-04-01/Accounts"))
    assert urlsplit(url).netloc == "127.au1.0.1:8080"


async def test_custom_http_client_is_immune_to_region_and_edge(fake_twilio, monkeypatch):
    """Recipe B with region and edge set: the request still goes to sendguard's address (here
    the fake stands in for sendguard), and the header names the regional Twilio host."""
    monkeypatch.delenv("TWILIO_REGION", raising=False)
    monkeypatch.delenv("TWILIO_EDGE", raising=False)
    http_client = SendguardHttpClient(fake_twilio.url)
    client = Client(ACCOUNT, TOKEN, region="au1", edge="sydney", http_client=http_client)
    try:
        message = await in_thread(client.messages.create, to=TO, from_=SENDER, body="g'day")
    finally:
        http_client.session.close()
    assert message.sid.startswith("SM")
    (received,) = fake_twilio.create_requests()
    assert received.headers["X-Sendguard-Upstream-Host"] == "api.sydney.au1.twilio.com"
    assert received.path == f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
