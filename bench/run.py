"""SPEC §6 benchmark: sendguard against a bare aiohttp pass-through, same run, same core.

    python -m bench.run [--duration 5] [--rounds 3] [--json] [--loadgen wrk|python]

Starts valkey, the stub upstream, the pass-through and sendguard as child processes (both
proxies pinned to one core; stub, valkey and the load generator to the other), measures each
proxy at 32 connections (throughput) and at 1 connection (p50 latency) for --rounds rounds in
alternating order, then counts store round trips per request type. Every send has its own
recipient and Body (a fresh send no per-recipient limit refuses); only 2xx answers with the
expected decision count as throughput, and a preflight send stops the run early if a proxy
answers anything else. It reports; it does not gate: exit 0 whatever the figures, non-zero only
when something failed to run.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from bench.loadgen import (
    AUTHORIZATION,
    DECISION_HEADER,
    MESSAGES_PATH,
    ROOT,
    child_setup,
    default_engine,
    measure,
    next_series,
    send_body,
)
from proxy.store.embedded import find_server_binary

PROXIES = ("passthrough", "sendguard")
EXPECTED = {"passthrough": "", "sendguard": "forwarded"}  # decision header a send must carry
ROUND_TRIP_SAMPLES = 50
THROUGHPUT_TARGET, LATENCY_TARGET_MS = 0.75, 0.3
ROUND_TRIP_TARGETS = {"passthrough": "0", "fresh send": "<= 2", "replay": "1"}
SCRIPT_COMMANDS = ("evalsha", "evalsha_ro", "eval", "eval_ro", "fcall", "fcall_ro")
BACKGROUND_SECONDS = 2.0  # store traffic sampled with no requests, before the round-trip phases
SEND_HEADERS = {
    "Content-Type": "application/x-www-form-urlencoded",
    "Authorization": AUTHORIZATION,
}


class Children:
    """Every child process of the run; `stop_all` terminates them whatever happened."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: list[str], core: int | None) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENDGUARD_")}
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
            preexec_fn=child_setup(core),
        )
        self.procs[name] = proc
        return proc

    def wait_listening(self, name: str, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                break
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not start listening on {port}:\n{self.log_tail(name)}")

    def log_tail(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]

    def cpu_seconds(self, name: str) -> float:
        fields = Path(f"/proc/{self.procs[name].pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def stop_all(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut this short
            signal.signal(signum, signal.SIG_IGN)
        for proc in reversed(self.procs.values()):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pick_cores() -> tuple[int | None, int | None]:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        print("warning: fewer than 2 cores, nothing is pinned", file=sys.stderr)
        return None, None
    return cores[0], cores[1]


def start_all(children: Children, proxy_core: int | None, load_core: int | None) -> dict[str, int]:
    ports = {name: free_port() for name in ("valkey", "stub", *PROXIES, "admin")}
    upstream = f"http://127.0.0.1:{ports['stub']}"
    local = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    python = [sys.executable, "-m"]
    commands = {
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
        "sendguard": (
            [*python, "proxy", "serve", "--listen", local["sendguard"],
             "--admin-listen", local["admin"], "--upstream", upstream,
             "--redis-url", f"redis://{local['valkey']}/0", "--log-level", "warning"],
            proxy_core,
        ),
    }  # fmt: skip
    for name, (command, core) in commands.items():
        children.start(name, command, core)
        children.wait_listening(name, ports[name])
    return ports


def preflight(children: Children, ports: dict[str, int]) -> None:
    """One send through each proxy before measuring: a proxy that answers anything but 2xx with
    the expected decision would make every figure meaningless, so stop here instead."""
    body = send_body(next_series(), 0, 0, f"preflight-{os.urandom(4).hex()}")
    for proxy in PROXIES:
        conn = http.client.HTTPConnection("127.0.0.1", ports[proxy], timeout=10)
        try:
            conn.request("POST", MESSAGES_PATH, body=body, headers=SEND_HEADERS)
            answer = conn.getresponse()
            text = answer.read()[:300].decode(errors="replace")
            decision = answer.getheader(DECISION_HEADER) or ""
        finally:
            conn.close()
        if not 200 <= answer.status < 300 or decision != EXPECTED[proxy]:
            raise RuntimeError(
                f"preflight: {proxy} answered {answer.status} decision {decision or '-'!r}"
                f" (expected 2xx, {EXPECTED[proxy] or 'no decision'!r}): {text}\n"
                f"{proxy} log:\n{children.log_tail(proxy)}"
            )


def load_phase(
    children: Children, proxy: str, port: int, connections: int, duration: float, opts: Any
) -> dict[str, Any]:
    watched = ("valkey", "stub", proxy)
    before = {name: children.cpu_seconds(name) for name in watched}
    result = measure(
        f"http://127.0.0.1:{port}{MESSAGES_PATH}",
        connections=connections,
        duration=duration,
        expect=EXPECTED[proxy],
        core=opts.load_core,
        engine=opts.loadgen,
    )
    for name in watched:
        spent = children.cpu_seconds(name) - before[name]
        result[f"{'proxy' if name == proxy else name}_cpu_pct"] = 100 * spent / result["seconds"]
        if name == proxy:  # the proxy's own CPU per ok request: what it costs, whatever else runs
            result["proxy_cpu_us_per_req"] = 1e6 * spent / max(1, result["ok"])
    return {"proxy": proxy, **result}


PIPELINED = " (pipelined)"


class MonitorCounter:
    """Counts the commands clients send to valkey (MONITOR), leaving out those run inside Lua
    scripts: with no pipelining, one such command is one store round trip. Counted per
    signature: the command name, plus the script's sha for EVALSHA (so a background script
    can be told apart from the send scripts)."""

    def __init__(self, port: int, ignore_addr: str) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._ignore = f" {ignore_addr}]".encode()
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.sendall(b"MONITOR\r\n")
        self._lines = self._sock.makefile("rb")
        self._lines.readline()  # +OK
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in self._lines:  # +1700000000.123456 [0 127.0.0.1:5678] "evalsha" "ab12…" …
                if b" lua]" in line or self._ignore in line:
                    continue
                _, _, command = line.partition(b'] "')
                words = command.rstrip(b'"\r\n').split(b'" "', 2)
                name = words[0].decode(errors="replace").lower()
                if name in SCRIPT_COMMANDS and len(words) > 1:
                    name += " " + words[1][:8].decode(errors="replace")
                elif name == "set" and len(words) > 1 and words[1].endswith(b":ref"):
                    # sendguard's lookup indexes go in the same pipeline as their script:
                    # the same round trip, so shown but not counted as one.
                    name += PIPELINED
                with self._lock:
                    self._counts[name] += 1

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self._counts)

    def close(self) -> None:
        self._sock.close()


def round_trips(sendguard_port: int, valkey_port: int) -> dict[str, Any]:
    """Store traffic per passthrough GET, fresh send and replay, sent one at a time.

    sendguard also talks to the store on its own (the kill switch resync, pub/sub pings). That
    traffic is sampled first, with no requests, for BACKGROUND_SECONDS; in each phase a
    signature seen then is left out of the count as long as its count stays within what the
    background explains (twice its idle rate over the phase, plus 2). A signature the
    requests drive (one per request or more) is far above that and is counted.
    """
    info = redis.Redis(port=valkey_port, single_connection_client=True)
    monitor = MonitorCounter(valkey_port, str(info.client_info()["addr"]))
    conn = http.client.HTTPConnection("127.0.0.1", sendguard_port, timeout=10)
    nonce, series = os.urandom(4).hex(), next_series()
    bodies = [
        send_body(series, 0, i, f"roundtrip-{nonce}-{i}") for i in range(ROUND_TRIP_SAMPLES)
    ]  # each to its own recipient: no per-recipient limit refuses a fresh send
    kinds: dict[str, tuple[str, list[str | None], str]] = {
        "passthrough": ("GET", [None] * ROUND_TRIP_SAMPLES, "passthrough"),
        "fresh send": ("POST", [*bodies], "forwarded"),
        "replay": ("POST", [*bodies], "replayed"),
    }
    report: dict[str, Any] = {}
    try:
        time.sleep(0.3)  # MONITOR is live
        idle_before = monitor.snapshot()
        time.sleep(BACKGROUND_SECONDS)
        background = monitor.snapshot() - idle_before
        report["background"] = {"seconds": BACKGROUND_SECONDS, "commands": dict(background)}
        for kind, (method, payloads, expect) in kinds.items():
            calls_before = command_calls(info)
            seen_before = monitor.snapshot()
            started = time.monotonic()
            wrong = 0
            for body in payloads:
                conn.request(method, MESSAGES_PATH, body=body, headers=SEND_HEADERS)
                answer = conn.getresponse()
                answer.read()
                wrong += answer.getheader(DECISION_HEADER) != expect
            time.sleep(0.3)  # let MONITOR catch up
            elapsed = time.monotonic() - started
            seen = monitor.snapshot() - seen_before
            calls = command_calls(info) - calls_before
            left_out = {
                name: n
                for name, n in seen.items()
                if name in background
                and n <= 2 * background[name] * elapsed / BACKGROUND_SECONDS + 2
            }
            counted = seen - Counter(left_out)
            trips = sum(n for name, n in counted.items() if not name.endswith(PIPELINED))
            report[kind] = {
                "round_trips": trips / len(payloads),
                "by_command": {name: n / len(payloads) for name, n in counted.items()},
                "background_left_out": left_out,
                "commands_incl_lua": {name: n / len(payloads) for name, n in calls.items()},
                "wrong_decisions": wrong,
            }
    finally:
        conn.close()
        monitor.close()
        info.close()
    return report


def command_calls(info: redis.Redis) -> Counter[str]:
    """Total calls per command from INFO commandstats (Lua-internal calls included)."""
    stats = info.info("commandstats")
    calls = Counter({name.removeprefix("cmdstat_"): row["calls"] for name, row in stats.items()})
    del calls["info"]  # our own probe
    return calls


def measure_rounds(
    children: Children, ports: dict[str, int], args: argparse.Namespace
) -> list[dict[str, Any]]:
    for proxy in PROXIES:  # warm-up: connection pools, script cache, allocator
        load_phase(children, proxy, ports[proxy], 32, min(2.0, args.duration), args)
    results: list[dict[str, Any]] = []
    for round_no in range(1, args.rounds + 1):
        for proxy in PROXIES if round_no % 2 else PROXIES[::-1]:  # alternate the order
            for connections in (32, 1):
                row = load_phase(children, proxy, ports[proxy], connections, args.duration, args)
                results.append({"round": round_no, **row})
                if not args.json:
                    print(f"  round {round_no}: {proxy} x{connections} done", file=sys.stderr)
    return results


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    def median(proxy: str, connections: int, key: str) -> float:
        rows = [r for r in results if r["proxy"] == proxy and r["connections"] == connections]
        return float(statistics.median(r[key] for r in rows))

    warnings = []
    for row in results:
        where = f"round {row['round']} {row['proxy']} x{row['connections']}"
        if row["errors"]:
            warnings.append(
                f"{where}: {row['errors']} of {row['requests']} requests not ok "
                f"({mix(row['responses'])}): excluded from req/s, but the figures are suspect"
            )
        load_side = row["stub_cpu_pct"] + row["valkey_cpu_pct"] + row["loadgen_cpu_pct"]
        if row["connections"] > 1 and (row["proxy_cpu_pct"] < 90 or load_side > 90):
            warnings.append(
                f"{where}: proxy core {row['proxy_cpu_pct']:.0f}% busy, load core "
                f"{load_side:.0f}%: the proxy may not be the bottleneck"
            )
    responses: dict[str, Counter[str]] = {p: Counter() for p in PROXIES}
    for row in results:
        responses[row["proxy"]].update(row["responses"])
    return {
        "responses": {p: dict(c) for p, c in responses.items()},
        "all_ok": not any(row["errors"] for row in results),
        "median_rps_32": {p: median(p, 32, "rps") for p in PROXIES},
        "median_p50_ms_1": {p: median(p, 1, "p50_ms") for p in PROXIES},
        "throughput_ratio": median("sendguard", 32, "rps") / median("passthrough", 32, "rps"),
        "median_cpu_us_per_req_32": {p: median(p, 32, "proxy_cpu_us_per_req") for p in PROXIES},
        "cpu_cost_ratio": median("passthrough", 32, "proxy_cpu_us_per_req")
        / median("sendguard", 32, "proxy_cpu_us_per_req"),
        "throughput_target": THROUGHPUT_TARGET,
        "added_p50_ms": median("sendguard", 1, "p50_ms") - median("passthrough", 1, "p50_ms"),
        "added_p50_target_ms": LATENCY_TARGET_MS,
        "warnings": warnings,
    }


def mix(responses: dict[str, int]) -> str:
    return ", ".join(f"{label}: {n}" for label, n in sorted(responses.items())) or "none"


def print_report(report: dict[str, Any]) -> None:
    summary = report["summary"]
    print(
        f"loadgen {report['loadgen']}; proxies on CPU {report['proxy_core']}, stub + valkey + "
        f"loadgen on CPU {report['load_core']}; {report['duration_s']:g} s per measurement, "
        f"{report['rounds']} rounds; sendguard --log-level warning\n"
    )
    head = f"{'round':>5}  {'proxy':<12}{'conns':>5}{'req/s':>8}{'p50 ms':>8}{'p90 ms':>8}"
    head += f"{'p99 ms':>8}{'errors':>7} | CPU% proxy  stub valkey  load | proxy CPU us/req"
    print(head + "\n" + "-" * len(head))
    for row in report["results"]:
        print(
            f"{row['round']:>5}  {row['proxy']:<12}{row['connections']:>5}{row['rps']:>8.0f}"
            f"{row['p50_ms']:>8.2f}{row['p90_ms']:>8.2f}{row['p99_ms']:>8.2f}{row['errors']:>7} |"
            f"{row['proxy_cpu_pct']:>11.0f}{row['stub_cpu_pct']:>6.0f}"
            f"{row['valkey_cpu_pct']:>7.0f}{row['loadgen_cpu_pct']:>6.0f} |"
            f"{row['proxy_cpu_us_per_req']:>17.0f}"
        )
    print("\nresponses, all rounds (status decision: count; ok = 2xx with the expected decision)")
    for proxy in PROXIES:
        print(f"  {proxy:<12} {mix(summary['responses'][proxy])}")
    if not summary["all_ok"]:
        print("  NOT ALL OK: see the warnings below; the figures are not for clean sends")
    print()
    for proxy in PROXIES:
        print(
            f"median {proxy:<12} 32 conns: {summary['median_rps_32'][proxy]:>6.0f} req/s"
            f"    1 conn: p50 {summary['median_p50_ms_1'][proxy]:.3f} ms"
            f"    proxy CPU at 32 conns: {summary['median_cpu_us_per_req_32'][proxy]:.0f} us/req"
        )
    print(
        f"\nthroughput ratio sendguard/passthrough = {summary['throughput_ratio']:.2f}"
        f" (target >= {THROUGHPUT_TARGET})\n"
        f"added p50 latency at 1 connection = {summary['added_p50_ms']:.2f} ms"
        f" (target <= {LATENCY_TARGET_MS} ms)\n"
        f"cross-check, CPU cost ratio passthrough/sendguard (us/req at 32 conns) = "
        f"{summary['cpu_cost_ratio']:.2f}: the throughput ratio the proxy core would allow\n"
    )
    trips = report["round_trips"]
    idle = trips["background"]
    print(
        f"store round trips per request, {ROUND_TRIP_SAMPLES} of each, one at a time (MONITOR; "
        f"background sampled {idle['seconds']:g} s with no requests: "
        f"{mix(idle['commands']) if idle['commands'] else 'none'})"
    )
    for kind in ROUND_TRIP_TARGETS:
        row = trips[kind]
        by_command = ", ".join(f"{n} {c:g}" for n, c in sorted(row["by_command"].items()))
        wrong = f"  [{row['wrong_decisions']} wrong decisions]" if row["wrong_decisions"] else ""
        left_out = row["background_left_out"]
        background = f"; background left out: {mix(left_out)}" if left_out else ""
        print(
            f"  {kind:<12}{row['round_trips']:>5.2f}  (target {ROUND_TRIP_TARGETS[kind]})"
            f"  ({by_command or 'no store commands'}{background}){wrong}"
        )
    print("  commands run per request, Lua included (INFO commandstats delta, background too):")
    for kind in ROUND_TRIP_TARGETS:
        calls = ", ".join(f"{n} {c:g}" for n, c in sorted(trips[kind]["commands_incl_lua"].items()))
        print(f"    {kind:<12}{calls or 'none'}")
    for warning in summary["warnings"]:
        print(f"warning: {warning}")


def run(args: argparse.Namespace) -> int:
    proxy_core, args.load_core = pick_cores()
    if args.load_core is not None:
        os.sched_setaffinity(0, {args.load_core})  # this orchestrator stays off the proxy core
    with tempfile.TemporaryDirectory(prefix="sendguard-bench-") as tmp:
        children = Children(Path(tmp))
        try:
            ports = start_all(children, proxy_core, args.load_core)
            preflight(children, ports)
            results = measure_rounds(children, ports, args)
            trips = round_trips(ports["sendguard"], ports["valkey"])
        finally:
            children.stop_all()
    report = {
        "loadgen": args.loadgen,
        "proxy_core": proxy_core,
        "load_core": args.load_core,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "results": results,
        "round_trips": trips,
        "summary": summarise(results),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description="sendguard vs bare pass-through (SPEC §6).")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--loadgen", choices=("wrk", "python"), default=default_engine())
    args = parser.parse_args()

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
