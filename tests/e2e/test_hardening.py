"""Hostile clients cost bounded resources (issue 15): invented account SIDs do not grow
`/metrics`; idle, slow-header and slow-body connections (slowloris) are cut on deadlines while
other clients keep being served; the connection cap closes waiting connections to make room and
refuses clearly when every connection is busy; memory stays bounded under slow bodies.

Real sockets against real listeners (tests/harness.py builds them with the same runners as
`sendguard serve`)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import aiohttp
import pytest

from proxy.metrics import ACCOUNT_LABEL_LIMIT, Metrics
from proxy.server.app import METRICS
from tests.environ import clear_sendguard_env
from tests.harness import ACCOUNT, MESSAGES, SENDER, basic_auth, post_send

HOST = "127.0.0.1"
LIST = MESSAGES  # GET: a passthrough list, answered by the fake Twilio
FAST = {"client_header_timeout": 1.0, "client_body_timeout": 1.0, "client_idle_timeout": 1.5}


def random_account() -> str:
    return "AC" + secrets.token_hex(16)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def scrape(http: aiohttp.ClientSession, admin_url: str) -> str:
    async with http.get(admin_url + "/metrics") as answer:
        assert answer.status == 200
        return await answer.text()


def sends_series(exposition: str) -> dict[str, float]:
    found = re.findall(r'^sendguard_sends_total\{account="([^"]*)"\} (\S+)$', exposition, re.M)
    return {account: float(value) for account, value in found}


# --- metrics: bounded labels --------------------------------------------------------------------


FLOOD = 20 * ACCOUNT_LABEL_LIMIT


async def test_a_flood_of_invented_account_sids_does_not_grow_metrics(proxies, fake_twilio):
    """2,000 sends to random account SIDs (20 times the account label limit), each answered 401
    by Twilio: no series per SID (one per SID would add over 100 KB to the scrape)."""
    proxy = await proxies.start(upstream=fake_twilio.url)
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as http:
        before = await scrape(http, proxy.admin_url)
        queue: asyncio.Queue[str] = asyncio.Queue()
        for _ in range(FLOOD):
            queue.put_nowait(random_account())
        statuses: dict[int, int] = {}

        async def worker() -> None:
            while not queue.empty():
                sid = queue.get_nowait()
                form = {"To": "+15558670001", "From": SENDER, "Body": "hi"}
                path = f"/2010-04-01/Accounts/{sid}/Messages.json"
                status, _, _ = await post_send(http, proxy.url, form, path=path)
                statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(64)))
        assert statuses == {401: FLOOD}
        after = await scrape(http, proxy.admin_url)
    assert sends_series(after) == {}, "a refused send is not a send of that account"
    assert len(after) < len(before) + 4096, (len(before), len(after))
    assert not re.search(r"AC[0-9a-f]{32}", after)


def test_account_labels_stop_at_the_limit_then_count_as_other():
    metrics = Metrics()
    accounts = [random_account() for _ in range(ACCOUNT_LABEL_LIMIT + 50)]
    for account in accounts:
        metrics.count_send(account, 201)
        metrics.count_send(account, 401)  # refused: never counted
    metrics.count_send(accounts[0], 500)  # ambiguous: may have been sent, counted
    labels = {
        sample.labels["account"]: sample.value
        for family in metrics.registry.collect()
        if family.name == "sendguard_sends"
        for sample in family.samples
        if sample.name == "sendguard_sends_total"
    }
    assert len(labels) == ACCOUNT_LABEL_LIMIT + 1
    assert labels["other"] == 50
    assert labels[accounts[0]] == 2
    assert set(accounts[:ACCOUNT_LABEL_LIMIT]) < set(labels)
    assert sum(labels.values()) == len(accounts) + 1


async def test_accepted_sends_are_counted_per_account(proxies, fake_twilio, http):
    proxy = await proxies.start(upstream=fake_twilio.url)
    other = random_account()
    for account in (ACCOUNT, other):
        form = {"To": "+15558670002", "From": SENDER, "Body": f"hello {account}"}
        path = f"/2010-04-01/Accounts/{account}/Messages.json"
        status, _, _ = await post_send(
            http, proxy.url, form, path=path, auth=basic_auth(account, "x" * 32)
        )
        assert status == 201
    assert sends_series(await scrape(http, proxy.admin_url)) == {ACCOUNT: 1.0, other: 1.0}


# --- slowloris ----------------------------------------------------------------------------------


@asynccontextmanager
async def legit_traffic(url: str) -> AsyncIterator[list[float]]:
    """A client that keeps asking (a fresh connection each time) and records how long each
    answer took; the block fails if any request failed."""
    latencies: list[float] = []
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def loop() -> None:
        connector = aiohttp.TCPConnector(force_close=True)
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    headers = {"Authorization": basic_auth()}
                    async with http.get(url + LIST, headers=headers) as answer:
                        await answer.read()
                        assert answer.status == 200, answer.status
                except Exception as exc:
                    failures.append(exc)
                latencies.append(time.monotonic() - started)
                await asyncio.sleep(0.05)

    task = asyncio.ensure_future(loop())
    try:
        yield latencies
    finally:
        stop.set()
        await task
    assert not failures, failures[:3]


async def read_until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    data = b""
    with suppress(ConnectionError):
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
    return data


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, json.loads(body) if body else {}


async def open_socket(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, port)


async def test_idle_connections_are_closed_and_others_are_served(proxies, fake_twilio):
    proxy = await proxies.start(upstream=fake_twilio.url, **FAST)
    port = port_of(proxy.url)
    async with legit_traffic(proxy.url) as latencies:
        sockets = [await open_socket(port) for _ in range(100)]
        started = time.monotonic()
        closed = await asyncio.gather(*(read_until_closed(r, 5) for r, _ in sockets))
        elapsed = time.monotonic() - started
    assert closed == [b""] * 100, "an idle connection is closed without an answer"
    assert elapsed < 4, f"idle connections lived {elapsed:.1f}s (client_idle_timeout 1.5s)"
    assert latencies and max(latencies) < 1.0, max(latencies)
    for _, writer in sockets:
        writer.close()


async def test_slow_headers_get_408_on_the_head_deadline(proxies, fake_twilio):
    proxy = await proxies.start(upstream=fake_twilio.url, **FAST)
    port = port_of(proxy.url)
    head = f"GET {LIST} HTTP/1.1\r\nHost: x\r\nAuthorization: {basic_auth()}\r\n".encode()

    async def trickle() -> tuple[float, bytes]:
        reader, writer = await open_socket(port)
        started = time.monotonic()
        answer = asyncio.ensure_future(read_until_closed(reader, 8))
        with suppress(ConnectionError):
            for index in range(len(head)):
                if answer.done():
                    break
                writer.write(head[index : index + 1])  # one byte every 0.1 s: never done
                await writer.drain()
                await asyncio.sleep(0.1)
        raw = await answer
        writer.close()
        return time.monotonic() - started, raw

    async with legit_traffic(proxy.url) as latencies:
        results = await asyncio.gather(*(trickle() for _ in range(50)))
    for elapsed, raw in results:
        status, headers, body = parse_answer(raw)
        assert (status, body["code"]) == (408, 79013)
        assert headers["connection"] == "close"
        assert headers["x-sendguard-decision"] == "invalid-request"
        assert elapsed < 2.5, f"a trickled head lived {elapsed:.1f}s (client_header_timeout 1s)"
    assert latencies and max(latencies) < 1.0, max(latencies)
    assert proxy.app[METRICS].value(
        "sendguard_client_timeouts_total", listener="proxy", phase="head"
    ) == pytest.approx(50)


async def slow_body(port: int, *, size: int, chunk: int, every: float) -> tuple[float, bytes]:
    """A guarded send whose body trickles: `chunk` bytes every `every` seconds."""
    reader, writer = await open_socket(port)
    head = (
        f"POST {MESSAGES} HTTP/1.1\r\nHost: x\r\nAuthorization: {basic_auth()}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {size}\r\n\r\n"
    ).encode()
    writer.write(head)
    started = time.monotonic()
    answer = asyncio.ensure_future(read_until_closed(reader, 10))
    sent = 0
    with suppress(ConnectionError):
        while sent < size and not answer.done():
            piece = min(chunk, size - sent)
            writer.write(b"x" * piece)
            await writer.drain()
            sent += piece
            await asyncio.sleep(every)
    raw = await answer
    writer.close()
    return time.monotonic() - started, raw


async def test_slow_bodies_get_408_on_the_body_deadline(proxies, fake_twilio):
    proxy = await proxies.start(upstream=fake_twilio.url, **FAST)
    port = port_of(proxy.url)
    async with legit_traffic(proxy.url) as latencies:
        results = await asyncio.gather(
            *(slow_body(port, size=100_000, chunk=100, every=0.1) for _ in range(50))
        )
    for elapsed, raw in results:
        status, headers, body = parse_answer(raw)
        assert (status, body["code"]) == (408, 79013), raw[:300]
        assert headers["x-sendguard-decision"] == "invalid-request"
        assert headers["connection"] == "close"
        assert elapsed < 2.5, f"a trickled body lived {elapsed:.1f}s (client_body_timeout 1s)"
    assert latencies and max(latencies) < 1.0, max(latencies)
    assert not [r for r in fake_twilio.received if r.is_create], "a cut body is never sent"


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
async def test_memory_stays_bounded_under_slow_one_megabyte_bodies(proxies, fake_twilio):
    """100 clients each trickle a 1 MiB body at ~256 KiB/s: cut at the deadline, each holds
    what one second brings, not a whole megabyte (the issue measured +131 MiB without)."""
    proxy = await proxies.start(upstream=fake_twilio.url, **FAST)
    port = port_of(proxy.url)
    baseline = rss_bytes()
    peak = baseline
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes())
            await asyncio.sleep(0.05)

    sampler = asyncio.ensure_future(sample())
    async with legit_traffic(proxy.url) as latencies:
        results = await asyncio.gather(
            *(slow_body(port, size=1 << 20, chunk=16384, every=0.0625) for _ in range(100))
        )
    done.set()
    await sampler
    assert all(parse_answer(raw)[0] == 408 for _, raw in results)
    assert all(elapsed < 3 for elapsed, _ in results)
    grown = (peak - baseline) / (1 << 20)
    assert grown < 64, f"RSS grew {grown:.0f} MiB under 100 slow bodies"
    assert latencies and max(latencies) < 1.5, max(latencies)


# --- the connection cap -------------------------------------------------------------------------


async def test_at_the_cap_waiting_connections_make_room_for_new_clients(proxies, fake_twilio):
    """An idle flood far over the cap: sendguard keeps at most `max_connections` open, closing
    the longest-waiting ones, and a real client is still answered."""
    proxy = await proxies.start(upstream=fake_twilio.url, max_connections=20, **FAST)
    port = port_of(proxy.url)
    sockets = [await open_socket(port) for _ in range(200)]
    await asyncio.sleep(0.2)
    async with legit_traffic(proxy.url) as latencies:
        await asyncio.sleep(0.5)
    assert latencies and max(latencies) < 1.0
    metrics = proxy.app[METRICS]
    assert metrics.value("sendguard_client_connections", listener="proxy") <= 20
    assert metrics.value("sendguard_client_connections_evicted_total", listener="proxy") >= 180
    assert metrics.value("sendguard_client_connections_refused_total", listener="proxy") == 0
    for _, writer in sockets:
        writer.close()


async def test_when_every_connection_is_busy_a_new_one_is_refused_clearly(proxies, fake_twilio):
    proxy = await proxies.start(upstream=fake_twilio.url, max_connections=10, **FAST)
    port = port_of(proxy.url)
    busy = [
        asyncio.ensure_future(slow_body(port, size=100_000, chunk=100, every=0.1))
        for _ in range(10)
    ]
    await asyncio.sleep(0.3)  # all ten are inside a request: none may be closed to make room
    reader, writer = await open_socket(port)
    writer.write(f"GET {LIST} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    raw = await read_until_closed(reader, 3)
    writer.close()
    status, headers, body = parse_answer(raw)
    assert (status, body["code"], body["status"]) == (503, 79022, 503)
    assert str(body["message"]).startswith("sendguard: too many connections")
    assert headers["retry-after"] == "1" and headers["connection"] == "close"
    assert headers["x-sendguard-decision"] == "refused" and headers["x-request-id"]
    await asyncio.gather(*busy)  # cut at their body deadline...
    async with (
        aiohttp.ClientSession() as http,
        http.get(proxy.url + LIST, headers={"Authorization": basic_auth()}) as answer,
    ):
        assert answer.status == 200  # ...and the listener serves again
    metrics = proxy.app[METRICS]
    assert metrics.value("sendguard_client_connections_refused_total", listener="proxy") == 1


# --- secrets stay off the command line ----------------------------------------------------------


@pytest.mark.parametrize("name", ["admin-token", "twilio-auth-tokens", "callback-secret"])
def test_secrets_have_no_value_flag_only_a_file_flag(name, tmp_path, monkeypatch):
    """`serve --admin-token X` would show the token in `ps`: the flag takes a file instead."""
    from click.testing import CliRunner

    from proxy import cli

    clear_sendguard_env(monkeypatch)
    values = {
        "admin-token": "s3cret-admin-token",
        "twilio-auth-tokens": f"{ACCOUNT}={'b' * 32}",
        "callback-secret": "c" * 32,
    }
    runner = CliRunner()
    for command in ("serve", "check-config"):
        refused = runner.invoke(cli.cli, [command, f"--{name}", values[name]])
        assert refused.exit_code == 2, refused.output
        assert "No such option" in refused.output
        assert values[name] not in refused.output
        shown = runner.invoke(cli.cli, [command, "--help"]).output
        assert f"--{name}-file" in shown and not re.search(rf"--{name}(?!-file)\b", shown)
    secret = tmp_path / "secret"
    secret.write_text(values[name] + "\n")  # a mounted Secret ends in a newline
    checked = runner.invoke(cli.cli, ["check-config", "--json", f"--{name}-file", str(secret)])
    assert checked.exit_code == 0, checked.output
    assert values[name] not in checked.output
    effective = json.loads(checked.stdout)[name.replace("-", "_")]
    assert effective not in (None, {}, ""), "the file's secret is in force"
    missing = runner.invoke(cli.cli, ["check-config", f"--{name}-file", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "cannot read" in missing.output
