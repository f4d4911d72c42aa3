"""The tee's trust model, end to end through sendguard: which sends teach an auth token, and
what a callback URL is bound to (SPEC §3.2, "Where the codes are learned").

An attacker here holds a token of their own (or made one up), and a callback URL captured from
someone else's send. Neither may let them teach a suppression for anyone's recipient, nor have
sendguard forward their callback to the app. Only the public HTTP surface is used: a scripted
Twilio that answers creates as told and records their forms, and callbacks signed the way Twilio
signs them (twilio-python's RequestValidator).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import aiohttp
import pytest
from aiohttp import web
from twilio.request_validator import RequestValidator

from proxy.tee import CALLBACK_PATH_PREFIX
from tests.harness import (
    ACCOUNT,
    OTHER_ACCOUNT,
    OTHER_TOKEN,
    SENDER,
    TOKEN,
    ProxyInstance,
    basic_auth,
    post_send,
)
from tests.servers import free_port
from tests.webapps import SignatureCheckingApp, serving

TO = "+15558675310"
CALLBACK_SECRET = "c" * 32
FORGED_TOKEN = "9" * 32  # a token the attacker made up for ACCOUNT
SUPPRESSING_CODE = "30006"  # recipient scope by default: learned without any content lookup


def messages_path(account: str) -> str:
    return f"/2010-04-01/Accounts/{account}/Messages.json"


@dataclass
class ScriptedTwilio:
    """Answers each create with the next scripted status (then 201), recording its form."""

    url: str = ""
    script: list[int] = field(default_factory=list)
    creates: list[dict[str, str]] = field(default_factory=list)
    _sids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(parse_qsl((await request.read()).decode(), keep_blank_values=True))
        self.creates.append(form)
        status = self.script.pop(0) if self.script else 201
        if status == 201:
            sid = f"SM{next(self._sids):032x}"
            message = {"sid": sid, "status": "queued", "to": form.get("To"), "error_code": None}
            return web.json_response(message, status=201)
        code = {400: 21211, 404: 20404, 429: 20429}[status]
        error = {"code": code, "message": "scripted", "more_info": "", "status": status}
        return web.Response(
            status=status, body=json.dumps(error).encode(), content_type="application/json"
        )

    def status_callback_of_last_create(self) -> str:
        return self.creates[-1]["StatusCallback"]


@pytest.fixture
async def twilio() -> AsyncIterator[ScriptedTwilio]:
    scripted = ScriptedTwilio()
    async with serving(scripted.handle) as scripted.url:
        yield scripted


@pytest.fixture
async def app_receiver() -> AsyncIterator[SignatureCheckingApp]:
    receiver = SignatureCheckingApp()
    async with serving(receiver.handle) as base:
        receiver.url = f"{base}/twilio/status?tenant=7"
        yield receiver


@pytest.fixture
async def teed(proxies, twilio) -> ProxyInstance:
    """One instance whose public URL is its own address; no configured auth tokens, so every
    token it has was learned from a send; final 429s come back at once."""
    port = free_port()
    return await proxies.start(
        port=port,
        upstream=twilio.url,
        upstream_allowed_hosts="127.0.0.1",
        public_url=f"http://127.0.0.1:{port}",
        callback_secret=CALLBACK_SECRET,
        upstream_429_budget=0,
    )


def send_form(app_url: str, to: str = TO) -> list[tuple[str, str]]:
    return [
        ("To", to),
        ("From", SENDER),
        ("Body", "Your code is 1234"),
        ("StatusCallback", app_url),
    ]


async def send(
    http: aiohttp.ClientSession,
    proxy: ProxyInstance,
    app_url: str,
    *,
    account: str = ACCOUNT,
    token: str = TOKEN,
    to: str = TO,
) -> tuple[int, str]:
    """A fresh send (its own Idempotency-Key); (status, sendguard's decision)."""
    status, headers, _ = await post_send(
        http,
        proxy.url,
        send_form(app_url, to),
        key=f"key-{next(_KEYS)}",
        auth=basic_auth(account, token),
        path=messages_path(account),
    )
    return status, headers["X-Sendguard-Decision"]


_KEYS = itertools.count()
_EVENTS = itertools.count()


def callback_form(
    account: str = ACCOUNT, to: str = TO, code: str = SUPPRESSING_CODE
) -> list[tuple[str, str]]:
    sid = "SM" + "d" * 32
    return [
        ("SmsSid", sid),
        ("SmsStatus", "undelivered"),
        ("MessageStatus", "undelivered"),
        ("To", to),
        ("MessageSid", sid),
        ("AccountSid", account),
        ("From", SENDER),
        ("ApiVersion", "2010-04-01"),
        ("ErrorCode", code),
    ]


async def post_callback(
    http: aiohttp.ClientSession,
    callback_url: str,
    form: list[tuple[str, str]],
    token: str,
) -> tuple[int, dict[str, object], str]:
    """POST to a callback URL as Twilio does, signed with `token`; (status, body, decision)."""
    signature = RequestValidator(token).compute_signature(callback_url, dict(form))
    headers = {
        "X-Twilio-Signature": signature,
        "I-Twilio-Idempotency-Token": f"event-{next(_EVENTS)}",  # each one a new event
    }
    async with http.post(callback_url, data=form, headers=headers) as response:
        body = await response.read()
        payload = json.loads(body) if body else {}
        return response.status, payload, response.headers["X-Sendguard-Decision"]


# -- (a) only a create Twilio accepted teaches its token -------------------------------------


@pytest.mark.parametrize("answer", [404, 400, 429])
async def test_a_send_answered_4xx_does_not_teach_its_token(
    teed, twilio, app_receiver, http, answer
):
    """Basic ACCOUNT:FORGED_TOKEN to ACCOUNT's Messages; Twilio answers 404/400/429. Had that
    taught FORGED_TOKEN, a callback signed with it would suppress ACCOUNT's recipient."""
    twilio.script.append(answer)
    status, _ = await send(http, teed, app_receiver.url, token=FORGED_TOKEN)
    assert status == answer
    captured = twilio.status_callback_of_last_create()
    assert captured.startswith(teed.url + CALLBACK_PATH_PREFIX)

    status, body, decision = await post_callback(http, captured, callback_form(), FORGED_TOKEN)
    assert (status, decision) == (403, "refused")
    assert body["code"] == 79040
    assert "no auth token" in str(body["message"])
    assert app_receiver.received == []
    # Nothing was learned: ACCOUNT's next send to that recipient goes.
    assert await send(http, teed, app_receiver.url) == (201, "forwarded")


# -- (b) a callback URL is bound to its send -------------------------------------------------


async def test_a_forged_callback_on_a_captured_url_teaches_nothing_and_is_not_forwarded(
    teed, twilio, app_receiver, http
):
    """Both accounts sent through sendguard (so it knows both genuine tokens). The attacker,
    OTHER_ACCOUNT, captured the callback URL of ACCOUNT's send and posts a callback to it,
    validly signed with their own token, claiming their own account (or ACCOUNT)."""
    assert await send(http, teed, app_receiver.url) == (201, "forwarded")
    captured = twilio.status_callback_of_last_create()
    status, _ = await send(http, teed, app_receiver.url, account=OTHER_ACCOUNT, token=OTHER_TOKEN)
    assert status == 201  # sendguard has learned OTHER_TOKEN for OTHER_ACCOUNT

    for claimed in (OTHER_ACCOUNT, ACCOUNT):
        status, body, decision = await post_callback(
            http, captured, callback_form(account=claimed), OTHER_TOKEN
        )
        assert (status, decision) == (403, "refused"), claimed
        assert body["code"] == 79040
    assert app_receiver.received == []  # not forwarded to ACCOUNT's app
    # No suppression anywhere: the recipient's next sends, from either account, go.
    assert await send(http, teed, app_receiver.url) == (201, "forwarded")
    assert await send(http, teed, app_receiver.url, account=OTHER_ACCOUNT, token=OTHER_TOKEN) == (
        201,
        "forwarded",
    )


async def test_the_genuine_callback_of_the_bound_send_still_works(teed, twilio, app_receiver, http):
    """The account's own callback for its own send is verified, learned and forwarded with a
    signature the app's RequestValidator accepts; but even a validly signed callback on that URL
    teaches nothing about another recipient."""
    other_recipient = "+15550001111"
    assert await send(http, teed, app_receiver.url) == (201, "forwarded")
    bound_url = twilio.status_callback_of_last_create()

    status, _, decision = await post_callback(
        http, bound_url, callback_form(to=other_recipient), TOKEN
    )
    assert (status, decision) == (204, "callback")  # the app's answer: it got it
    status, _, decision = await post_callback(http, bound_url, callback_form(), TOKEN)
    assert (status, decision) == (204, "callback")
    assert [(form["To"], valid) for form, valid in app_receiver.received] == [
        (other_recipient, True),
        (TO, True),
    ]

    status, headers, error = await post_send(
        http, teed.url, send_form(app_receiver.url), key="after-callback"
    )
    assert (status, headers["X-Sendguard-Decision"]) == (400, "suppressed")
    assert error["code"] == int(SUPPRESSING_CODE)
    assert await send(http, teed, app_receiver.url, to=other_recipient) == (201, "forwarded")


async def test_a_callback_url_of_the_old_unbound_format_is_refused(
    teed, twilio, app_receiver, http
):
    """A token made by an earlier sendguard named no account: it is refused with a clear 400,
    even when validly signed by the account it claims, and nothing is learned or forwarded."""
    assert await send(http, teed, app_receiver.url) == (201, "forwarded")  # TOKEN is known
    raw = app_receiver.url.encode()
    label = b"sendguard-callback-url-v1\x00"
    mac = hmac.new(CALLBACK_SECRET.encode(), label + raw, hashlib.sha256).digest()[:16]
    token = ".".join(base64.urlsafe_b64encode(part).decode().rstrip("=") for part in (raw, mac))
    old_url = teed.url + CALLBACK_PATH_PREFIX + token

    status, body, decision = await post_callback(http, old_url, callback_form(), TOKEN)
    assert (status, decision) == (400, "invalid-request")
    assert body["code"] == 79011
    assert "older sendguard" in str(body["message"])
    assert app_receiver.received == []
    assert await send(http, teed, app_receiver.url) == (201, "forwarded")
