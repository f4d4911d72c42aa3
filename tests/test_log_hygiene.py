"""Log hygiene, on the real process: a `sendguard serve` with JSON logs on stderr carries
traffic with a real-looking auth token, phone numbers and message bodies; none of them may
appear in any encoding, and every line must be one JSON object."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from urllib.parse import quote

import aiohttp

from tests.harness import ACCOUNT, MESSAGES, basic_auth, post_send
from tests.servers import free_port

TOKEN = "9f3c2a7b1e8d4c6a0b5f7e2d1c3a4b6e"
TO = "+15558675310"
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
    ]


async def admin_traffic(http: aiohttp.ClientSession, admin: str) -> None:
    """Operator calls that name the phone number: audit lines must mask it."""
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    recipient = {"account": ACCOUNT, "to": TO}
    calls = [
        ("POST", "/v1/kill-switches", {"scope": f"recipient:{TO}", "reason": "drill"}),
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
    port, admin_port = free_port(), free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--upstream", "sandbox",
        "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin_port}",
        "--log-level", "debug", "--log-format", "json", "--upstream-read-timeout", "1",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "SENDGUARD_ADMIN_TOKEN": ADMIN_TOKEN},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    auth = basic_auth(ACCOUNT, TOKEN)
    form = {"To": TO, "From": SENDER, "Body": BODY}
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with http.get(url + "/ready-probe"):
                        break
                except aiohttp.ClientConnectionError:
                    assert time.monotonic() < deadline, "sendguard did not start"
                    await asyncio.sleep(0.1)
            assert (await post_send(http, url, form, auth=auth))[0] == 201
            assert (await post_send(http, url, form, auth=auth))[0] == 201  # replay
            await post_send(
                http, url, {**form, "Body": BODY + "!"}, auth=auth, key="idem-secret-key-123"
            )
            await post_send(
                http, url, {**form, "Body": BODY + "?"}, auth=auth, key="idem-secret-key-123"
            )
            fault = {"X-Sandbox-Fault": "500-after-create"}
            await post_send(http, url, {**form, "Body": BODY + "."}, auth=auth, headers=fault)
            await post_send(http, url, {**form, "Body": BODY + "."}, auth=auth)  # outcome-unknown
            list_path = MESSAGES + "?To=" + quote(TO, safe="")
            async with http.get(url + list_path, headers={"Authorization": auth}) as answer:
                assert answer.status == 200
            lookup = f"/v2/PhoneNumbers/{quote(TO)}"
            async with http.get(url + lookup, headers={"Authorization": auth}):
                pass
            await admin_traffic(http, f"http://127.0.0.1:{admin_port}")
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
    decisions = {e.get("decision") for e in events if e["event"] == "request_finished"}
    assert {"forwarded", "replayed", "key-mismatch", "outcome-unknown", "passthrough"} <= decisions
    for secret in forbidden_strings():
        assert secret not in logs, f"leaked into the logs: {secret!r}"
