"""The shipped Prometheus alert rules (SPEC §5 "Alerting"; issue 15): what the postmortem caught
too late, as rules that `promtool check rules` accepts and that `promtool test rules` exercises
(helm/sendguard/alerts/sendguard-rules.test.yaml), on metric names sendguard really exports,
each with a runbook entry in the README. The Helm chart wraps the same file in a PrometheusRule
(tests/unit/test_helm_chart.py).

promtool comes from the Debian package `prometheus` (scripts/test installs it when it can);
without it the two promtool tests are skipped with the reason shown in pytest's summary."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from proxy.metrics import Metrics
from tests.paths import REPO_ROOT

RULES = REPO_ROOT / "helm" / "sendguard" / "alerts" / "sendguard-rules.yaml"
RULE_TESTS = RULES.with_name("sendguard-rules.test.yaml")
README = (REPO_ROOT / "README.md").read_text()
RUNBOOK = "https://github.com/sendguard/sendguard#"

# SPEC §5: a send-rate spike per account against its own baseline, breaker trips, UNKNOWN
# records, unguarded sends, store down, kill switch engaged.
REQUIRED = {
    "SendguardSendRateSpike": "sendguard_sends_total",
    "SendguardBreakerTrips": "sendguard_breaker_trips_total",
    "SendguardUnknownRecords": "sendguard_records_unknown_total",
    "SendguardUnguardedSends": "sendguard_unguarded_sends_total",
    "SendguardStoreDown": "sendguard_store_up",
    "SendguardKillSwitchEngaged": "sendguard_kill_switch_engaged",
}
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian: apt-get install prometheus): alert rules NOT CHECKED",
)


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def exported_metric_names() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
        if family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
    return names


@needs_promtool
def test_promtool_checks_the_rules():
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_unit_tests_of_the_rules_pass():
    result = subprocess.run(
        [PROMTOOL, "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_incident_alerts_exist_on_their_metrics():
    by_name = {rule["alert"]: rule for rule in alerts()}
    for name, metric in REQUIRED.items():
        assert name in by_name, f"missing alert {name}"
        assert re.search(rf"\b{metric}\b", by_name[name]["expr"]), (name, metric)
    spike = by_name["SendguardSendRateSpike"]["expr"]
    assert "offset" in spike and "by (namespace, job, account)" in spike, (
        "per account, against that account's own earlier rate"
    )


def test_alerts_use_only_metrics_sendguard_exports():
    exported = exported_metric_names()
    for rule in alerts():
        used = set(re.findall(r"\bsendguard_[a-z0-9_]+", rule["expr"]))
        assert used, rule["alert"]
        assert used <= exported, f"{rule['alert']}: not exported: {sorted(used - exported)}"


def test_every_alert_has_severity_summary_and_a_runbook_entry():
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        url = annotations["runbook_url"]
        assert url == f"{RUNBOOK}alert-{name.lower()}", url
        assert f'<a id="alert-{name.lower()}"></a>' in README, f"no README runbook for {name}"


def test_every_alert_has_a_promtool_test_that_fires_it():
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    names = {rule["alert"] for rule in alerts()}
    assert names <= fired, f"never shown firing: {sorted(names - fired)}"
    assert names <= quiet, f"never shown quiet: {sorted(names - quiet)}"
