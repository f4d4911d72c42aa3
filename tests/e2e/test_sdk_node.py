"""The official `twilio` npm package, run by Node, sending through sendguard to the fake Twilio.

tests/node/send.js is the Node recipe from docs/sdk-recipes.md as a script: it sends one message
and prints the outcome as JSON. The packages come from tests/node/package-lock.json; the session
fixture installs them (`npm ci`) when tests/node/node_modules is missing.

Node runs as a child process via asyncio, so the fake Twilio and sendguard, which live in this
test's event loop, keep serving while it runs. Without `node`/`npm` the tests skip locally and
fail in CI (CI=true): the SDK claim in the README must not go untested silently.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from typing import Any, NoReturn

import pytest

from tests.harness import ACCOUNT, TOKEN
from tests.paths import NODE_DIR

NODE_DIR = NODE_DIR
SEND_JS = NODE_DIR / "send.js"
MIN_NODE_MAJOR = 20  # twilio 6.x declares "node": ">=20.0.0"
NPM_TIMEOUT = 100.0  # seconds; under the 120 s per-test timeout that includes this setup
NODE_TIMEOUT = 30.0
TO = "+15558675310"
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _unavailable(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"twilio-node SDK test cannot run: {reason} (CI=true, so this fails)", False)
    pytest.skip(f"twilio-node SDK test skipped: {reason}")


def _installed_as_locked() -> bool:
    """tests/node/node_modules holds the twilio version package-lock.json pins."""
    installed = NODE_DIR / "node_modules" / "twilio" / "package.json"
    if not installed.is_file():
        return False
    lock = NODE_DIR / "package-lock.json"
    if not lock.is_file():
        return True
    locked = json.loads(lock.read_text())["packages"]["node_modules/twilio"]["version"]
    return bool(json.loads(installed.read_text())["version"] == locked)


@pytest.fixture(scope="session")
def node() -> str:
    """The `node` binary, with tests/node/node_modules installed from the lock file."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("`node` and `npm` must be on PATH (Node.js >= 20)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    found = re.match(r"v(\d+)\.", version.stdout.strip())
    if not found or int(found.group(1)) < MIN_NODE_MAJOR:
        _unavailable(f"Node.js >= {MIN_NODE_MAJOR} needed, found {version.stdout.strip()!r}")
    if not _installed_as_locked():
        verb = "ci" if (NODE_DIR / "package-lock.json").is_file() else "install"
        command = [npm, verb, "--no-audit", "--no-fund", "--loglevel=error"]
        try:
            done = subprocess.run(
                command, cwd=NODE_DIR, capture_output=True, text=True, timeout=NPM_TIMEOUT
            )
        except subprocess.TimeoutExpired:
            _unavailable(f"`npm {verb}` in {NODE_DIR} took over {NPM_TIMEOUT:.0f} s")
        else:
            if done.returncode != 0:
                _unavailable(f"`npm {verb}` in {NODE_DIR} failed:\n{done.stderr[-3000:]}")
    return node


async def send_js(node: str, proxy_url: str, *args: str) -> tuple[int, dict[str, Any]]:
    """Run send.js once; returns its exit code and the JSON line it printed."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith(("TWILIO_", "SENDGUARD_", "IDEMPOTENCY_KEY"))
        and name.upper() not in {"HTTP_PROXY", "HTTPS_PROXY", "NODE_OPTIONS"}
    }
    env.update(TWILIO_ACCOUNT_SID=ACCOUNT, TWILIO_AUTH_TOKEN=TOKEN)
    process = await asyncio.create_subprocess_exec(
        node, str(SEND_JS), "--proxy", proxy_url, "--to", TO, *args,
        cwd=NODE_DIR, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), NODE_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"send.js did not finish within {NODE_TIMEOUT:.0f} s") from None
    lines = out.decode().strip().splitlines()
    assert lines, f"send.js printed nothing (exit {process.returncode}): {err.decode()[-3000:]}"
    return process.returncode or 0, json.loads(lines[-1])


@pytest.fixture
async def proxy(proxies, fake_twilio):
    """One sendguard in front of the fake; the fake's address is allowlisted so that recipe B's
    header can name it (it stands in for api.twilio.com)."""
    return await proxies.start(
        upstream=fake_twilio.url, upstream_allowed_hosts=["*.twilio.com", "127.0.0.1"]
    )


async def test_node_same_send_twice_creates_once(node, proxy, fake_twilio):
    """Recipe A (client.api.baseUrl = sendguard), no key: deduped by fingerprint."""
    code1, first = await send_js(node, proxy.url, "--body", "hello from node")
    code2, second = await send_js(node, proxy.url, "--body", "hello from node")
    assert (code1, code2) == (0, 0), (first, second)
    assert first["sid"].startswith("SM") and second["sid"] == first["sid"]
    assert (first["decision"], second["decision"]) == ("forwarded", "replayed")
    assert second["replayed"] is True
    assert fake_twilio.creates == 1


async def test_node_http_client_with_idempotency_key(node, proxy, fake_twilio):
    """Recipe B (a RequestClient subclass routing through sendguard with the original host in
    X-Sendguard-Upstream-Host) and an Idempotency-Key: two runs, one create, one SID; the same key
    with another body comes back as the SDK's own RestException with sendguard's code."""
    recipe_b = ("--mode", "http-client", "--api-base-url", fake_twilio.url)
    keyed = (*recipe_b, "--idempotency-key", "order-42")
    code1, first = await send_js(node, proxy.url, *keyed, "--body", "order 42 shipped")
    code2, second = await send_js(node, proxy.url, *keyed, "--body", "order 42 shipped")
    assert (code1, code2) == (0, 0), (first, second)
    assert second["sid"] == first["sid"]
    assert (first["decision"], second["decision"]) == ("forwarded", "replayed")
    assert fake_twilio.creates == 1
    (create,) = fake_twilio.create_requests()
    assert "X-Sendguard-Upstream-Host" not in create.headers

    code, refused = await send_js(node, proxy.url, *keyed, "--body", "order 42 cancelled")
    assert code == 2, refused
    assert refused["error"] == "RestException"
    assert (refused["status"], refused["code"]) == (422, 79002)
    assert refused["decision"] == "key-mismatch"
    assert refused["message"].startswith("sendguard: ")
    assert fake_twilio.creates == 1


async def test_node_malformed_key_is_a_rest_exception_and_nothing_is_sent(node, proxy, fake_twilio):
    code, refused = await send_js(
        node, proxy.url, "--idempotency-key", "has space", "--body", "hello"
    )
    assert code == 2, refused
    assert (refused["error"], refused["status"], refused["code"]) == ("RestException", 400, 79001)
    assert refused["decision"] == "invalid-key"
    assert fake_twilio.creates == 0


async def test_node_http_client_is_immune_to_region_and_edge(node, fake_twilio):
    """Recipe B with --region/--edge: the request still reaches sendguard's address (here the
    fake stands in for sendguard) and the header names the regional Twilio host."""
    code, sent = await send_js(
        node, fake_twilio.url, "--mode", "http-client", "--region", "au1", "--edge", "sydney",
        "--body", "g'day",
    )  # fmt: skip
    assert code == 0, sent
    (received,) = fake_twilio.create_requests()
    assert received.headers["X-Sendguard-Upstream-Host"] == "api.sydney.au1.twilio.com"
    assert received.path == f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
