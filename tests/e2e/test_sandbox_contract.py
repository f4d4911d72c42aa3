"""The sandbox against Twilio's own artefacts: the OpenAPI schema, twilio-python, and
twilio-python's webhook validator for the status callbacks it signs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from jsonschema import Draft202012Validator
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client as TwilioClient

from proxy.sandbox import Fault, SandboxState, create_sandbox_app, start_sandbox, twilio_signature
from tests.harness import twilio_client
from tests.paths import SHARED_DIR
from tests.sandboxclient import (
    ACCOUNT,
    CALLS,
    MESSAGES,
    SEND,
    TOKEN,
    Client,
    ClientFactory,
    basic,
    get_json,
    send,
)

SHARED = SHARED_DIR
OAI_SPEC = SHARED / "twilio-oai" / "twilio_api_v2010.json"
requires_spec = pytest.mark.skipif(not OAI_SPEC.exists(), reason=f"{OAI_SPEC} not found")


# -- the OpenAPI schema -----------------------------------------------------------------------


def openapi_nullable_to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 `nullable: true` → JSON Schema: `type: [X, "null"]`, or anyOf around a $ref."""
    if isinstance(node, list):
        return [openapi_nullable_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    nullable = node.get("nullable") is True
    converted = {
        key: openapi_nullable_to_json_schema(value)
        for key, value in node.items()
        if not (key == "nullable" and isinstance(value, bool))
    }
    if not nullable:
        return converted
    if "enum" in converted:
        converted["enum"] = [*converted["enum"], None]
    if "type" in converted:
        converted["type"] = [converted["type"], "null"]
        return converted
    return {"anyOf": [converted, {"type": "null"}]}


@pytest.fixture(scope="module")
def oai() -> Iterator[dict[str, Any]]:
    yield json.loads(OAI_SPEC.read_text())


def validator(oai: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """`schema` with the spec's components beside it, so its `#/components/...` refs resolve."""
    components = openapi_nullable_to_json_schema(oai["components"])
    return Draft202012Validator(
        {**openapi_nullable_to_json_schema(schema), "components": components}
    )


def component(oai: dict[str, Any], name: str) -> Draft202012Validator:
    return validator(oai, {"$ref": f"#/components/schemas/{name}"})


@requires_spec
async def test_message_json_matches_the_oai_schema_field_for_field(
    client: Client, state: SandboxState, oai: dict[str, Any]
) -> None:
    schema = component(oai, "api.v2010.account.message")
    fields = set(oai["components"]["schemas"]["api.v2010.account.message"]["properties"])
    service = [("To", "+15558675310"), ("MessagingServiceSid", "MG" + "a" * 32), ("Body", "x")]
    media = [*SEND, ("MediaUrl", "https://example.com/a.png")]
    state.push_fault(Fault("undelivered"))
    for form in (SEND, service, media):
        status, created = await send(client, form)
        assert status == 201
        fetched = await get_json(client, created["uri"])
        for message in (created, fetched):
            schema.validate(message)
            assert set(message) == fields
    async with client.post(created["uri"], data={"Body": ""}) as response:
        schema.validate(await response.json())


@requires_spec
async def test_list_page_matches_the_oai_list_response(client: Client, oai: dict[str, Any]) -> None:
    for _ in range(3):
        await send(client)
    operation = oai["paths"]["/2010-04-01/Accounts/{AccountSid}/Messages.json"]["get"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    list_validator = validator(oai, schema)
    page = await get_json(client, MESSAGES, PageSize="2")
    list_validator.validate(page)
    assert set(page) == set(schema["properties"])
    last = await get_json(client, page["next_page_uri"])
    list_validator.validate(last)
    assert last["next_page_uri"] is None


@requires_spec
async def test_call_json_matches_the_oai_schema(client: Client, oai: dict[str, Any]) -> None:
    form = {"To": "+14158675309", "From": "+15005550006", "Url": "https://example.com/twiml"}
    async with client.post(CALLS, data=form) as response:
        call = await response.json()
    component(oai, "api.v2010.account.call").validate(call)
    assert set(call) == set(oai["components"]["schemas"]["api.v2010.account.call"]["properties"])


def test_nullable_conversion() -> None:
    spec = {"type": "string", "nullable": True, "properties": {"nullable": {"type": "boolean"}}}
    assert openapi_nullable_to_json_schema(spec) == {
        "type": ["string", "null"],
        "properties": {"nullable": {"type": "boolean"}},
    }
    assert openapi_nullable_to_json_schema({"$ref": "#/x", "nullable": True}) == {
        "anyOf": [{"$ref": "#/x"}, {"type": "null"}]
    }


# -- the real twilio-python client ------------------------------------------------------------


@pytest.fixture
async def sandbox_url(monkeypatch: pytest.MonkeyPatch, state: SandboxState) -> AsyncIterator[str]:
    # Region/edge would rewrite the loopback host (TWILIO-FACTS.md §0.2).
    monkeypatch.delenv("TWILIO_REGION", raising=False)
    monkeypatch.delenv("TWILIO_EDGE", raising=False)
    runner, url, _ = await start_sandbox(state=state)
    yield url
    await runner.cleanup()


def sandbox_twilio(url: str) -> TwilioClient:
    """twilio-python pointed at the sandbox, with the sandbox's own auth token."""
    return twilio_client(url, token=TOKEN)


async def test_twilio_python_creates_fetches_and_lists(
    sandbox_url: str, state: SandboxState
) -> None:
    client = sandbox_twilio(sandbox_url)
    since = datetime.now(UTC) - timedelta(seconds=5)
    created = await asyncio.to_thread(
        client.messages.create,
        to="+15558675310",
        from_="+15005550006",
        body="hi",
        media_url=["https://example.com/1.png", "https://example.com/2.png"],
    )
    assert created.sid.startswith("MM") and created.status == "queued" and created.num_media == "2"
    assert state.create_requests()[0].form_values("MediaUrl") == [
        "https://example.com/1.png",
        "https://example.com/2.png",
    ]
    fetched = await asyncio.to_thread(client.messages(created.sid).fetch)
    assert (fetched.sid, fetched.body, fetched.to) == (created.sid, "hi", "+15558675310")
    for _ in range(2):
        await asyncio.to_thread(client.messages.create, to="+1555", from_="+15005550006", body="b")
    # Pages of 2 force twilio-python to follow the relative next_page_uri.
    listed = await asyncio.to_thread(client.messages.list, page_size=2)
    assert len(listed) == 3 and listed[-1].sid == created.sid
    recent = await asyncio.to_thread(client.messages.list, to="+15558675310", date_sent_after=since)
    assert [m.sid for m in recent] == [created.sid]
    assert state.creates == 3


async def test_twilio_python_raises_21610_for_an_opted_out_recipient(
    sandbox_url: str, state: SandboxState
) -> None:
    client = sandbox_twilio(sandbox_url)
    with pytest.raises(TwilioRestException) as raised:
        await asyncio.to_thread(
            client.messages.create, to="+15005550004", from_="+15005550006", body="hi"
        )
    assert (raised.value.code, raised.value.status) == (21610, 400)
    assert state.creates == 0


async def test_twilio_python_sees_a_429_as_a_rest_exception(
    sandbox_url: str, state: SandboxState
) -> None:
    state.push_fault(Fault("429", seconds=1))
    with pytest.raises(TwilioRestException) as raised:
        await asyncio.to_thread(
            sandbox_twilio(sandbox_url).messages.create, to="+1555", from_="+15005550006", body="x"
        )
    assert (raised.value.code, raised.value.status) == (20429, 429)


# -- status callbacks, checked with twilio-python's validator ----------------------------------


class CallbackReceiver:
    """A tiny app standing in for the customer's status-callback endpoint."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.requests: list[tuple[str, list[tuple[str, str]], dict[str, str]]] = []
        self.statuses = statuses or []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        params = [(key, str(value)) for key, value in form.items()]
        self.requests.append((str(request.url), params, dict(request.headers)))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 204)


@pytest.fixture
async def receiver(
    aiohttp_server: Callable[..., Awaitable[Any]],
) -> AsyncIterator[CallbackReceiver]:
    receiver = CallbackReceiver()
    app = web.Application()
    app.router.add_post("/status", receiver.handle)
    server = await aiohttp_server(app)
    receiver.url = str(server.make_url("/status?tenant=t1"))
    yield receiver


@pytest.fixture
async def callback_client(aiohttp_client: ClientFactory, state: SandboxState) -> Client:
    state.send_callbacks = True
    return await aiohttp_client(create_sandbox_app(state), headers=basic())


async def test_status_callbacks_are_signed_and_unique(
    callback_client: Client, state: SandboxState, receiver: CallbackReceiver
) -> None:
    _, created = await send(callback_client, [*SEND, ("StatusCallback", receiver.url)])
    await state.wait_for_callbacks(2)
    validator = RequestValidator(TOKEN)
    for url, params, headers in receiver.requests:
        assert url == receiver.url
        assert validator.validate(url, dict(params), headers["X-Twilio-Signature"])
        assert dict(params)["MessageSid"] == dict(params)["SmsSid"] == created["sid"]
        assert dict(params)["AccountSid"] == ACCOUNT and dict(params)["ApiVersion"] == "2010-04-01"
    assert [dict(p)["MessageStatus"] for _, p, _ in receiver.requests] == ["sent", "delivered"]
    tokens = {headers["I-Twilio-Idempotency-Token"] for _, _, headers in receiver.requests}
    assert len(tokens) == 2
    assert [(a.message_status, a.status) for a in state.callbacks_sent] == [
        ("sent", 204),
        ("delivered", 204),
    ]
    assert state.messages[created["sid"]]["status"] == "delivered"


async def test_undelivered_callback_carries_the_error_code(
    callback_client: Client, state: SandboxState, receiver: CallbackReceiver
) -> None:
    state.push_fault(Fault("undelivered", code=30006))
    await send(callback_client, [*SEND, ("StatusCallback", receiver.url)])
    await state.wait_for_callbacks(2)
    final = dict(receiver.requests[-1][1])
    assert (final["MessageStatus"], final["ErrorCode"]) == ("undelivered", "30006")
    assert "ErrorCode" not in dict(receiver.requests[0][1])


async def test_callbacks_follow_a_reset_because_the_message_exists(
    callback_client: Client, state: SandboxState, receiver: CallbackReceiver
) -> None:
    state.push_fault(Fault("reset"))
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await send(callback_client, [*SEND, ("StatusCallback", receiver.url)])
    await state.wait_for_callbacks(2)
    assert [dict(p)["MessageStatus"] for _, p, _ in receiver.requests] == ["sent", "delivered"]


async def test_failed_callbacks_are_retried_with_the_same_token(
    callback_client: Client, state: SandboxState, receiver: CallbackReceiver
) -> None:
    state.callback_retries = 1
    receiver.statuses = [503]
    await send(callback_client, [*SEND, ("StatusCallback", receiver.url)])
    await state.wait_for_callbacks(3)
    assert [a.status for a in state.callbacks_sent] == [503, 204, 204]
    first, retry = state.callbacks_sent[:2]
    assert (
        first.headers["I-Twilio-Idempotency-Token"] == retry.headers["I-Twilio-Idempotency-Token"]
    )


async def test_no_callbacks_unless_enabled(
    client: Client, state: SandboxState, receiver: CallbackReceiver
) -> None:
    await send(client, [*SEND, ("StatusCallback", receiver.url)])
    await asyncio.sleep(0.05)
    assert receiver.requests == [] and state.callbacks_sent == []


def test_signature_matches_twilios_validator() -> None:
    url = "https://example.com/hook?a=1"
    params = [("To", "+1555"), ("Body", "hi"), ("MediaUrl", "b"), ("MediaUrl", "a")]
    expected = RequestValidator(TOKEN).compute_signature(url, {"To": "+1555", "Body": "hi"})
    assert twilio_signature(TOKEN, url, params[:2]) == expected
    assert twilio_signature(TOKEN, url, params) != expected
