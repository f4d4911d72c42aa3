"""The benchmark's figures: medians, ratios against the bare pass-through, verdicts, the text.

Every figure compares a target with the bare pass-through (bench/passthrough.py) carrying the
same request, measured in the same run on the same core: sends (fresh, replay, nginx) against
its sends, sendguard's passthrough GETs against its GETs.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bench.roundtrips import ROUND_TRIP_TARGETS

THROUGHPUT_TARGET, CPU_TARGET, REPLAY_TARGET, LATENCY_TARGET_MS = 0.75, 1.33, 0.9, 0.3
STORE_BYTES_AIM = 1024  # issue 14: <= 1 KB per fresh send at steady state (not a SPEC target)


@dataclass(frozen=True)
class Target:
    """One thing measured: a request kind through one proxy, and its baseline."""

    name: str
    proxy: str  # the child process
    mode: str  # loadgen mode: fresh | replay | get
    expect: str  # the X-Sendguard-Decision every answer must carry ("" = none)
    baseline: str  # the bare pass-through target it is compared with
    label: str


TARGETS = (
    Target("bare-send", "passthrough", "fresh", "", "bare-send", "pass-through, sends"),
    Target("bare-get", "passthrough", "get", "", "bare-get", "pass-through, GETs"),
    Target("nginx", "nginx", "fresh", "", "bare-send", "nginx proxy_pass, sends"),
    Target("fresh", "sendguard", "fresh", "forwarded", "bare-send", "sendguard fresh (info)"),
    Target(
        "fresh-warning", "sendguard-warning", "fresh", "forwarded", "bare-send",
        "sendguard fresh (warning)",
    ),
    Target("replay", "sendguard", "replay", "replayed", "bare-send", "sendguard replay"),
    Target("passthrough", "sendguard", "get", "passthrough", "bare-get", "sendguard passthrough"),
)  # fmt: skip
BY_NAME = {target.name: target for target in TARGETS}


def mix(responses: dict[str, int]) -> str:
    return ", ".join(f"{label}: {n}" for label, n in sorted(responses.items())) or "none"


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    results: list[dict[str, Any]] = report["results"]
    measured = [t.name for t in TARGETS if any(r["target"] == t.name for r in results)]

    def median(name: str, connections: int, key: str) -> float:
        rows = [r[key] for r in results if r["target"] == name and r["connections"] == connections]
        return float(statistics.median(rows)) if rows else float("nan")

    medians = {
        name: {
            "rps_32": median(name, 32, "rps"),
            "cpu_us_32": median(name, 32, "proxy_cpu_us_per_req"),
            "p50_ms_1": median(name, 1, "p50_ms"),
            "p99_ms_1": median(name, 1, "p99_ms"),
        }
        for name in measured
    }
    against = {}
    for name in measured:
        mine, base = medians[name], medians[BY_NAME[name].baseline]
        against[name] = {
            "rps_ratio": mine["rps_32"] / base["rps_32"],
            "cpu_ratio": mine["cpu_us_32"] / base["cpu_us_32"],
            "added_p50_ms": mine["p50_ms_1"] - base["p50_ms_1"],
            "added_p99_ms": mine["p99_ms_1"] - base["p99_ms_1"],
        }
    fresh_rows = [r for r in results if "store_bytes" in r]
    sends = sum(r["forwarded"] for r in fresh_rows)
    store = {
        "sends": sends,
        "bytes_per_send": sum(r["store_bytes"] for r in fresh_rows) / sends if sends else None,
        "keys_per_send": sum(r["store_keys"] for r in fresh_rows) / sends if sends else None,
    }
    responses: dict[str, Counter[str]] = {name: Counter() for name in measured}
    for row in results:
        responses[row["target"]].update(row["responses"])
    warnings = list(report["warnings"]) + load_warnings(results)
    summary = {
        "medians": medians,
        "against_passthrough": against,
        "store": store,
        "responses": {name: dict(c) for name, c in responses.items()},
        "all_ok": not any(row["errors"] for row in results),
    }
    summary["verdicts"] = verdicts(summary, report["round_trips"], suspect=bool(warnings))
    summary["warnings"] = warnings
    return summary


def load_warnings(results: list[dict[str, Any]]) -> list[str]:
    warnings = []
    for row in results:
        where = f"round {row['round']} {row['target']} x{row['connections']}"
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
    return warnings


def verdicts(summary: dict[str, Any], trips: dict[str, Any], suspect: bool) -> list[dict[str, Any]]:
    """One per SPEC §6 target, at sendguard's default log level (info)."""
    medians, against = summary["medians"], summary["against_passthrough"]
    fresh, replay, base = against["fresh"], against["replay"], medians["bare-send"]
    lines = [
        (
            f"fresh sends, throughput >= {THROUGHPUT_TARGET}x the pass-through (32 conns)",
            fresh["rps_ratio"] >= THROUGHPUT_TARGET,
            f"{fresh['rps_ratio']:.2f}x ({medians['fresh']['rps_32']:.0f} vs "
            f"{base['rps_32']:.0f} req/s)",
        ),
        (
            f"fresh sends, proxy CPU per request <= {CPU_TARGET}x the pass-through's",
            fresh["cpu_ratio"] <= CPU_TARGET,
            f"{fresh['cpu_ratio']:.2f}x ({medians['fresh']['cpu_us_32']:.0f} vs "
            f"{base['cpu_us_32']:.0f} us/req)",
        ),
        (
            f"replays, throughput >= {REPLAY_TARGET}x the pass-through (32 conns)",
            replay["rps_ratio"] >= REPLAY_TARGET,
            f"{replay['rps_ratio']:.2f}x ({medians['replay']['rps_32']:.0f} vs "
            f"{base['rps_32']:.0f} req/s; CPU {replay['cpu_ratio']:.2f}x)",
        ),
        (
            f"fresh sends, added p50 at 1 connection <= {LATENCY_TARGET_MS} ms",
            fresh["added_p50_ms"] <= LATENCY_TARGET_MS,
            f"+{fresh['added_p50_ms']:.2f} ms ({medians['fresh']['p50_ms_1']:.2f} vs "
            f"{base['p50_ms_1']:.2f} ms; p99 +{fresh['added_p99_ms']:.2f} ms)",
        ),
    ]
    # The background's share is an estimate from its idle rate: allow two stray exchanges.
    slack = 2 / trips["samples"]
    for kind, most in ROUND_TRIP_TARGETS.items():
        found, sent = trips[kind]["round_trips"], trips[kind]["commands_sent"]
        lines.append(
            (
                f"store round trips per {kind} <= {most}",
                found <= most + slack,
                f"{found:.2f} exchanges, {sent:.2f} commands sent "
                f"(+-{slack:.2f}: background estimate)",
            )
        )
    return [
        {"target": target, "met": met, "figures": figures, "suspect": suspect}
        for target, met, figures in lines
    ]


