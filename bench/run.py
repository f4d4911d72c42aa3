"""SPEC §6 benchmark: sendguard against a bare aiohttp pass-through, same run, same core.

    python -m bench.run [--duration 5] [--rounds 3] [--quick] [--json] [--loadgen wrk|python]

Starts valkey, the stub upstream, the bare pass-through, nginx (the physical floor; skipped,
loudly, when it cannot be had) and two sendguards (log level info, the default, and warning)
as child processes: every proxy pinned to one core, stub, valkey and the load generator to the
other. Each round measures every target (bench/report.py: pass-through sends and GETs, nginx,
sendguard fresh sends at both log levels, replays, passthrough GETs) at 32 connections
(throughput, CPU per request) and at 1 connection (latency), in alternating order; then counts
store round trips per request kind (bench/roundtrips.py). Only 2xx answers with the expected
decision count as throughput, and a preflight stops the run early if a proxy answers anything
else. It prints a verdict per SPEC §6 target and does not gate: exit 0 whatever the figures,
non-zero only when something failed to run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.children import Children, free_port, pick_cores
from bench.loadgen import (
    DECISION_HEADER,
    MESSAGES_PATH,
    SEND_HEADERS,
    default_engine,
    measure,
    next_series,
    replay_bodies,
    send_body,
)
from bench.nginx import find_nginx, nginx_command
from bench.report import TARGETS, Target, print_report, summarise
from bench.roundtrips import round_trips
from proxy.server.eventloop import choose_loop
from proxy.store.embedded import find_server_binary

PYTHON_PROXIES = ("passthrough", "sendguard", "sendguard-warning")
REPLAY_POOL = 100  # distinct sends a replay load repeats (made once, before measuring)
QUICK = {"duration": 1.0, "rounds": 1, "warmup": 0.0, "samples": 20, "background": 1.0}


def start_all(
    children: Children, cores: tuple[int | None, int | None], args: Any
) -> dict[str, int]:
    proxy_core, load_core = cores
    names = ("valkey", "stub", "nginx", *PYTHON_PROXIES, "admin", "admin-warning")
    ports = {name: free_port() for name in names}
    upstream = f"http://127.0.0.1:{ports['stub']}"
    local = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    python = [sys.executable, "-m"]

    def sendguard(level: str, listen: str, admin: str) -> list[str]:
        return [*python, "proxy", "serve", "--listen", local[listen], "--admin-listen",
                local[admin], "--upstream", upstream, "--redis-url",
                f"redis://{local['valkey']}/0", "--log-level", level]  # fmt: skip

    commands: dict[str, tuple[list[str], int | None]] = {
        "valkey": (
            [find_server_binary(), "--bind", "127.0.0.1", "--port", str(ports["valkey"]),
             "--save", "", "--appendonly", "no"],
            load_core,
        ),
        "stub": ([*python, "bench.stub_upstream", "--port", str(ports["stub"])], load_core),
        "passthrough": (
            [*python, "bench.passthrough", "--port", str(ports["passthrough"]),
             "--upstream", upstream],
            proxy_core,
        ),
        "sendguard": (sendguard("info", "sendguard", "admin"), proxy_core),
        "sendguard-warning": (
            sendguard("warning", "sendguard-warning", "admin-warning"), proxy_core
        ),
    }  # fmt: skip
    if args.nginx:
        commands["nginx"] = (
            nginx_command(args.nginx, children.log_dir / "nginx", ports["nginx"], ports["stub"]),
            proxy_core,
        )
    for name, (command, core) in commands.items():
        children.start(name, command, core)
        children.wait_listening(name, ports[name])
    return ports


def ask(port: int, method: str, body: str | None) -> tuple[int, str, str]:
    """(status, decision, start of the body) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, MESSAGES_PATH, body=body, headers=SEND_HEADERS)
        answer = conn.getresponse()
        text = answer.read()[:300].decode(errors="replace")
        return answer.status, answer.getheader(DECISION_HEADER) or "", text
    finally:
        conn.close()


def preflight(children: Children, ports: dict[str, int], replay: dict[str, str]) -> None:
    """One request of every target before measuring (the replay pool's sends made first): a
    proxy that answers anything but 2xx with the expected decision would make every figure
    meaningless, so stop here instead."""
    bodies = replay_bodies(replay["series"], replay["nonce"], REPLAY_POOL)
    checks: list[tuple[int, str, str | None, str, str]] = [
        (ports["sendguard"], "POST", body, "forwarded", "sendguard") for body in bodies
    ]
    for target in targets(children):
        if target.mode == "replay":
            body: str | None = bodies[0]
        elif target.mode == "get":
            body = None
        else:
            body = send_body(next_series(), 0, 0, f"preflight-{os.urandom(4).hex()}")
        method = "GET" if body is None else "POST"
        checks.append((ports[target.proxy], method, body, target.expect, target.proxy))
    for port, method, body, expect, proxy in checks:
        status, decision, text = ask(port, method, body)
        if not 200 <= status < 300 or decision != expect:
            raise RuntimeError(
                f"preflight: {proxy} answered {method} with {status} decision {decision or '-'!r}"
                f" (expected 2xx, {expect or 'no decision'!r}): {text}\n"
                f"{proxy} log:\n{children.log_tail(proxy)}"
            )


