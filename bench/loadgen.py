"""Closed-loop load: N connections send requests back to back for a fixed duration.

Three kinds of load (`mode`):
- `fresh`: POST Messages.json, every request with a unique Body and a unique `To`, so every one
  is a fresh guarded send through sendguard that no per-recipient limit refuses;
- `replay`: POST Messages.json cycling through `pool` sends that were made before (the bodies
  `replay_bodies` gives): through sendguard every one is a duplicate answered from the record;
- `get`: GET Messages.json (the list), a passthrough request for sendguard.

Engine: `wrk` (C, with the Lua script
below) when it is installed, else the Python worker in this module (`python -m bench.loadgen
...`, plain asyncio + aiohttp). Either runs as a child process, pinned to the load core; its own
CPU use is reported so a saturated loadgen shows up. A request is ok when it is 2xx and carries
exactly the expected X-Sendguard-Decision (none, for the pass-through); anything else is an
error, and only ok requests count as throughput. Responses are tallied by status and decision.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ctypes
import itertools
import json
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from string import Template
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent  # children run from here: `-m proxy`, `-m bench`
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
MESSAGES_PATH = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
AUTHORIZATION = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:benchtoken".encode()).decode()
# Every send goes to its own recipient, `+1` + a 3-digit series + a 1-digit thread + a 7-digit
# counter: sendguard's per-recipient limits (default 5/min) then never refuse one, and the figures
# are for sends that really go upstream (decision `forwarded`), limit bookkeeping included.
SEND_FORM = "To=%2B1{series}{thread}{number}&From=%2B15005550010&Body=bench+{tag}"
SEND_HEADERS = {"Content-Type": "application/x-www-form-urlencoded", "Authorization": AUTHORIZATION}
DECISION_HEADER = "X-Sendguard-Decision"
RESULT_MARK = "BENCH_RESULT "
# One series per load phase, distinct within a run (900 of them), so no recipient is reused.
_SERIES = itertools.count(secrets.randbelow(900))


def next_series() -> str:
    return str(100 + next(_SERIES) % 900)


def send_body(series: str, thread: int, number: int, tag: str) -> str:
    """The form of one guarded send: unique recipient and unique Body (a fresh send)."""
    number_digits = f"{number % 10**7:07d}"
    return SEND_FORM.format(series=series, thread=thread % 10, number=number_digits, tag=tag)


# args: nonce, expected decision ("" = no decision header), Authorization, recipient series,
# mode (fresh|replay|get), replay pool size. A response is counted under
# "<status> <decision or ->"; it is ok when it is 2xx and carries
# exactly the expected decision. Socket errors (connect/read/write/timeout) are errors too.
WRK_SCRIPT = Template("""
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  nonce, expect, series, mode = args[1], args[2] or "", args[4], args[5]
  counter, bad, seen = 0, 0, {}
  headers = {["Content-Type"] = "application/x-www-form-urlencoded", ["Authorization"] = args[3]}
  if mode == "get" then
    get = wrk.format("GET", wrk.path, {["Authorization"] = args[3]})
  elseif mode == "replay" then  -- the bodies of replay_bodies(), formatted once
    replays, pool = {}, tonumber(args[6])
    for i = 0, pool - 1 do
      local body = string.format("$form", series, 0, i, nonce, 0, i)
      replays[i + 1] = wrk.format("POST", wrk.path, headers, body)
    end
  end
end
function request()
  counter = counter + 1
  if mode == "get" then return get end
  if mode == "replay" then return replays[(counter + tid) % pool + 1] end
  local body = string.format("$form", series, tid % 10, counter % 10000000, nonce, tid, counter)
  return wrk.format("POST", wrk.path, headers, body)
end
function response(status, hdrs, body)
  local decision = hdrs["$header"] or ""
  local label = status .. " " .. (decision == "" and "-" or decision)
  seen[label] = (seen[label] or 0) + 1
  if status < 200 or status > 299 or decision ~= expect then bad = bad + 1 end
