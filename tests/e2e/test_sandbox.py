"""The sandbox upstream: Twilio's Messages/Calls behaviour, exact counting, and every fault kind."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.sandbox import (
    FAULT_HEADER,
    LIST_LAG_HEADER,
    SANDBOX_STATE,
    Fault,
    SandboxState,
    create_sandbox_app,
    parse_fault,
    start_sandbox,
)
from proxy.sandbox.messages import count_segments
from tests.sandboxclient import (
    ACCOUNT,
    API_KEY,
    BASE,
    CALLS,
    MESSAGES,
    OTHER_ACCOUNT,
    SEND,
    Client,
    ClientFactory,
    basic,
    get_json,
    send,
)

MESSAGE_SID = re.compile(r"^(SM|MM)[0-9a-f]{32}$")


def assert_twilio_error(body: dict[str, Any], code: int, status: int) -> None:
    assert body["code"] == code
    assert body["status"] == status
    assert body["more_info"] == f"https://www.twilio.com/docs/errors/{code}"
    assert body["message"]


# -- create and count -------------------------------------------------------------------------


async def test_create_answers_201_with_twilio_message_json_and_counts(
    client: Client, state: SandboxState
) -> None:
    async with client.post(MESSAGES, data=SEND) as response:
        assert response.status == 201
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert re.match(r"^RQ[0-9a-f]{32}$", response.headers["Twilio-Request-Id"])
        assert float(response.headers["Twilio-Request-Duration"]) >= 0
        assert response.headers["X-Home-Region"] == "us1"
        assert response.headers["X-Api-Domain"] == "api.twilio.com"
        message = await response.json()
    sid = message["sid"]
    assert sid.startswith("SM") and MESSAGE_SID.match(sid)
    assert message["status"] == "queued"
    assert message["direction"] == "outbound-api"
    assert (message["to"], message["from"], message["body"]) == (
        "+15558675310",
        "+15005550006",
        "hello",
    )
    assert (message["num_media"], message["num_segments"]) == ("0", "1")
    assert message["error_code"] is None and message["messaging_service_sid"] is None
    assert message["uri"] == f"{BASE}/Messages/{sid}.json"
    assert message["subresource_uris"] == {"media": f"{BASE}/Messages/{sid}/Media.json"}
    created = parsedate_to_datetime(message["date_created"])
    assert abs(created - datetime.now(UTC)) < timedelta(seconds=5)
    assert message["date_created"].endswith(" +0000")
    assert state.creates == 1
    assert state.messages[sid] == message
    assert [r.path for r in state.create_requests()] == [MESSAGES]


async def test_messaging_service_create_is_accepted_without_sender(client: Client) -> None:
    service = "MG" + "0" * 32
    status, message = await send(
        client, [("To", "+15558675310"), ("MessagingServiceSid", service), ("Body", "x")]
    )
    assert status == 201
    assert message["status"] == "accepted"
    assert message["from"] is None and message["messaging_service_sid"] == service
    assert message["num_segments"] == "0"


async def test_media_urls_keep_order_and_make_an_mm_sid(
    client: Client, state: SandboxState
) -> None:
    form = [
        ("To", "+15558675310"),
        ("MediaUrl", "https://a.example/1.png"),
        ("From", "+15005550006"),
        ("MediaUrl", "https://a.example/2.png"),
    ]
    status, message = await send(client, form)
    assert status == 201
    assert message["sid"].startswith("MM") and message["num_media"] == "2"
    received = state.create_requests()[0]
    assert received.form == form
    assert received.form_values("MediaUrl") == [
        "https://a.example/1.png",
        "https://a.example/2.png",
    ]
    assert received.headers["content-type"] == "application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    ("body", "segments"),
    [("", 1), ("a" * 160, 1), ("a" * 161, 2), ("a" * 306, 2), ("a" * 307, 3), ("€" * 80, 1),
     ("€" * 81, 2), ("é" * 160, 1), ("ł" * 70, 1), ("ł" * 71, 2), ("👍" * 35, 1), ("👍" * 36, 2)],
)  # fmt: skip
def test_segments_count_gsm7_and_ucs2(body: str, segments: int) -> None:
    assert count_segments(body) == segments


async def test_every_request_is_recorded_even_refused_ones(
    aiohttp_client: ClientFactory, state: SandboxState
) -> None:
    anonymous = await aiohttp_client(create_sandbox_app(state))
    async with anonymous.get(f"{MESSAGES}?To=%2B1555&To=%2B1666"):
        pass
    async with anonymous.post("/nowhere", data=b"raw", headers={"X-Custom": "1"}):
        pass
    first, second = state.received
    assert (first.method, first.path, first.query.getall("To")) == (
        "GET",
        MESSAGES,
        ["+1555", "+1666"],
    )
    assert (second.method, second.path, second.headers["x-custom"]) == ("POST", "/nowhere", "1")
    assert state.creates == 0 and state.create_requests() == []


# -- validation and magic numbers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "code"),
    [
        ([("From", "+15005550006"), ("Body", "x")], 21604),
        ([("To", "+15558675310"), ("Body", "x")], 21603),
        ([("To", "+15558675310"), ("From", "+15005550006")], 21602),
        ([("To", "+15558675310"), ("From", "+15005550006"), ("Body", "x" * 1601)], 21617),
        ([("To", "not a number"), ("From", "+15005550006"), ("Body", "x")], 21211),
        ([("To", "+15558675310"), ("From", "+15005550001"), ("Body", "x")], 21212),
        ([("To", "+15558675310"), ("From", "+15005550007"), ("Body", "x")], 21606),
        ([("To", "+15558675310"), ("From", "+15005550008"), ("Body", "x")], 21611),
        ([("To", "+15005550001"), ("From", "+15005550006"), ("Body", "x")], 21211),
        ([("To", "+15005550002"), ("From", "+15005550006"), ("Body", "x")], 21612),
        ([("To", "+15005550003"), ("From", "+15005550006"), ("Body", "x")], 21408),
        ([("To", "+15005550004"), ("From", "+15005550006"), ("Body", "x")], 21610),
        ([("To", "+15005550009"), ("From", "+15005550006"), ("Body", "x")], 21614),
    ],
)
async def test_invalid_creates_fail_like_twilio_and_create_nothing(
    client: Client, state: SandboxState, form: list[tuple[str, str]], code: int
) -> None:
    status, body = await send(client, form)
    assert status == 400
    assert_twilio_error(body, code, 400)
    assert state.creates == 0 and state.messages == {}
    assert len(state.create_requests()) == 1


async def test_body_of_exactly_1600_chars_is_accepted(client: Client) -> None:
    status, message = await send(client, [*SEND[:2], ("Body", "x" * 1600)])
    assert (status, message["num_segments"]) == (201, "11")


# -- auth and unknown routes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic(OTHER_ACCOUNT),
        basic(ACCOUNT, ""),
        {"Authorization": "Bearer abc"},
        {"Authorization": "Basic not-base64!"},
    ],
    ids=["missing", "other-account", "empty-password", "bearer", "malformed"],
)
async def test_bad_credentials_get_401_20003(
    aiohttp_client: ClientFactory, state: SandboxState, headers: dict[str, str]
) -> None:
    anonymous = await aiohttp_client(create_sandbox_app(state))
    async with anonymous.post(MESSAGES, data=SEND, headers=headers) as response:
        assert response.status == 401
        assert_twilio_error(await response.json(), 20003, 401)
    assert state.creates == 0


async def test_api_key_credentials_are_accepted(client: Client, state: SandboxState) -> None:
    status, _ = await send(client, headers=basic(API_KEY, "key-secret"))
    assert status == 201 and state.creates == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", f"{BASE}/Nope.json"),
        ("POST", "/2010-04-01/Accounts/ACnothex/Messages.json"),
        ("GET", f"{BASE}/Messages/SM{'0' * 32}.json"),
        ("PUT", MESSAGES),
    ],
)
async def test_unknown_resources_get_twilio_404(client: Client, method: str, path: str) -> None:
    async with client.request(method, path) as response:
        assert response.status == 404
        body = await response.json()
    assert_twilio_error(body, 20404, 404)
    assert body["message"] == f"The requested resource {path} was not found"


async def test_another_accounts_message_is_not_found(client: Client, state: SandboxState) -> None:
    _, message = await send(client)
    other = f"/2010-04-01/Accounts/{OTHER_ACCOUNT}/Messages/{message['sid']}.json"
    async with client.get(other, headers=basic(OTHER_ACCOUNT)) as response:
        assert response.status == 404


# -- fetch, list, update, delete --------------------------------------------------------------


async def test_fetch_returns_the_created_message(client: Client) -> None:
    _, created = await send(client)
    async with client.get(created["uri"]) as response:
        assert response.status == 200
        assert await response.json() == created


async def create_many(client: Client, recipients: list[str]) -> list[str]:
    sids = []
    for index, to in enumerate(recipients):
        _, message = await send(
            client, [("To", to), ("From", "+15005550006"), ("Body", f"m{index}")]
        )
        sids.append(message["sid"])
    return sids


async def test_list_filters_by_to_and_from_newest_first(client: Client) -> None:
    sids = await create_many(client, ["+15550000001", "+15550000002", "+15550000001"])
    page = await get_json(client, MESSAGES, To="+15550000001")
    assert [m["sid"] for m in page["messages"]] == [sids[2], sids[0]]
    assert (await get_json(client, MESSAGES, From="+15005550006"))["end"] == 2
    assert (await get_json(client, MESSAGES, From="+15005550099"))["messages"] == []


async def test_list_pages_follow_relative_next_page_uri(client: Client) -> None:
    sids = await create_many(client, [f"+1555000000{i}" for i in range(5)])
    page = await get_json(client, MESSAGES, PageSize="2")
    assert (page["page"], page["page_size"], page["start"], page["end"]) == (0, 2, 0, 1)
    assert page["previous_page_uri"] is None
    assert page["first_page_uri"] == f"{MESSAGES}?PageSize=2&Page=0"
    seen = [m["sid"] for m in page["messages"]]
    while page["next_page_uri"]:
        page = await get_json(client, page["next_page_uri"])
        assert page["previous_page_uri"].startswith(MESSAGES)
        seen += [m["sid"] for m in page["messages"]]
    assert seen == sids[::-1]
    assert (page["page"], page["start"], page["end"]) == (2, 4, 4)


async def test_list_filters_by_date_sent(client: Client) -> None:
    _, message = await send(client)
    sent = parsedate_to_datetime(message["date_sent"])
    day, second = timedelta(days=1), timedelta(seconds=1)

    async def listed(**params: str) -> list[str]:
        return [m["sid"] for m in (await get_json(client, MESSAGES, **params))["messages"]]

    on = sent.date().isoformat()
    assert await listed(DateSent=on) == [message["sid"]]
    assert await listed(DateSent=(sent - day).date().isoformat()) == []
    assert await listed(**{"DateSent>": on, "DateSent<": on}) == [message["sid"]]
    assert await listed(**{"DateSent>": (sent + day).date().isoformat()}) == []
    assert await listed(**{"DateSent<": (sent - day).date().isoformat()}) == []
    # Date-times compare to the second: a bound later within the same second still matches,
    # so "sent since I claimed it" finds the message.
    within_second = (sent + timedelta(milliseconds=700)).isoformat()
    assert await listed(**{"DateSent>": within_second}) == [message["sid"]]
    assert await listed(**{"DateSent>": (sent + second).isoformat()}) == []
    rfc2822_bound = (sent - 30 * second).strftime("%a, %d %b %Y %H:%M:%S +0000")
    assert await listed(**{"DateSent>": rfc2822_bound}) == [message["sid"]]
    async with client.get(MESSAGES, params={"DateSent>": "yesterday"}) as response:
        assert response.status == 400


async def test_list_is_scoped_to_the_account(client: Client) -> None:
    await create_many(client, ["+15550000001"])
    other = f"/2010-04-01/Accounts/{OTHER_ACCOUNT}/Messages.json"
    async with client.get(other, headers=basic(OTHER_ACCOUNT)) as response:
        assert (await response.json())["messages"] == []


async def test_update_redacts_and_cancels(client: Client, state: SandboxState) -> None:
    _, message = await send(client)
    async with client.post(message["uri"], data={"Body": ""}) as response:
        assert response.status == 200
        assert (await response.json())["body"] == ""
    async with client.post(message["uri"], data={"Status": "canceled"}) as response:
        assert (await response.json())["status"] == "canceled"
    async with client.post(message["uri"], data={"Status": "canceled"}) as response:
        assert response.status == 400
    assert state.messages[message["sid"]]["status"] == "canceled"
    assert state.creates == 1


async def test_delete_answers_204_then_the_message_is_gone(client: Client) -> None:
    _, message = await send(client)
    async with client.delete(message["uri"]) as response:
        assert response.status == 204
        assert await response.read() == b""
    async with client.get(message["uri"]) as response:
        assert response.status == 404


# -- calls ------------------------------------------------------------------------------------


async def test_calls_are_created_counted_and_fetched(client: Client, state: SandboxState) -> None:
    form = {
        "To": "+14158675309",
        "From": "+15005550006",
        "Url": "https://demo.twilio.com/docs/voice.xml",
    }
    async with client.post(CALLS, data=form) as response:
        assert response.status == 201
        call = await response.json()
    assert re.match(r"^CA[0-9a-f]{32}$", call["sid"])
    assert (call["status"], call["direction"], call["to_formatted"]) == (
        "queued",
        "outbound-api",
        "(415) 867-5309",
    )
    assert call["uri"] == f"{BASE}/Calls/{call['sid']}.json"
    assert state.creates == 1 and state.calls[call["sid"]] == call
    assert await get_json(client, call["uri"]) == call
    async with client.post(CALLS, data={"To": "+14158675309", "From": "+15005550006"}) as response:
        assert response.status == 400
        assert (await response.json())["code"] == 21205
    assert state.creates == 1 and len(state.create_requests()) == 2


# -- faults -----------------------------------------------------------------------------------


async def test_delay_counts_the_create_before_answering(
    client: Client, state: SandboxState
) -> None:
    state.push_fault(Fault("delay", seconds=0.4))
    started = time.monotonic()
    answer = asyncio.create_task(send(client))
    await state.wait_for_creates(1, timeout=0.3)
    assert not answer.done()
    status, _ = await answer
    assert status == 201 and time.monotonic() - started >= 0.4
    assert state.creates == 1


async def test_500_after_create_counts_and_the_message_exists(
    client: Client, state: SandboxState
) -> None:
    state.push_fault(Fault("500-after-create"))
    status, body = await send(client)
    assert status == 500
    assert_twilio_error(body, 20500, 500)
    assert state.creates == 1
    [message] = (await get_json(client, MESSAGES, To="+15558675310"))["messages"]
    assert message["body"] == "hello"


async def test_hang_never_answers_but_creates(client: Client, state: SandboxState) -> None:
    state.push_fault(Fault("hang"))
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await send(client, timeout=aiohttp.ClientTimeout(total=0.3))
    assert state.creates == 1
    assert time.monotonic() - started < 2


async def test_hang_for_seconds_then_drops_the_connection(
    client: Client, state: SandboxState
) -> None:
    state.push_fault(Fault("hang", seconds=0.2))
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await send(client)
    assert state.creates == 1


@pytest.mark.parametrize(("seconds", "retry_after"), [(0, None), (3, "3"), (0.5, "1")])
async def test_429_refuses_without_creating(
    client: Client, state: SandboxState, seconds: float, retry_after: str | None
) -> None:
    state.push_fault(Fault("429", seconds=seconds))
    async with client.post(MESSAGES, data=SEND) as response:
        assert response.status == 429
        assert response.headers.get("Retry-After") == retry_after
        body = await response.json()
    assert body == {
        "code": 20429,
        "message": "Too Many Requests",
        "more_info": "https://www.twilio.com/docs/errors/20429",
        "status": 429,
    }
    assert state.creates == 0 and len(state.create_requests()) == 1


async def test_reset_drops_the_connection_after_creating(
    client: Client, state: SandboxState
) -> None:
    state.push_fault(Fault("reset"))
    with pytest.raises(
        (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError)
    ):
        await send(client)
    assert state.creates == 1
    assert state.create_requests()[0].form == SEND


async def test_undelivered_answers_queued_then_shows_the_error(
    client: Client, state: SandboxState
) -> None:
    state.push_fault(Fault("undelivered", code=30007))
    status, created = await send(client)
    assert (status, created["status"], created["error_code"]) == (201, "queued", None)
    fetched = await get_json(client, created["uri"])
    assert (fetched["status"], fetched["error_code"]) == ("undelivered", 30007)
    assert fetched["error_message"]
    [listed] = (await get_json(client, MESSAGES))["messages"]
    assert listed["error_code"] == 30007


async def test_faults_apply_to_the_next_n_creates_only(client: Client, state: SandboxState) -> None:
    state.push_fault(Fault("500-after-create"), times=2)
    await get_json(client, MESSAGES)  # not a create: takes no fault
    statuses = [(await send(client))[0] for _ in range(3)]
    assert statuses == [500, 500, 201]
    assert state.creates == 3


async def test_faults_apply_to_calls_too(client: Client, state: SandboxState) -> None:
    state.push_fault(Fault("500-after-create"))
    form = {"To": "+14158675309", "From": "+15005550006", "Twiml": "<Response/>"}
    async with client.post(CALLS, data=form) as response:
        assert response.status == 500
    assert state.creates == 1 and len(state.calls) == 1


@pytest.mark.parametrize(
    ("header", "status", "creates"),
    [("429=3", 429, 0), ("500-after-create", 500, 1), ("delay=0.05", 201, 1), ("bogus", 400, 0)],
)
async def test_header_faults_for_demos(
    client: Client, state: SandboxState, header: str, status: int, creates: int
) -> None:
    async with client.post(MESSAGES, data=SEND, headers={FAULT_HEADER: header}) as response:
        assert response.status == status
        if status == 429:
            assert response.headers["Retry-After"] == "3"
    assert state.creates == creates


async def test_header_fault_undelivered_with_code(client: Client) -> None:
    _, created = await send(client, headers={FAULT_HEADER: "undelivered=30005"})
    assert (await get_json(client, created["uri"]))["error_code"] == 30005


@pytest.mark.parametrize(
    ("text", "fault"),
    [("delay=2", Fault("delay", seconds=2)), ("hang", Fault("hang")), ("429", Fault("429")),
     ("429=3", Fault("429", seconds=3)), ("reset", Fault("reset")),
     (" Undelivered=30007 ", Fault("undelivered", code=30007))],
)  # fmt: skip
def test_parse_fault(text: str, fault: Fault) -> None:
    assert parse_fault(text) == fault


@pytest.mark.parametrize("text", ["explode", "delay=soon", "delay=-1", "undelivered=x"])
def test_parse_fault_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_fault(text)


async def test_wait_for_creates_times_out_with_the_counts(state: SandboxState) -> None:
    with pytest.raises(TimeoutError, match="creates=0"):
        await state.wait_for_creates(1, timeout=0.05)


# -- start_sandbox and status callbacks -------------------------------------------------------


async def test_start_sandbox_serves_on_an_ephemeral_port() -> None:
    runner, url, state = await start_sandbox()
    try:
        assert re.match(r"^http://127\.0\.0\.1:\d+$", url)
        assert runner.app[SANDBOX_STATE] is state
        async with (
            aiohttp.ClientSession(headers=basic()) as session,
            session.post(url + MESSAGES, data=SEND) as response,
        ):
            assert response.status == 201
        assert state.creates == 1
    finally:
        await runner.cleanup()


async def test_cleanup_releases_a_hung_request_promptly() -> None:
    runner, url, state = await start_sandbox()
    state.push_fault(Fault("hang"))
    async with aiohttp.ClientSession(headers=basic()) as session:
        pending = asyncio.create_task(session.post(url + MESSAGES, data=SEND))
        await state.wait_for_creates(1)
        started = time.monotonic()
        await runner.cleanup()
        assert time.monotonic() - started < 2
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            await pending


# -- list lag: a new message missing from the list for a while (TWILIO-FACTS.md §2.5) ---------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def listed_sids(client: Client, **params: str) -> list[str]:
    return [m["sid"] for m in (await get_json(client, MESSAGES, **params))["messages"]]


async def test_list_lag_hides_a_new_message_from_the_list_but_not_from_fetch(
    client: Client, state: SandboxState
) -> None:
    clock = FakeClock()
    state.clock, state.list_lag_seconds = clock, 5.0
    _, created = await send(client)
    assert await listed_sids(client) == []
    assert await listed_sids(client, To="+15558675310") == []
    assert await get_json(client, created["uri"]) == created  # fetch by SID: at once
    clock.now += 4.9
    assert await listed_sids(client) == []
    clock.now += 0.1
    assert await listed_sids(client, To="+15558675310") == [created["sid"]]
    assert state.creates == 1


async def test_list_lag_per_create_header_and_the_list_is_newest_first(
    client: Client, state: SandboxState
) -> None:
    clock = FakeClock()
    state.clock, state.list_lag_seconds = clock, 60.0
    _, at_once = await send(client, headers={LIST_LAG_HEADER: "0"})
    _, lagging = await send(client, headers={LIST_LAG_HEADER: "2.5"})
    _, default = await send(client)
    assert await listed_sids(client) == [at_once["sid"]]
    clock.now += 2.5
    assert await listed_sids(client) == [lagging["sid"], at_once["sid"]]
    clock.now += 60
    page = await get_json(client, MESSAGES, To="+15558675310", PageSize="2")
    assert [m["sid"] for m in page["messages"]] == [default["sid"], lagging["sid"]]
    assert page["next_page_uri"] == f"{MESSAGES}?To=%2B15558675310&PageSize=2&Page=1&PageToken=PA{lagging['sid']}"  # fmt: skip
    older = await get_json(client, page["next_page_uri"])
    assert [m["sid"] for m in older["messages"]] == [at_once["sid"]]
    assert older["next_page_uri"] is None
    for message in page["messages"]:  # RFC 2822, whole seconds, as Twilio writes dates
        assert re.fullmatch(
            r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000",
            message["date_created"],
        )


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf", "86401"])
async def test_a_bad_list_lag_header_is_a_400_that_creates_nothing(
    client: Client, state: SandboxState, value: str
) -> None:
    state.push_fault(Fault("500-after-create"))
    status, body = await send(client, headers={LIST_LAG_HEADER: value})
    assert status == 400
    assert_twilio_error(body, 20001, 400)
    assert LIST_LAG_HEADER in body["message"]
    assert state.creates == 0
    status, _ = await send(client)
    assert status == 500  # the queued fault was not used up by the refused create


async def test_500_after_create_with_list_lag_is_found_by_fetch_then_by_list(
    client: Client, state: SandboxState
) -> None:
    clock = FakeClock()
    state.clock = clock
    state.push_fault(Fault("500-after-create"))
    status, _ = await send(client, headers={LIST_LAG_HEADER: "5"})
    assert (status, state.creates) == (500, 1)
    [sid] = state.messages
    assert await listed_sids(client, To="+15558675310") == []
    assert (await get_json(client, f"{BASE}/Messages/{sid}.json"))["sid"] == sid
    clock.now += 5
    assert await listed_sids(client, To="+15558675310") == [sid]


async def test_a_deleted_lagging_message_is_gone_from_both(
    client: Client, state: SandboxState
) -> None:
    clock = FakeClock()
    state.clock, state.list_lag_seconds = clock, 5.0
    _, created = await send(client)
    async with client.delete(created["uri"]) as response:
        assert response.status == 204
    clock.now += 10
    assert await listed_sids(client) == []
    assert state.messages == {}


async def test_list_lag_in_real_time(client: Client, state: SandboxState) -> None:
    _, created = await send(client, headers={LIST_LAG_HEADER: "0.3"})
    assert await listed_sids(client) == []
    await asyncio.sleep(0.35)
    assert await listed_sids(client) == [created["sid"]]


# -- status callbacks: queued → sent → delivered ----------------------------------------------


@pytest.fixture
async def status_receiver(
    aiohttp_server: Callable[..., Awaitable[Any]],
) -> tuple[str, list[dict[str, str]]]:
    got: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        got.append({key: str(value) for key, value in (await request.post()).items()})
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/status", handle)
    server = await aiohttp_server(app)
    return str(server.make_url("/status")), got


async def test_a_messaging_service_send_reports_queued_sent_delivered(
    client: Client, state: SandboxState, status_receiver: tuple[str, list[dict[str, str]]]
) -> None:
    url, got = status_receiver
    state.send_callbacks = True
    service = "MG" + "ab" * 16
    form = [("To", "+15558675310"), ("MessagingServiceSid", service), ("Body", "hi"),
            ("StatusCallback", url)]  # fmt: skip
    status, created = await send(client, form)
    assert (status, created["status"]) == (201, "accepted")  # no callback for the first status
    await state.wait_for_callbacks(3)
    assert [g["MessageStatus"] for g in got] == ["queued", "sent", "delivered"]
    assert all(g["MessagingServiceSid"] == service and "ErrorCode" not in g for g in got)
    assert state.messages[created["sid"]]["status"] == "delivered"


async def test_a_from_send_reports_sent_then_the_failure_code(
    client: Client, state: SandboxState, status_receiver: tuple[str, list[dict[str, str]]]
) -> None:
    url, got = status_receiver
    state.send_callbacks = True
    state.push_fault(Fault("undelivered", code=30003))
    status, created = await send(client, [*SEND, ("StatusCallback", url)])
    assert (status, created["status"]) == (201, "queued")
    await state.wait_for_callbacks(2)
    assert [(g["MessageStatus"], g.get("ErrorCode")) for g in got] == [
        ("sent", None),
        ("undelivered", "30003"),
    ]


async def test_callbacks_follow_a_500_after_create(
    client: Client, state: SandboxState, status_receiver: tuple[str, list[dict[str, str]]]
) -> None:
    """The client saw a 500, but the message exists and goes out: its callbacks say so."""
    url, got = status_receiver
    state.send_callbacks = True
    state.push_fault(Fault("500-after-create"))
    status, _ = await send(client, [*SEND, ("StatusCallback", url)])
    assert status == 500
    await state.wait_for_callbacks(2)
    [sid] = state.messages
    assert [(g["MessageStatus"], g["MessageSid"]) for g in got] == [
        ("sent", sid),
        ("delivered", sid),
    ]


def test_the_demo_state_sends_callbacks() -> None:
    demo = SandboxState.for_demo()
    assert demo.send_callbacks and demo.callback_interval > 0
    assert demo.list_lag_seconds == 0