def print_report(report: dict[str, Any]) -> None:
    summary = report["summary"]
    loops = ", ".join(f"{proxy} {loop}" for proxy, loop in report["event_loops"].items())
    print(
        f"sendguard benchmark (SPEC §6): loadgen {report['loadgen']}; proxies on CPU "
        f"{report['proxy_core']}, stub + valkey + loadgen on CPU {report['load_core']}; "
        f"{report['duration_s']:g} s per measurement, {report['rounds']} round(s)\n"
        f"event loop: {loops}\n"
        f"sendguard log level: info (the default) in every sendguard row but 'sendguard "
        f"fresh (warning)', which runs --log-level warning\n"
    )
    if report["nginx_skipped"]:
        print(f"NGINX ROW SKIPPED: {report['nginx_skipped']}\n")
    head = f"{'round':>5}  {'target':<27}{'conns':>5}{'req/s':>8}{'p50 ms':>8}{'p90 ms':>8}"
    head += f"{'p99 ms':>8}{'errors':>7} | CPU% proxy  stub valkey  load | proxy CPU us/req"
    print(head + "\n" + "-" * len(head))
    for row in report["results"]:
        print(
            f"{row['round']:>5}  {BY_NAME[row['target']].label:<27}{row['connections']:>5}"
            f"{row['rps']:>8.0f}{row['p50_ms']:>8.2f}{row['p90_ms']:>8.2f}{row['p99_ms']:>8.2f}"
            f"{row['errors']:>7} |{row['proxy_cpu_pct']:>11.0f}{row['stub_cpu_pct']:>6.0f}"
            f"{row['valkey_cpu_pct']:>7.0f}{row['loadgen_cpu_pct']:>6.0f} |"
            f"{row['proxy_cpu_us_per_req']:>17.0f}"
        )
    print("\nresponses, all rounds (status decision: count; ok = 2xx with the expected decision)")
    for name, responses in summary["responses"].items():
        print(f"  {BY_NAME[name].label:<27}{mix(responses)}")
    if not summary["all_ok"]:
        print("  NOT ALL OK: see the warnings below; the figures are not for clean requests")
    print(
        "\nmedians, and each against the bare pass-through carrying the same request"
        " (sends or GETs), same run, same core"
    )
    head = f"  {'target':<27}{'req/s x32':>10}{'ratio':>7}{'CPU us':>8}{'ratio':>7}"
    head += f"{'p50 ms x1':>11}{'added':>8}{'p99 ms x1':>11}{'added':>8}"
    print(head)
    for name, mine in summary["medians"].items():
        ratios = summary["against_passthrough"][name]
        print(
            f"  {BY_NAME[name].label:<27}{mine['rps_32']:>10.0f}{ratios['rps_ratio']:>7.2f}"
            f"{mine['cpu_us_32']:>8.0f}{ratios['cpu_ratio']:>7.2f}{mine['p50_ms_1']:>11.2f}"
            f"{ratios['added_p50_ms']:>+8.2f}{mine['p99_ms_1']:>11.2f}"
            f"{ratios['added_p99_ms']:>+8.2f}"
        )
    print_round_trips(report["round_trips"])
    store = summary["store"]
    if store["sends"]:
        print(
            f"\nstore bytes per fresh send: {store['bytes_per_send']:.0f} B "
            f"({store['keys_per_send']:.2f} keys) over {store['sends']} fresh sends "
            f"(valkey used_memory and DBSIZE deltas across the fresh-send phases; issue 14 "
            f"aims at <= {STORE_BYTES_AIM} B)"
        )
    print("\nverdicts (SPEC §6; sendguard at log level info, the default):")
    for verdict in summary["verdicts"]:
        state = "MET" if verdict["met"] else "NOT MET"
        flag = "  [suspect: see the warnings]" if verdict["suspect"] else ""
        print(f"  {state:<8} {verdict['target']}: {verdict['figures']}{flag}")
    for warning in summary["warnings"]:
        print(f"warning: {warning}")