def targets(children: Children) -> list[Target]:
    return [target for target in TARGETS if target.proxy in children.procs]


def load_phase(
    children: Children, target: Target, ports: dict[str, int], connections: int,
    duration: float, opts: Any, store: redis.Redis | None = None,
) -> dict[str, Any]:  # fmt: skip
    watched = ("valkey", "stub", target.proxy)
    before = {name: children.cpu_seconds(name) for name in watched}
    # Store growth per fresh send: sendguard's phases of fresh sends only (nothing else
    # writes to the store meanwhile but sendguard's own background).
    if target.expect != "forwarded":
        store = None
    if store is not None:
        memory, keys = int(store.info("memory")["used_memory"]), int(store.dbsize())
    result = measure(
        f"http://127.0.0.1:{ports[target.proxy]}{MESSAGES_PATH}",
        connections=connections,
        duration=duration,
        expect=target.expect,
        core=opts.load_core,
        engine=opts.loadgen,
        mode=target.mode,
        pool=REPLAY_POOL,
        **(opts.replay if target.mode == "replay" else {}),
    )
    for name in watched:
        spent = children.cpu_seconds(name) - before[name]
        mine = name == target.proxy
        result[f"{'proxy' if mine else name}_cpu_pct"] = 100 * spent / result["seconds"]
        if mine:  # the proxy's own CPU per ok request: what it costs, whatever else runs
            result["proxy_cpu_us_per_req"] = 1e6 * spent / max(1, result["ok"])
    if store is not None:
        time.sleep(0.3)  # outcome writes that follow the last answers
        result["store_bytes"] = int(store.info("memory")["used_memory"]) - memory
        result["store_keys"] = int(store.dbsize()) - keys
        result["forwarded"] = sum(
            n for label, n in result["responses"].items() if label.endswith(" forwarded")
        )
    return {"target": target.name, **result}


def measure_rounds(
    children: Children, ports: dict[str, int], args: argparse.Namespace, store: redis.Redis
) -> list[dict[str, Any]]:
    measured = targets(children)
    if args.warmup > 0:  # connection pools, script cache, allocator
        for target in measured:
            load_phase(children, target, ports, 32, args.warmup, args)
    results: list[dict[str, Any]] = []
    for round_no in range(1, args.rounds + 1):
        for target in measured if round_no % 2 else measured[::-1]:  # alternate the order
            for connections in (32, 1):
                row = load_phase(children, target, ports, connections, args.duration, args, store)
                results.append({"round": round_no, **row})
                if not args.json:
                    print(f"  round {round_no}: {target.name} x{connections} done", file=sys.stderr)
    return results


def run(args: argparse.Namespace) -> int:
    proxy_core, args.load_core = pick_cores()
    if args.load_core is not None:
        os.sched_setaffinity(0, {args.load_core})  # this orchestrator stays off the proxy core
    warnings: list[str] = []
    nginx = find_nginx(args.install) if args.with_nginx else (None, "--no-nginx was given")
    args.nginx, nginx_skipped = nginx
    if nginx_skipped:
        print(f"WARNING: the nginx row is SKIPPED: {nginx_skipped}", file=sys.stderr)
    args.replay = {"series": next_series(), "nonce": os.urandom(6).hex()}
    with tempfile.TemporaryDirectory(prefix="sendguard-bench-") as tmp:
        children = Children(Path(tmp))
        try:
            ports = start_all(children, (proxy_core, args.load_core), args)
            loops = {name: children.event_loop(name) for name in PYTHON_PROXIES}
            expected = choose_loop()[0]
            if set(loops.values()) != {expected}:
                warnings.append(f"the proxies do not all run on {expected}: {loops}")
            preflight(children, ports, args.replay)
            store = redis.Redis(port=ports["valkey"], single_connection_client=True)
            try:
                results = measure_rounds(children, ports, args, store)
            finally:
                store.close()
            trips = round_trips(ports["sendguard"], ports["valkey"], args.samples, args.background)
        finally:
            children.stop_all()
    report: dict[str, Any] = {
        "loadgen": args.loadgen,
        "proxy_core": proxy_core,
        "load_core": args.load_core,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "event_loops": loops,
        "sendguard_log_levels": {"sendguard": "info", "sendguard-warning": "warning"},
        "nginx_skipped": nginx_skipped,
        "results": results,
        "round_trips": trips,
        "warnings": warnings,
    }
    report["summary"] = summarise(report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="sendguard vs bare pass-through (SPEC §6).")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per target, first")
    parser.add_argument("--samples", type=int, default=50, help="requests per round-trip count")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 1 s per measurement, 1 round, no warm-up, 20 round-trip samples",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--loadgen", choices=("wrk", "python"), default=default_engine())
    parser.add_argument(
        "--no-nginx", dest="with_nginx", action="store_false", help="skip the nginx row"
    )
    parser.add_argument(
        "--no-install", dest="install", action="store_false",
        help="never apt-get install nginx when it is missing (the row is skipped)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.background = 2.0
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def main() -> None:
    args = parse_args()

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):  # explicit: SIGINT may arrive ignored
        signal.signal(signum, interrupted)
    try:
        sys.exit(run(args))
    except KeyboardInterrupt:
        print("interrupted; children stopped", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        print(f"benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
