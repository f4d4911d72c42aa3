"""Store round trips per request kind: passthrough GET, fresh send, replay (SPEC §6: 0, <= 2, 1).

Sent one at a time through sendguard, `samples` of each, and counted on the store's side:
- **exchanges** (what the targets are checked on): valkey's `total_reads_processed` (INFO
  stats), one per read of a client socket. One request and the commands pipelined with it
  arrive in one read, so this counts round trips whatever the client batches.
- **commands** (MONITOR), per command name and per script sha for EVALSHA, the ones run inside
  Lua left out: which commands make up those exchanges.
- **commands run** (INFO commandstats deltas, Lua included): what each request makes valkey do.

sendguard also talks to the store by itself (the kill switch resync every 0.5 s). That
background is sampled first, with no requests, for `background_s`. Exchanges: its read rate
times the phase's length is subtracted. Commands: a signature seen then is left out of a
phase's count as long as its count stays within what the background explains (twice its idle
rate over the phase, plus 2); a signature the requests drive is far above that and is counted.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
import time
from collections import Counter
from typing import Any

import redis

from bench.loadgen import DECISION_HEADER, MESSAGES_PATH, SEND_HEADERS, next_series, send_body

SCRIPT_COMMANDS = ("evalsha", "evalsha_ro", "eval", "eval_ro", "fcall", "fcall_ro")
ROUND_TRIP_TARGETS = {"passthrough": 0, "fresh send": 2, "replay": 1}  # at most (SPEC §6)
PIPELINED = " (pipelined)"


class MonitorCounter:
    """Counts the commands clients send to valkey (MONITOR), leaving out those run inside Lua
    scripts. Counted per signature: the command name, plus the script's sha for EVALSHA (so a
    background script can be told apart from the send scripts)."""

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
                    # sendguard's lookup indexes go in the same pipeline as their script
                    name += PIPELINED
                with self._lock:
                    self._counts[name] += 1

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self._counts)

    def close(self) -> None:
        self._sock.close()


class StoreProbe:
    """Our own view of valkey's counters. Every probe is one read on valkey's side; the
    exchange counts take exactly those out (`OWN_READS` per phase)."""

    OWN_READS = 3  # a phase: commandstats before, commandstats after, stats after

    def __init__(self, port: int) -> None:
        self.client = redis.Redis(port=port, single_connection_client=True)

    def reads(self) -> int:
        return int(self.client.info("stats")["total_reads_processed"])

    def command_calls(self) -> Counter[str]:
        """Total calls per command from INFO commandstats (Lua-internal calls included)."""
        stats = self.client.info("commandstats")
        calls = Counter(
            {name.removeprefix("cmdstat_"): row["calls"] for name, row in stats.items()}
        )
        del calls["info"]  # our own probes
        return calls

    def close(self) -> None:
        self.client.close()


def round_trips(
    sendguard_port: int, valkey_port: int, samples: int = 50, background_s: float = 2.0
) -> dict[str, Any]:
    """Store traffic per passthrough GET, fresh send and replay, sent one at a time."""
    probe = StoreProbe(valkey_port)
    monitor = MonitorCounter(valkey_port, str(probe.client.client_info()["addr"]))
    conn = http.client.HTTPConnection("127.0.0.1", sendguard_port, timeout=10)
    nonce, series = os.urandom(4).hex(), next_series()
    bodies = [send_body(series, 0, i, f"roundtrip-{nonce}-{i}") for i in range(samples)]
    # each to its own recipient: no per-recipient limit refuses a fresh send
    kinds: dict[str, tuple[str, list[str | None], str]] = {
        "passthrough": ("GET", [None] * samples, "passthrough"),
        "fresh send": ("POST", [*bodies], "forwarded"),
        "replay": ("POST", [*bodies], "replayed"),
    }
    report: dict[str, Any] = {"samples": samples}
    try:
        time.sleep(0.3)  # MONITOR is live
        seen_before, reads_before = monitor.snapshot(), probe.reads()
        time.sleep(background_s)
        background = monitor.snapshot() - seen_before
        idle_reads = probe.reads() - reads_before - 1  # the second INFO stats is ours
        report["background"] = {
            "seconds": background_s,
            "commands": dict(background),
            "exchanges": idle_reads,
        }
        for kind, (method, payloads, expect) in kinds.items():
            reads_before = probe.reads()
            calls_before = probe.command_calls()
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
            calls = probe.command_calls() - calls_before
            reads = probe.reads() - reads_before - StoreProbe.OWN_READS
            idle_share = idle_reads * elapsed / background_s
            left_out = {
                name: n
                for name, n in seen.items()
                if name in background and n <= 2 * background[name] * elapsed / background_s + 2
            }
            counted = seen - Counter(left_out)
            report[kind] = {
                "round_trips": max(0.0, reads - idle_share) / samples,
                "commands_sent": sum(
                    n for name, n in counted.items() if not name.endswith(PIPELINED)
                )
                / samples,
                "by_command": {name: n / samples for name, n in counted.items()},
                "background_left_out": left_out,
                "background_exchanges_left_out": round(idle_share, 1),
                "commands_incl_lua": {name: n / samples for name, n in calls.items()},
                "wrong_decisions": wrong,
            }
    finally:
        conn.close()
        monitor.close()
        probe.close()
    return report