end
function done(summary, latency, requests)
  local total_bad, totals, parts = 0, {}, {}
  for _, t in ipairs(threads) do
    total_bad = total_bad + t:get("bad")
    for label, n in pairs(t:get("seen")) do totals[label] = (totals[label] or 0) + n end
  end
  for label, n in pairs(totals) do
    parts[#parts + 1] = string.format('"%s": %d', (label:gsub('[^%w%- ]', '?')), n)
  end
  local e = summary.errors
  io.write(string.format(
    '$mark{"requests": %d, "ok": %d, "seconds": %f, "p50_ms": %f, "p90_ms": %f, '
    .. '"p99_ms": %f, "errors": %d, "responses": {%s}}\\n',
    summary.requests, summary.requests - total_bad, summary.duration / 1e6,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3,
    total_bad + e.connect + e.read + e.write + e.timeout, table.concat(parts, ", ")))
end
""").substitute(
    form=SEND_FORM.replace("%", "%%").format(
        series="%s", thread="%d", number="%07d", tag="%s-%d-%d"
    ),
    header=DECISION_HEADER,
    mark=RESULT_MARK,
)


def child_setup(core: int | None) -> Callable[[], None]:
    """preexec_fn for every benchmark child: pin to a core, die if the orchestrator dies."""

    def setup() -> None:
        if core is not None:
            os.sched_setaffinity(0, {core})
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return setup


def replay_bodies(series: str, nonce: str, pool: int) -> list[str]:
    """The sends a `replay` load repeats (make them once first): thread 0, numbers 0..pool-1."""
    return [send_body(series, 0, i, f"{nonce}-0-{i}") for i in range(pool)]


def default_engine() -> str:
    return "wrk" if shutil.which("wrk") else "python"


MODES = ("fresh", "replay", "get")


def measure(
    url: str,
    *,
    connections: int,
    duration: float,
    expect: str,
    core: int | None,
    engine: str,
    mode: str = "fresh",
    series: str | None = None,
    nonce: str | None = None,
    pool: int = 1,
) -> dict[str, Any]:
    """Run one load phase in a child process (`mode`: see the module docstring; a `replay`
    load needs the `series` and `nonce` its sends were made with).

    Returns requests, ok (2xx with exactly the `expect`ed decision header; "" = no header),
    rps (ok per second: refused or failed requests never count as throughput), percentiles,
    errors, responses (count per "<status> <decision>") and the load generator's CPU.
    """
    assert mode in MODES, mode
    nonce = nonce or secrets.token_hex(6)
    series = series or next_series()
    with tempfile.TemporaryDirectory() as tmp:
        if engine == "wrk":
            script = os.path.join(tmp, "sends.lua")
            with open(script, "w") as out:
                out.write(WRK_SCRIPT)
            seconds = max(1, round(duration))  # wrk takes whole seconds only
            command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
            command += ["-s", script, url, "--", nonce, expect, AUTHORIZATION, series, mode]
            command += [str(pool)]
        else:
            command = [sys.executable, "-m", "bench.loadgen", url, "--nonce", nonce]
            command += ["--connections", str(connections), "--duration", str(duration)]
            command += ["--expect", expect, "--series", series, "--mode", mode]
            command += ["--pool", str(pool)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, preexec_fn=child_setup(core)
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARK) :])
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    result.update(
        engine=engine,
        connections=connections,
        rps=result["ok"] / result["seconds"],
        loadgen_cpu_pct=100 * cpu / result["seconds"],
    )
    return result


# --- the Python engine (used when wrk is not installed) ------------------------------------


async def _worker(
    session: aiohttp.ClientSession,
    url: str,
    bodies: Iterator[str | None],
    expect: str,
    deadline: float,
    seen: Counter[str],
) -> tuple[list[float], int]:
    post = {"Content-Type": "application/x-www-form-urlencoded", "Authorization": AUTHORIZATION}
    get = {"Authorization": AUTHORIZATION}
    latencies: list[float] = []
    errors = 0
    while time.perf_counter() < deadline:
        body = next(bodies)  # None: a GET
        method, headers = ("GET", get) if body is None else ("POST", post)
        started = time.perf_counter()
        try:
            async with session.request(method, url, data=body, headers=headers) as response:
                await response.read()
                decision = response.headers.get(DECISION_HEADER, "")
                seen[f"{response.status} {decision or '-'}"] += 1
                ok = 200 <= response.status < 300 and decision == expect
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        latencies.append(time.perf_counter() - started)
        errors += not ok
    return latencies, errors


def _bodies(mode: str, series: str, nonce: str, pool: int) -> Iterator[str | None]:
    if mode == "get":
        return itertools.repeat(None)
    if mode == "replay":
        return itertools.cycle(replay_bodies(series, nonce, pool))
    return (send_body(series, 0, n, f"{nonce}-{n}") for n in itertools.count(1))


async def _run_python(
    url: str, connections: int, duration: float, expect: str, bodies: Iterator[str | None]
) -> None:
    # One event loop: the shared iterator hands every request its body (fresh: its own
    # recipient and Body).
    seen: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        deadline = started + duration
        workers = [
            _worker(session, url, bodies, expect, deadline, seen) for _ in range(connections)
        ]
        results = await asyncio.gather(*workers)
        seconds = time.perf_counter() - started
    latencies = sorted(latency for part, _ in results for latency in part)
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    errors = sum(errors for _, errors in results)
    result = {
        "requests": len(latencies),
        "ok": len(latencies) - errors,
        "seconds": seconds,
        "p50_ms": cuts[49] * 1000,
        "p90_ms": cuts[89] * 1000,
        "p99_ms": cuts[98] * 1000,
        "errors": errors,
        "responses": dict(seen),
    }
    print(RESULT_MARK + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Python closed-loop load generator.")
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--expect", default="", help="required X-Sendguard-Decision ('' = none)")
    parser.add_argument("--nonce", default=secrets.token_hex(6))
    parser.add_argument("--series", default=None, help="3-digit recipient series")
    parser.add_argument("--mode", choices=MODES, default="fresh")
    parser.add_argument("--pool", type=int, default=1, help="replay: how many sends to repeat")
    args = parser.parse_args()
    bodies = _bodies(args.mode, args.series or next_series(), args.nonce, args.pool)
    asyncio.run(_run_python(args.url, args.connections, args.duration, args.expect, bodies))


if __name__ == "__main__":
    main()
