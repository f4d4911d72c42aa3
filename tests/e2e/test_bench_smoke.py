"""The SPEC §6 benchmark runs end to end: `python -m bench.run --quick` prints every row.

Not a measurement (1 s per target on a shared machine says nothing about the figures): it
checks that the report is whole, so that the real run on a quiet machine cannot fail on a
missing piece. Needs wrk, the load generator the benchmark uses (`apt-get install wrk`); nginx
is never installed from here (`--no-install`): without it the nginx row must say loudly that it
is skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from bench.report import TARGETS
from bench.roundtrips import ROUND_TRIP_TARGETS
from tests.paths import REPO_ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        shutil.which("wrk") is None,
        reason="wrk is not installed (apt-get install wrk): the benchmark smoke test needs it",
    ),
]
VERDICT = re.compile(r"^  (MET|NOT MET) +([^:]+): (.+)$")


@pytest.fixture(scope="module")
def report() -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--no-install"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def nginx_measured(report: str) -> bool:
    return "NGINX ROW SKIPPED" not in report


def test_every_target_is_measured_at_32_and_1_connection(report):
    for target in TARGETS:
        if target.proxy == "nginx" and not nginx_measured(report):
            continue
        for connections in (32, 1):
            row = re.compile(rf"^\s+1  {re.escape(target.label)}\s+{connections}\s+\d+ ", re.M)
            assert row.search(report), f"no {target.label} x{connections} row:\n{report}"


def test_every_answer_was_the_expected_decision(report):
    tallies = report.split("responses, all rounds", 1)[1].split("\n\n", 1)[0].splitlines()
    for target in TARGETS:
        if target.proxy == "nginx" and not nginx_measured(report):
            continue
        line = next(ln for ln in tallies if ln.startswith(f"  {target.label}  "))
        # one kind of answer only: 2xx with the expected decision
        assert re.fullmatch(
            rf"  {re.escape(target.label)} +2\d\d {target.expect or '-'}: \d+", line
        )
    assert "NOT ALL OK" not in report


def test_each_target_is_compared_with_the_pass_through(report):
    medians = report.split("medians, and each against the bare pass-through", 1)[1]
    for target in TARGETS:
        if target.proxy == "nginx" and not nginx_measured(report):
            continue
        assert re.search(rf"^  {re.escape(target.label)} +\d+ +\d+\.\d\d ", medians, re.M), (
            target.label
        )


def test_the_nginx_row_is_measured_or_skipped_loudly(report):
    if nginx_measured(report):
        assert "nginx proxy_pass, sends" in report
    else:
        assert re.search(r"^NGINX ROW SKIPPED: .+", report, re.M)


def test_loop_and_log_level_are_stated(report):
    (loops,) = [line for line in report.splitlines() if line.startswith("event loop: ")]
    named = dict(part.split() for part in loops.removeprefix("event loop: ").split(", "))
    assert set(named) == {"passthrough", "sendguard", "sendguard-warning"}
    assert len(set(named.values())) == 1, "both proxies run on the same loop"
    if sys.platform != "win32":
        assert set(named.values()) == {"uvloop"}, "uvloop is a dependency here"
    assert "sendguard log level: info (the default)" in report


def test_store_round_trips_and_bytes_per_send(report):
    for kind in ROUND_TRIP_TARGETS:
        assert re.search(rf"^  {kind} +\d+\.\d\d  \(target <= \d\)", report, re.M), kind
    assert re.search(
        r"^store bytes per fresh send: -?\d+ B \(\d+\.\d\d keys\) over \d+", report, re.M
    )


def test_a_verdict_per_spec_target(report):
    verdicts = report.split("verdicts (SPEC §6", 1)[1].splitlines()[1:]
    found = [VERDICT.match(line) for line in verdicts]
    targets = [m.group(2) for m in found if m]
    assert len(targets) == 4 + len(ROUND_TRIP_TARGETS), verdicts
    for words in ("fresh sends, throughput", "fresh sends, proxy CPU", "replays, throughput",
                  "fresh sends, added p50"):  # fmt: skip
        assert any(t.startswith(words) for t in targets), words
