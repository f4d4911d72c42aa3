"""Log hygiene, on the real process: a `sendguard serve` with JSON logs on stderr carries
traffic with a real-looking auth token, phone numbers and message bodies; none of them may
appear in any encoding, and every line must be one JSON object.

That includes what aiohttp logs itself: malformed requests sent over a raw socket make its
parser quote the offending line (here: the Authorization header, a request line with the
number), and numbers come formatted (`+1 (555) 867-5310`) in paths and free-text reasons."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from urllib.parse import quote

import aiohttp
import pytest

from proxy.logs import redact_text
from tests.harness import ACCOUNT, MESSAGES, basic_auth, post_send
from tests.processes import start_serve

TOKEN = "9f3c2a7b1e8d4c6a0b5f7e2d1c3a4b6e"
TO = "+15558675310"
TO_FORMATTED = "+1 (555) 867-5310"
SENDER = "+15005550006"
BODY = "Your one-time code is 482913, do not share it"
ADMIN_TOKEN = "adm-7c1e9a0f55d24b8e"


def forbidden_strings() -> list[str]:
    auth = basic_auth(ACCOUNT, TOKEN)
    digits = TO.removeprefix("+")
    return [
        TOKEN,
        auth,
        auth.split()[1],
        TO,
        digits,
        digits[1:],  # national form
        quote(TO),
        quote(TO, safe=""),
        SENDER.removeprefix("+"),
        BODY,
        quote(BODY),
        quote(BODY).replace("%20", "+"),
        "482913",
        "idem-secret-key-123",
        ADMIN_TOKEN,
        TO_FORMATTED,
        TO_FORMATTED[3:],  # (555) 867-5310
        "555) 867-5310",
        "867-5310",
        quote(TO_FORMATTED),
        quote(TO_FORMATTED, safe=""),
        "555 867 5310",
    ]


# Requests aiohttp's parser refuses (400), each quoting a secret in its error: the
# Authorization header itself as the bad line, a bad byte inside the credential, the number in
# a malformed request line.
def malformed_requests() -> list[bytes]:
    auth = basic_auth(ACCOUNT, TOKEN).encode()
    path = MESSAGES.encode()
    return [
        b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization : " + auth + b"\r\n\r\n",
        b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth[:12] + b"\x01"
        + auth[12:] + b"\r\n\r\n",
        b"GET " + path + b"?To=" + TO.encode() + b" HTTP/1.1 x\r\nAuthorization: " + auth
        + b"\r\n\r\n",
        b"POST " + path + b" HTTP/1.1\r\nAuthorization: " + auth
        + b"\r\nContent-Length: " + TO.encode() + b"x\r\n\r\n",
        b"GET /x HTTP/1.1\r\nX-To: \x01" + TO_FORMATTED.encode() + b"\r\nAuthorization: " + auth
        + b"\r\n\r\n",
    ]  # fmt: skip


async def send_malformed(port: int) -> None:
    for raw in malformed_requests():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0], answer
        writer.close()


async def admin_traffic(http: aiohttp.ClientSession, admin: str) -> None:
    """Operator calls that name the phone number: audit lines must mask it."""
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    recipient = {"account": ACCOUNT, "to": TO}
    calls = [
        (
            "POST",
            "/v1/kill-switches",
            {"scope": f"recipient:{TO}", "reason": f"drill: {TO_FORMATTED} complained"},
        ),
        ("DELETE", f"/v1/kill-switches/recipient:{quote(TO)}", {"reason": "done"}),
        ("GET", "/v1/suppressions", recipient),
        ("DELETE", "/v1/suppressions", {**recipient, "reason": "opted back in"}),
        ("GET", "/v1/breakers", recipient),
        ("DELETE", "/v1/breakers", {**recipient, "reason": "false alarm"}),
        ("POST", "/v1/kill-switches", {"scope": f"recipient:{TO}x", "reason": "bad input"}),
    ]
    for method, path, body in calls:
        async with http.request(method, admin + path, json=body, headers=bearer) as answer:
            assert answer.status < 500
    async with http.get(admin + "/v1/status", headers={"Authorization": "Bearer wrong"}) as no:
        assert no.status == 401


async def test_logs_never_carry_secrets_numbers_or_bodies():
    started = await start_serve(
        "--upstream", "sandbox", "--log-format", "json", "--upstream-read-timeout", "1",
        ready=False, capture=True, log_level="debug",
        env={**os.environ, "SENDGUARD_ADMIN_TOKEN": ADMIN_TOKEN},
    )  # fmt: skip
    process, url = started.process, started.url
    port = int(url.rsplit(":", 1)[1])
    auth = basic_auth(ACCOUNT, TOKEN)
    form = {"To": TO, "From": SENDER, "Body": BODY}
    try:
        async with aiohttp.ClientSession() as http:
            assert (await post_send(http, url, form, auth=auth))[0] == 201
            assert (await post_send(http, url, form, auth=auth))[0] == 201  # replay
            await post_send(
                http, url, {**form, "Body": BODY + "!"}, auth=auth, key="idem-secret-key-123"
            )
            await post_send(
                http, url, {**form, "Body": BODY + "?"}, auth=auth, key="idem-secret-key-123"
            )
            # Listed late: reconciliation finds no evidence, the retry stays outcome-unknown.
            fault = {"X-Sandbox-Fault": "500-after-create", "X-Sandbox-List-Lag": "600"}
            await post_send(http, url, {**form, "Body": BODY + "."}, auth=auth, headers=fault)
            await post_send(http, url, {**form, "Body": BODY + "."}, auth=auth)  # outcome-unknown
            list_path = MESSAGES + "?To=" + quote(TO, safe="")
            async with http.get(url + list_path, headers={"Authorization": auth}) as answer:
                assert answer.status == 200
            lookup = f"/v2/PhoneNumbers/{quote(TO)}"
            async with http.get(url + lookup, headers={"Authorization": auth}):
                pass
            formatted = f"/v2/PhoneNumbers/{quote(TO_FORMATTED)}"
            async with http.get(url + formatted, headers={"Authorization": auth}):
                pass
            await send_malformed(port)
            await admin_traffic(http, started.admin_url)
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    logs = (stdout + stderr).decode()
    lines = [line for line in logs.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    names = [event["event"] for event in events]
    assert names.count("request_finished") >= 8
    assert "record_marked_unknown" in names
    audit = {"kill_switch_engaged", "kill_switch_released", "suppressions_cleared", "breaker_reset"}
    assert audit <= set(names)
    assert names.count("client_request_malformed") >= 4, "aiohttp's parser errors, as JSON"
    assert "Traceback" not in logs
    decisions = {e.get("decision") for e in events if e["event"] == "request_finished"}
    assert {"forwarded", "replayed", "key-mismatch", "outcome-unknown", "passthrough"} <= decisions
    for secret in forbidden_strings():
        assert secret not in logs, f"leaked into the logs: {secret!r}"


@pytest.mark.parametrize(
    "text",
    [
        "+1 (555) 867-5310",
        "(555) 867-5310",
        "555-867-5310",
        "555.867.5310",
        "+1 555 867 5310",
        "+1+555+867+5310",  # form-encoded spaces
        "%2B1%20%28555%29%20867-5310",
        "whatsapp:+1 (555) 867-5310",
        "2026-12-01T10:38+15558675310",  # a number hiding behind a timestamp
        "+44 20 7946 0958",
        "+15558675310",
    ],
)
def test_numbers_are_masked_in_any_spelling(text):
    line = f"reason: customer {text} asked to stop"
    masked = redact_text(line)
    digits = "".join(ch for ch in text.replace("%2B", "").replace("%20", "") if ch.isdigit())
    assert digits[-7:-2] not in "".join(ch for ch in masked if ch.isdigit()), masked
    assert masked.startswith("reason: customer ") and masked.endswith(" asked to stop")


@pytest.mark.parametrize(
    "text",
    [
        "AC0123456789abcdef0123456789abcdef",
        "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json",
        "10.20.30.40",
        "2026-12-01T10:25:18.020944Z",
        "created_at=2026-12-01T10:38:25.423542+00:00",
        "2026-12-01 10:38:25+01:00",
        "codes 21610, 30004 to 30007",
        "took 1234567.89 ms",
    ],
)
def test_what_is_not_a_number_is_left_alone(text):
    assert redact_text(text) == text


def test_credentials_in_free_text_are_scrubbed():
    auth = basic_auth(ACCOUNT, TOKEN)
    for text in (
        f"Invalid header token: b'Authorization : {auth}'",
        f"sent {auth} upstream",
        f"Bearer {ADMIN_TOKEN} refused",
    ):
        scrubbed = redact_text(text)
        assert auth.split()[1] not in scrubbed and ADMIN_TOKEN not in scrubbed, scrubbed


def test_remembered_scrubs_stay_bounded_and_long_text_is_still_scanned():
    """Short values are scrubbed once and remembered (the request line's hot path): a client
    inventing values cannot grow that memory, and a value too long to remember is scanned."""
    from proxy.logs import _CACHED_TEXT_MAX, _redact_remembered

    for n in range(6000):
        assert redact_text(f"to +1555{n:07d} now") == f"to +155******{n % 100:02d} now"
    assert _redact_remembered.cache_info().currsize <= 4096
    long_text = "x" * _CACHED_TEXT_MAX + " +15550100123"
    assert redact_text(long_text).endswith(" +155******23")