def print_round_trips(trips: dict[str, Any]) -> None:
    idle = trips["background"]
    print(
        f"\nstore round trips per request, {trips['samples']} of each, one at a time (valkey "
        f"reads; background sampled {idle['seconds']:g} s with no requests: "
        f"{idle['exchanges']} exchanges, {mix(idle['commands'])})"
    )
    for kind, most in ROUND_TRIP_TARGETS.items():
        row = trips[kind]
        by_command = ", ".join(f"{n} {c:g}" for n, c in sorted(row["by_command"].items()))
        wrong = f"  [{row['wrong_decisions']} wrong decisions]" if row["wrong_decisions"] else ""
        left_out = row["background_left_out"]
        background = f"; background left out: {mix(left_out)}" if left_out else ""
        print(
            f"  {kind:<12}{row['round_trips']:>5.2f}  (target <= {most})  commands sent "
            f"{row['commands_sent']:.2f}: {by_command or 'none'}{background}{wrong}"
        )
    print("  commands run per request, Lua included (INFO commandstats delta, background too):")
    for kind in ROUND_TRIP_TARGETS:
        calls = ", ".join(f"{n} {c:g}" for n, c in sorted(trips[kind]["commands_incl_lua"].items()))
        print(f"    {kind:<12}{calls or 'none'}")
