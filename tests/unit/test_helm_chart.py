"""The Helm chart, rendered by real Helm and checked against Kubernetes' own schemas.

helm-python-sdk binds Helm's Go library (no helm binary, no cluster, no network): every scenario
below is rendered and linted by Helm, with values.schema.json enforced, and every manifest is
validated by kubernetes-validate in strict mode (unknown fields are errors) against the oldest
Kubernetes the scenario supports and the newest the package knows. Then the properties a
reviewer looks for are asserted on the parsed manifests: probes on the admin port, the locked-down
security context, config and secrets actually reaching the container (and accepted by
sendguard's own settings loader), the sidecar inside the example app's pod, and the optional
pieces appearing only when switched on. Production-safe defaults (issue 15): the embedded store
and the trial Redis persist to volume claims, the egress policy opens the store's Redis port,
the schema refuses malformed limits and durations, and the PrometheusRule ships the promtool-
tested alert rules verbatim.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from proxy.metrics import Metrics
from proxy.settings import Settings, load_settings
from tests.environ import clear_sendguard_env
from tests.identities import ACCOUNT
from tests.paths import REPO_ROOT

CHART = REPO_ROOT / "helm" / "sendguard"
EXAMPLE = REPO_ROOT / "helm" / "examples" / "app"
RULES = CHART / "alerts" / "sendguard-rules.yaml"
SIDECAR_SHARED_REDIS = yaml.safe_load(
    (CHART / "examples" / "sidecar-shared-redis.yaml").read_text()
)
RELEASE = "demo"
NAMESPACE = "sends"
NEWEST = kubernetes_validate.latest_version()
EXISTING_SECRET_VALUES = {
    "redis-url": "rediss://:pw@redis.shared.svc:6380/0",
    "admin-token": "a" * 32,
    "twilio-auth-tokens": f"{ACCOUNT}={'t' * 32}",
    "callback-secret": "c" * 32,
}
SECRET_SETTINGS = {"admin_token", "twilio_auth_tokens", "callback_secret", "redis_url"}
# Settings the chart derives from its own values rather than from `config:`.
CHART_OWNED_SETTINGS = {"listen", "admin_listen", "kill_switch", "shutdown_grace", "redis_cluster"}
# The metric names sendguard exports (SPEC §5), for the dashboard.
METRICS = {
    "sendguard_requests_total",
    "sendguard_upstream_latency_seconds",
    "sendguard_dedup_hits_total",
    "sendguard_records_unknown_total",
    "sendguard_breaker_trips_total",
    "sendguard_would_block_total",
    "sendguard_suppressions_learned_total",
    "sendguard_upstream_429_retries_total",
    "sendguard_kill_switch_engaged",
    "sendguard_store_errors_total",
    "sendguard_store_mode",
    "sendguard_sends_total",
    "sendguard_unguarded_sends_total",
    "sendguard_store_up",
    "sendguard_pending_outcome_writes",
    "sendguard_client_connections",
    "sendguard_client_connections_refused_total",
    "sendguard_client_connections_evicted_total",
    "sendguard_client_timeouts_total",
}

FULL_STANDALONE = {
    "replicaCount": 3,
    "image": {"repository": "registry.example/sendguard", "tag": "0.1.0"},
    "redis": {"mode": "external", "url": "rediss://:s3cret@redis.example:6379/0"},
    "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 8},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "networkPolicy": {"enabled": True, "egress": {"restrict": True}},
    "dashboard": {"enabled": True},
    "secrets": {
        "adminToken": "admin-token-value",
        "twilioAuthTokens": {ACCOUNT: "twilio-token-value"},
        "callbackSecret": "a-callback-secret-of-32-bytes-xx",
    },
    "killSwitch": ["global", f"account:{ACCOUNT}"],
    "config": {
        "upstream": "https://api.twilio.com",
        "upstream_allowed_hosts": ["*.twilio.com", "api.example.com"],
        "public_url": "https://sendguard.example.com",
        "upstream_read_timeout": "45s",
        "upstream_pool_size": 50,
        "max_body_bytes": 2097152,
        "dedup_window": 900,
        "recipient_limits": "3/min,10/h",
        "recipient_limits_mode": "report",
        "guarded_routes": [
            {"name": "messages", "path": "/2010-04-01/Accounts/{AccountSid}/Messages.json"},
            {
                "name": "calls",
                "method": "POST",
                "path": "/2010-04-01/Accounts/{AccountSid}/Calls.json",
            },
        ],
        "on_store_error": "closed",
        "log_level": "warning",
    },
}

SIDECAR = {
    "mode": "sidecar",
    "existingSecret": "app-sendguard",
    "redis": {"mode": "external"},
    "metrics": {"podMonitor": {"enabled": True, "selector": {"matchLabels": {"app": "shop"}}}},
}


@dataclass(frozen=True)
class Scenario:
    chart: str  # "sendguard" or "example"
    values: dict[str, Any]
    oldest: str  # the oldest Kubernetes these manifests must validate against


SCENARIOS = {
    "default": Scenario("sendguard", {}, "1.25.0"),
    "standalone": Scenario("sendguard", FULL_STANDALONE, "1.25.0"),
    "bundled-redis": Scenario(
        "sendguard",
        {"redis": {"mode": "bundled"}, "replicaCount": 2, "networkPolicy": {"enabled": True}},
        "1.25.0",
    ),
    "sidecar": Scenario("sendguard", SIDECAR, "1.25.0"),
    "sidecar-shared-redis": Scenario("sendguard", SIDECAR_SHARED_REDIS, "1.25.0"),
    "example-sidecar-shared-redis": Scenario(
        "example", {"sendguard": SIDECAR_SHARED_REDIS}, "1.29.0"
    ),
    "standalone-alerts-external-redis-policy": Scenario(
        "sendguard",
        {
            "redis": {"mode": "external", "url": "redis://redis.example:6380/0"},
            "networkPolicy": {"enabled": True, "egress": {"restrict": True}},
            "metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "prom"}}},
        },
        "1.25.0",
    ),
    "example-native-sidecar": Scenario("example", {}, "1.29.0"),
    "example-classic-sidecar": Scenario(
        "example",
        {"sendguard": {"nativeSidecar": False, "networkPolicy": {"enabled": True}}},
        "1.25.0",
    ),
}


# --- rendering --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def charts(tmp_path_factory) -> Iterator[dict[str, tuple[Path, helm.Chart]]]:
    """Both charts, loaded; the example's file:// dependency resolved as `helm dep update` does."""
    workdir = tmp_path_factory.mktemp("helm")
    shutil.copytree(REPO_ROOT / "helm", workdir / "helm", ignore=shutil.ignore_patterns("charts"))
    example = workdir / "helm" / "examples" / "app"
    helm.dependency_update(example)
    loaded = {
        "sendguard": (CHART, helm.Chart.load(CHART)),
        "example": (example, helm.Chart.load(example)),
    }
    yield loaded
    for _, chart in loaded.values():
        chart.close()


def render_raw(charts, chart: str, values: dict[str, Any] | None = None) -> dict[str, str]:
    return charts[chart][1].render(values=values or {}, name=RELEASE, namespace=NAMESPACE)


def render(charts, chart: str, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    manifests = []
    for path, text in sorted(render_raw(charts, chart, values).items()):
        if path.endswith(".yaml"):
            manifests += [doc for doc in yaml.safe_load_all(text) if doc]
    return manifests


def of_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in manifests if doc["kind"] == kind]


def one(manifests: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [doc for doc in of_kind(manifests, kind) if name in (None, doc["metadata"]["name"])]
    assert len(found) == 1, (
        f"{len(found)} {kind} named {name}: {[d['metadata']['name'] for d in found]}"
    )
    return found[0]


def kinds(manifests: list[dict[str, Any]]) -> set[str]:
    return {doc["kind"] for doc in manifests}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def sendguard_container(spec: dict[str, Any]) -> dict[str, Any]:
    found = [
        c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "sendguard"
    ]
    assert len(found) == 1
    return found[0]


def effective_env(container: dict[str, Any], manifests: list[dict[str, Any]]) -> dict[str, str]:
    """The env the container would see, resolving its ConfigMap and the chart's Secret."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        config_map = one(manifests, "ConfigMap", source["configMapRef"]["name"])
        env.update(config_map["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        rendered = [s for s in of_kind(manifests, "Secret") if s["metadata"]["name"] == ref["name"]]
        if not rendered:  # an existingSecret the cluster holds: stand-in values
            env[item["name"]] = EXISTING_SECRET_VALUES[ref["key"]]
            continue
        (secret,) = rendered
        env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return env


# --- every scenario: Helm lint, Kubernetes schemas --------------------------------------------


def validate_all(manifests: list[dict[str, Any]], oldest: str) -> None:
    for doc in manifests:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            # Prometheus Operator CRDs: kubernetes-validate ships only the built-in kinds.
            assert doc["kind"] in {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
            assert doc["metadata"]["name"]
            assert doc["spec"]["groups" if doc["kind"] == "PrometheusRule" else "selector"]
            continue
        for version in (oldest, NEWEST):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(part) for part in exc.path)
                pytest.fail(
                    f"{doc['kind']}/{doc['metadata']['name']} on {version}: {where}: {exc.message}"
                )


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_renders_lints_and_validates_strictly(charts, name):
    scenario = SCENARIOS[name]
    manifests = render(charts, scenario.chart, scenario.values)
    assert manifests
    validate_all(manifests, scenario.oldest)
    path = charts[scenario.chart][0]
    report = helm.lint(path, scenario.values, strict=True, namespace=NAMESPACE, with_subcharts=True)
    assert report["errors"] == []
    # Severity 2 = warning, 3 = error. (Info, e.g. "icon is recommended", is fine.)
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
    names = [(doc["kind"], doc["metadata"]["name"]) for doc in manifests]
    assert len(names) == len(set(names)), "two objects of one kind share a name"


def test_default_values_render_one_standalone_replica_with_the_embedded_store(charts):
    manifests = render(charts, "sendguard")
    assert kinds(manifests) == {
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
    }
    deployment = one(manifests, "Deployment")
    assert deployment["metadata"]["name"] == f"{RELEASE}-sendguard"
    assert deployment["spec"]["replicas"] == 1
    # One process owns the embedded store: a rollout never runs two side by side.
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = sendguard_container(pod_spec(deployment))
    assert container["image"] == f"sendguard:{charts['sendguard'][1].metadata['appVersion']}"
    assert container["args"] == ["serve"]
    env = effective_env(container, manifests)
    assert "SENDGUARD_REDIS_URL" not in env
    assert "SENDGUARD_KILL_SWITCH" not in env


def test_the_embedded_store_persists_to_a_kept_volume_claim(charts, monkeypatch):
    """A rollout must not forget records, learned suppressions and API kill switches."""
    manifests = render(charts, "sendguard")
    spec = pod_spec(one(manifests, "Deployment"))
    container = sendguard_container(spec)
    env = effective_env(container, manifests)
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "sendguard-data"]
    assert env["SENDGUARD_DATA_DIR"] == mount["mountPath"] == "/var/lib/sendguard"
    (volume,) = [v for v in spec["volumes"] if v["name"] == "sendguard-data"]
    claim = one(manifests, "PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert str(settings_from(env, monkeypatch).data_dir) == "/var/lib/sendguard"
    # An existing claim is mounted, not created; persistence off: memory only.
    existing = render(charts, "sendguard", {"persistence": {"existingClaim": "sg-data"}})
    assert "PersistentVolumeClaim" not in kinds(existing)
    (volume,) = [
        v for v in pod_spec(one(existing, "Deployment"))["volumes"] if v["name"] == "sendguard-data"
    ]
    assert volume["persistentVolumeClaim"]["claimName"] == "sg-data"
    off = render(charts, "sendguard", {"persistence": {"enabled": False}})
    assert "PersistentVolumeClaim" not in kinds(off)
    off_env = effective_env(sendguard_container(pod_spec(one(off, "Deployment"))), off)
    assert "SENDGUARD_DATA_DIR" not in off_env
    # A shared store needs no volume, nor does a sidecar (its pods are the app's).
    for values in (FULL_STANDALONE, SIDECAR):
        assert "PersistentVolumeClaim" not in kinds(render(charts, "sendguard", values))
    example = render(charts, "example", {"sendguard": SIDECAR_SHARED_REDIS})
    app = sendguard_container(pod_spec(one(example, "Deployment", f"{RELEASE}-app")))
    assert "SENDGUARD_DATA_DIR" not in effective_env(app, example)


def test_chart_app_version_is_the_package_version(charts):
    version = re.search(r'^version = "([^"]+)"', (REPO_ROOT / "pyproject.toml").read_text(), re.M)
    assert version and charts["sendguard"][1].metadata["appVersion"] == version.group(1)


# --- probes, security, shutdown ---------------------------------------------------------------


def sendguard_pods(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        pod_spec(doc)
        for doc in of_kind(manifests, "Deployment")
        if any(
            c["name"] == "sendguard"
            for c in pod_spec(doc).get("initContainers", []) + pod_spec(doc)["containers"]
        )
    ]


def the_sendguard_pod(manifests: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod spec of a scenario with one sendguard pod, and its sendguard container."""
    (spec,) = sendguard_pods(manifests)
    return spec, sendguard_container(spec)


def render_scenario(charts, name: str) -> list[dict[str, Any]]:
    scenario = SCENARIOS[name]
    return render(charts, scenario.chart, scenario.values)


# The scenarios that run exactly one sendguard pod.
ONE_POD = pytest.mark.parametrize(
    "name", ["default", "standalone", "example-native-sidecar", "example-classic-sidecar"]
)


@ONE_POD
def test_probes_ask_the_admin_port(charts, name):
    manifests = render_scenario(charts, name)
    _, container = the_sendguard_pod(manifests)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    env = effective_env(container, manifests)
    admin_port = int(env["SENDGUARD_ADMIN_LISTEN"].rpartition(":")[2])
    assert env["SENDGUARD_ADMIN_LISTEN"].startswith("0.0.0.0:"), "the kubelet probes the pod IP"
    assert ports["sg-admin"] == admin_port == 8081
    assert ports["sg-proxy"] == int(env["SENDGUARD_LISTEN"].rpartition(":")[2]) == 8080
    expected = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe, path in expected.items():
        assert container[probe]["httpGet"] == {"path": path, "port": "sg-admin"}, probe


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_pod_is_locked_down(charts, name):
    manifests = render_scenario(charts, name)
    for workload in of_kind(manifests, "Deployment"):
        spec = pod_spec(workload)
        pod = spec.get("securityContext", {})
        assert spec["automountServiceAccountToken"] is False
        for container in spec.get("initContainers", []) + spec["containers"]:
            context = container["securityContext"]
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert context.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            seccomp = context.get("seccompProfile", pod.get("seccompProfile"))
            assert seccomp == {"type": "RuntimeDefault"}, where
            assert "limits" in container["resources"] and "requests" in container["resources"], (
                where
            )
    for spec in sendguard_pods(manifests):
        container = sendguard_container(spec)
        # Container level, so that it holds inside any app's pod too.
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == 10001
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        # The embedded store's socket needs a writable /tmp on a read-only root.
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert "emptyDir" in volume


@ONE_POD
def test_the_pod_outlives_sendguards_shutdown_grace(charts, name):
    manifests = render_scenario(charts, name)
    spec, container = the_sendguard_pod(manifests)
    grace = int(effective_env(container, manifests)["SENDGUARD_SHUTDOWN_GRACE"])
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert spec["terminationGracePeriodSeconds"] > grace + sleep


def test_a_too_short_termination_grace_is_refused(charts):
    with pytest.raises(helm.HelmRenderError, match="terminationGracePeriodSeconds"):
        render(charts, "sendguard", {"terminationGracePeriodSeconds": 25})
    manifests = render(
        charts, "sendguard", {"shutdownGraceSeconds": 50, "terminationGracePeriodSeconds": 70}
    )
    assert pod_spec(one(manifests, "Deployment"))["terminationGracePeriodSeconds"] == 70


# --- config and secrets -----------------------------------------------------------------------


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    clear_sendguard_env(monkeypatch)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings(None)


def test_config_and_secrets_reach_the_container(charts, monkeypatch):
    manifests = render(charts, "sendguard", FULL_STANDALONE)
    deployment = one(manifests, "Deployment")
    container = sendguard_container(pod_spec(deployment))
    env = effective_env(container, manifests)
    assert env["SENDGUARD_KILL_SWITCH"] == f"global,account:{ACCOUNT}"
    assert env["SENDGUARD_ON_STORE_ERROR"] == "closed"
    assert env["SENDGUARD_MAX_BODY_BYTES"] == "2097152", "no float exponent for big numbers"
    assert env["SENDGUARD_UPSTREAM_ALLOWED_HOSTS"] == "*.twilio.com,api.example.com"
    # Secrets come from the Secret, never the ConfigMap.
    config_map = one(manifests, "ConfigMap", f"{RELEASE}-sendguard")
    secret = one(manifests, "Secret", f"{RELEASE}-sendguard")
    secret_env = {item["name"] for item in container["env"]}
    assert secret_env == {
        "SENDGUARD_ADMIN_TOKEN",
        "SENDGUARD_TWILIO_AUTH_TOKENS",
        "SENDGUARD_CALLBACK_SECRET",
        "SENDGUARD_REDIS_URL",
    }
    assert not secret_env & set(config_map["data"])
    assert "s3cret" not in json.dumps(config_map) and "admin-token-value" not in json.dumps(
        config_map
    )
    assert env["SENDGUARD_TWILIO_AUTH_TOKENS"] == f"{ACCOUNT}=twilio-token-value"
    assert secret["type"] == "Opaque"
    # sendguard's own loader accepts what the chart renders, value by value.
    settings = settings_from(env, monkeypatch)
    assert str(settings.kill_switch) == f"global,account:{ACCOUNT}"
    assert settings.redis_url == "rediss://:s3cret@redis.example:6379/0"
    assert (
        settings.admin_token is not None
        and settings.admin_token.get_secret_value() == "admin-token-value"
    )
    assert settings.twilio_auth_tokens[ACCOUNT].get_secret_value() == "twilio-token-value"
    assert settings.on_store_error == "closed" and settings.log_level == "warning"
    assert settings.max_body_bytes == 2097152 and settings.dedup_window == 900
    assert settings.upstream_read_timeout == 45 and settings.upstream_pool_size == 50
    assert settings.recipient_limits_mode == "report"
    assert [route.name for route in settings.guarded_routes] == ["messages", "calls"]
    assert str(settings.listen) == "0.0.0.0:8080" and settings.shutdown_grace == 25
    # A change of config or secret rolls the pods.
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert {"checksum/sendguard-config", "checksum/sendguard-secret"} <= set(annotations)


@pytest.mark.parametrize("name", SCENARIOS)
def test_sendguard_accepts_every_scenarios_config(charts, name, monkeypatch):
    manifests = render_scenario(charts, name)
    for spec in sendguard_pods(manifests):
        container = sendguard_container(spec)
        settings_from(effective_env(container, manifests), monkeypatch)


def test_existing_secret_feeds_the_env_and_no_secret_is_rendered(charts):
    manifests = render(charts, "sendguard", SIDECAR)
    assert "Secret" not in kinds(manifests)
    example = render(charts, "example", {"sendguard": SIDECAR | {"metrics": {}}})
    container = sendguard_container(pod_spec(one(example, "Deployment", f"{RELEASE}-app")))
    refs = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in container["env"]}
    assert set(refs) == {
        "SENDGUARD_ADMIN_TOKEN",
        "SENDGUARD_TWILIO_AUTH_TOKENS",
        "SENDGUARD_CALLBACK_SECRET",
        "SENDGUARD_REDIS_URL",
    }
    assert {ref["name"] for ref in refs.values()} == {"app-sendguard"}
    assert refs["SENDGUARD_ADMIN_TOKEN"] == {
        "name": "app-sendguard",
        "key": "admin-token",
        "optional": True,
    }
    # redis.mode external: the URL must be there, or the pod does not start.
    assert refs["SENDGUARD_REDIS_URL"]["optional"] is False


def test_values_config_keys_are_sendguard_settings():
    schema = json.loads((CHART / "values.schema.json").read_text())
    keys = set(schema["properties"]["config"]["properties"])
    fields = set(Settings.model_fields)
    assert keys <= fields, f"not sendguard settings: {sorted(keys - fields)}"
    assert not keys & SECRET_SETTINGS, "secrets go through the Secret, not the ConfigMap"
    assert not keys & CHART_OWNED_SETTINGS
    # Every setting is reachable from values (config, a chart-owned value or a secret): a new
    # setting needs its key in values.schema.json's `config` properties.
    missing = fields - keys - SECRET_SETTINGS - CHART_OWNED_SETTINGS
    assert not missing, f"add to values.schema.json config properties: {sorted(missing)}"


# --- sidecar mode and the example app ---------------------------------------------------------


def test_sidecar_mode_renders_no_workload_of_its_own(charts):
    manifests = render(charts, "sendguard", SIDECAR)
    assert kinds(manifests) == {"ConfigMap", "PodMonitor"}
    env = one(manifests, "ConfigMap")["data"]
    assert env["SENDGUARD_LISTEN"] == "127.0.0.1:8080", "only the pod's own containers send"
    monitor = one(manifests, "PodMonitor")
    assert monitor["spec"]["selector"] == {"matchLabels": {"app": "shop"}}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "sg-admin"


def test_the_example_app_pod_runs_sendguard_as_a_native_sidecar(charts):
    manifests = render(charts, "example")
    app = one(manifests, "Deployment", f"{RELEASE}-app")
    spec = pod_spec(app)
    assert [c["name"] for c in spec["containers"]] == ["app"]
    first = spec["initContainers"][0]
    assert first["name"] == "sendguard", "first, so the app's own init containers can send"
    assert first["restartPolicy"] == "Always"
    assert "restartPolicy" not in spec["containers"][0]
    (app_container,) = spec["containers"]
    env = effective_env(first, manifests)
    assert {
        "name": "SENDGUARD_URL",
        "value": f"http://127.0.0.1:{env['SENDGUARD_LISTEN'].rpartition(':')[2]}",
    } in app_container["env"]
    # Shared store: every replica's sidecar uses the one the release renders.
    redis_service = one(manifests, "Service", f"{RELEASE}-sendguard-redis")
    assert env["SENDGUARD_REDIS_URL"] == f"redis://{redis_service['metadata']['name']}:6379/0"
    assert app["spec"]["replicas"] == 2
    annotations = app["spec"]["template"]["metadata"]["annotations"]
    assert {"checksum/sendguard-config", "checksum/sendguard-secret"} <= set(annotations)
    # The pod's grace covers the larger of the app's own drain and sendguard's.
    assert spec["terminationGracePeriodSeconds"] == max(30, 25 + 5 + 10)


def test_the_example_app_pod_can_run_a_classic_sidecar(charts):
    manifests = render(charts, "example", {"sendguard": {"nativeSidecar": False}})
    spec = pod_spec(one(manifests, "Deployment", f"{RELEASE}-app"))
    assert "initContainers" not in spec
    assert [c["name"] for c in spec["containers"]] == ["app", "sendguard"]
    assert "restartPolicy" not in spec["containers"][1]


def test_the_sidecar_template_refuses_standalone_values(charts):
    with pytest.raises(helm.HelmRenderError, match="mode: sidecar"):
        render(charts, "example", {"sendguard": {"mode": "standalone"}})


def test_a_kill_switch_in_values_reaches_the_sidecar_and_rolls_the_pods(charts):
    def rendered(scopes: list[str]) -> tuple[dict[str, str], dict[str, str]]:
        manifests = render(charts, "example", {"sendguard": {"killSwitch": scopes}})
        app = one(manifests, "Deployment", f"{RELEASE}-app")
        env = effective_env(sendguard_container(pod_spec(app)), manifests)
        return env, app["spec"]["template"]["metadata"]["annotations"]

    quiet_env, quiet = rendered([])
    engaged_env, engaged = rendered(["global", "prefix:+44"])
    assert "SENDGUARD_KILL_SWITCH" not in quiet_env
    assert engaged_env["SENDGUARD_KILL_SWITCH"] == "global,prefix:+44"
    assert quiet["checksum/sendguard-config"] != engaged["checksum/sendguard-config"]


# --- optional pieces --------------------------------------------------------------------------


def test_service_monitor_and_network_policy_appear_only_when_enabled(charts):
    plain = render(charts, "sendguard")
    assert not {"ServiceMonitor", "PodMonitor", "NetworkPolicy", "HorizontalPodAutoscaler"} & kinds(
        plain
    )
    full = render(charts, "sendguard", FULL_STANDALONE)
    service = one(full, "Service", f"{RELEASE}-sendguard")
    monitor = one(full, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    (admin_port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert admin_port["targetPort"] == "sg-admin" and endpoint["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    policy = one(full, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    ingress_ports = [rule["ports"][0]["port"] for rule in policy["spec"]["ingress"]]
    assert ingress_ports == ["sg-proxy", "sg-admin"]
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 443, 6379}, "DNS, Twilio and the port in redis.url"


@pytest.mark.parametrize(
    ("values", "ports"),
    [
        ({"redis": {"mode": "external", "url": "rediss://:pw@redis.example:6380/0"}}, {6380}),
        ({"redis": {"mode": "external", "url": "redis://redis.example/0"}}, {6379}),
        ({"redis": {"mode": "external"}, "existingSecret": "sg"}, {6379}),
        (
            {
                "redis": {
                    "mode": "external",
                    "url": "redis://a:7000,redis://b:7001",
                    "cluster": True,
                },
            },
            {7000, 7001},
        ),
        (
            {
                "redis": {"mode": "external", "url": "redis://r:6379/0"},
                "networkPolicy": {"egress": {"redisPorts": [26379, 6379]}},
            },
            {26379, 6379},
        ),
        ({"redis": {"mode": "bundled", "bundled": {"port": 6390}}}, {6390}),
    ],
)
def test_the_egress_policy_opens_the_configured_redis_port(charts, values, ports):
    policy_values = {"enabled": True, "egress": {"restrict": True}}
    policy_values["egress"].update(values.get("networkPolicy", {}).get("egress", {}))
    manifests = render(charts, "sendguard", {**values, "networkPolicy": policy_values})
    policy = one(manifests, "NetworkPolicy", f"{RELEASE}-sendguard")
    opened = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert opened - {53, 443} == ports


def test_autoscaling_owns_the_replica_count(charts):
    manifests = render(charts, "sendguard", FULL_STANDALONE)
    hpa = one(manifests, "HorizontalPodAutoscaler")
    deployment = one(manifests, "Deployment")
    assert "replicas" not in deployment["spec"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 8)
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = one(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_bundled_redis_is_one_persisted_node_that_never_evicts(charts):
    manifests = render(charts, "sendguard", SCENARIOS["bundled-redis"].values)
    redis = one(manifests, "Deployment", f"{RELEASE}-sendguard-redis")
    service = one(manifests, "Service", f"{RELEASE}-sendguard-redis")
    assert redis["spec"]["replicas"] == 1
    assert redis["spec"]["strategy"] == {"type": "Recreate"}, "one pod on the volume at a time"
    (container,) = pod_spec(redis)["containers"]
    args = container["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    # An append-only file on a claim that outlives the pod (and `helm uninstall`).
    assert args[args.index("--appendonly") + 1] == "yes"
    (mount,) = container["volumeMounts"]
    assert args[args.index("--dir") + 1] == mount["mountPath"]
    (volume,) = [v for v in pod_spec(redis)["volumes"] if v["name"] == mount["name"]]
    claim = one(manifests, "PersistentVolumeClaim", f"{RELEASE}-sendguard-redis-data")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert service["spec"]["selector"] == redis["spec"]["selector"]["matchLabels"]
    sendguard = one(manifests, "Deployment", f"{RELEASE}-sendguard")
    env = effective_env(sendguard_container(pod_spec(sendguard)), manifests)
    assert (
        env["SENDGUARD_REDIS_URL"]
        == f"redis://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/0"
    )
    # Only sendguard may reach it.
    policy = one(manifests, "NetworkPolicy", f"{RELEASE}-sendguard-redis")
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [
        {"podSelector": {"matchLabels": sendguard["spec"]["selector"]["matchLabels"]}}
    ]


def test_the_trial_redis_can_run_without_a_volume(charts):
    values = {"redis": {"mode": "bundled", "bundled": {"persistence": {"enabled": False}}}}
    manifests = render(charts, "sendguard", {**SCENARIOS["bundled-redis"].values, **values})
    assert "PersistentVolumeClaim" not in kinds(manifests)
    redis = one(manifests, "Deployment", f"{RELEASE}-sendguard-redis")
    args = pod_spec(redis)["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "no"
    assert "emptyDir" in pod_spec(redis)["volumes"][0]


def test_the_grafana_dashboard_charts_sendguards_metrics(charts):
    source = (CHART / "dashboards" / "sendguard.json").read_text()
    dashboard = json.loads(source)
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    used = set(re.findall(r"\bsendguard_[a-z0-9_]+", " ".join(exprs)))
    normalised = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    assert normalised <= METRICS, f"unknown metrics: {sorted(normalised - METRICS)}"
    assert normalised == METRICS, f"not charted: {sorted(METRICS - normalised)}"
    # ...and sendguard really exports each of them (names as Prometheus exposes them).
    exported = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in Metrics().registry.collect()
    }
    assert normalised <= exported, f"charted but not exported: {sorted(normalised - exported)}"
    assert {var["name"] for var in dashboard["templating"]["list"]} >= {"datasource"}
    assert all(
        panel["datasource"]["uid"] == "${datasource}"
        for panel in dashboard["panels"]
        if panel["type"] != "row"
    )
    assert not [
        d for d in render(charts, "sendguard") if d["metadata"]["name"].endswith("-dashboard")
    ]
    manifests = render(charts, "sendguard", {"dashboard": {"enabled": True}})
    config_map = one(manifests, "ConfigMap", f"{RELEASE}-sendguard-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["sendguard.json"]) == dashboard


def test_the_prometheus_rule_ships_the_alert_rules_verbatim(charts):
    assert "PrometheusRule" not in kinds(render(charts, "sendguard"))
    values = {"metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "prom"}}}}
    rule = one(render(charts, "sendguard", values), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    # Sidecar mode too: the app chart's release carries the rules.
    example = render(charts, "example", {"sendguard": SIDECAR_SHARED_REDIS})
    assert one(example, "PrometheusRule")["spec"]["groups"] == rule["spec"]["groups"]


def test_the_sidecar_with_shared_redis_example(charts, monkeypatch):
    """helm/sendguard/examples/sidecar-shared-redis.yaml under an app chart's `sendguard:`."""
    manifests = render(charts, "example", {"sendguard": SIDECAR_SHARED_REDIS})
    assert not [d for d in manifests if d["metadata"]["name"].endswith("-redis")], "no trial Redis"
    assert "PersistentVolumeClaim" not in kinds(manifests)
    assert {"PodMonitor", "PrometheusRule"} <= kinds(manifests)
    app = one(manifests, "Deployment", f"{RELEASE}-app")
    container = sendguard_container(pod_spec(app))
    refs = {i["name"]: i["valueFrom"]["secretKeyRef"] for i in container.get("env", [])}
    assert refs["SENDGUARD_REDIS_URL"] == {
        "name": "shop-sendguard",
        "key": "redis-url",
        "optional": False,
    }
    settings = settings_from(effective_env(container, manifests), monkeypatch)
    assert settings.redis_url == EXISTING_SECRET_VALUES["redis-url"]
    assert settings.on_store_error == "closed" and settings.ready_requires_store is False
    assert settings.data_dir is None
    assert str(settings.listen) == "127.0.0.1:8080", "only the app's own containers send through it"


# --- values.schema.json and render-time checks ------------------------------------------------


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"mode": "sidecars"}, "/mode"),
        ({"nativeSidecar": "yes"}, "/nativeSidecar"),
        ({"replicaCount": -1}, "/replicaCount"),
        ({"killSwitch": ["everything"]}, "/killSwitch/0"),
        ({"killSwitch": "global"}, "/killSwitch"),
        ({"config": {"on_store_error": "maybe"}}, "/config/on_store_error"),
        ({"config": {"dedup_window": "ten minutes"}}, "/config/dedup_window"),
        ({"config": {"recipient_limits": "banana"}}, "/config/recipient_limits"),
        ({"config": {"recipient_limits": "0/min"}}, "/config/recipient_limits"),
        ({"config": {"account_limits": "1000/fortnight"}}, "/config/account_limits"),
        ({"config": {"suppressions": "21610=forever"}}, "/config/suppressions"),
        ({"config": {"suppressions": "21610=sender"}}, "/config/suppressions"),
        ({"config": {"client_header_timeout": "soon"}}, "/config/client_header_timeout"),
        ({"config": {"client_body_timeout": -1}}, "/config/client_body_timeout"),
        ({"config": {"max_connections": 0}}, "/config/max_connections"),
        ({"config": {"breaker_cooldown": "1 minute"}}, "/config/breaker_cooldown"),
        ({"config": {"data_dir": "relative/dir"}}, "/config/data_dir"),
        (
            {"config": {"guarded_routes": [{"name": "sms", "path": "/Messages.json"}]}},
            "/config/guarded_routes/0/path",
        ),
        ({"persistence": {"size": "lots"}}, "/persistence/size"),
        ({"persistence": {"accessModes": ["ReadWriteSometimes"]}}, "/persistence/accessModes/0"),
        (
            {"redis": {"mode": "bundled", "bundled": {"persistence": {"size": "1 GB"}}}},
            "/redis/bundled/persistence/size",
        ),
        ({"networkPolicy": {"egress": {"redisPorts": [0]}}}, "/networkPolicy/egress/redisPorts/0"),
        ({"metrics": {"prometheusRule": {"enabled": "yes"}}}, "/metrics/prometheusRule/enabled"),
        ({"config": {"admin_token": "in the ConfigMap"}}, "/config"),
        ({"config": {"upstream": "https://api.twilio.com/2010-04-01"}}, "/config/upstream"),
        (
            {"secrets": {"twilioAuthTokens": {"not-an-account": "token"}}},
            "/secrets/twilioAuthTokens",
        ),
        ({"secrets": {"callbackSecret": "short"}}, "/secrets/callbackSecret"),
        ({"redis": {"mode": "external", "url": "http://redis:6379"}}, "/redis/url"),
        ({"redis": {"mode": "cluster"}}, "/redis/mode"),
        ({"securityContext": {"runAsNonRoot": False}}, "/securityContext/runAsNonRoot"),
        ({"ports": {"proxy": 70000, "admin": 8081}}, "/ports/proxy"),
        ({"replicas": 2}, ""),
    ],
)
def test_the_schema_rejects_bad_values(charts, values, where):
    chart = charts["sendguard"][1]
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(chart.merge_values(values))
    assert f"at '{where}'" in str(caught.value)
    with pytest.raises(helm.HelmValuesError):
        render(charts, "sendguard", values)
    # Through the example app too: the dependency's schema guards the app's `sendguard:` values.
    with pytest.raises(helm.HelmValuesError, match="sendguard"):
        render(charts, "example", {"sendguard": values})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 2}, "more than one replica needs a shared store"),
        ({"autoscaling": {"enabled": True}}, "more than one replica needs a shared store"),
        ({"redis": {"mode": "external"}}, "needs redis.url"),
        ({"redis": {"mode": "embedded", "url": "redis://r:6379"}}, "redis.mode is not external"),
        ({"mode": "sidecar", "metrics": {"podMonitor": {"enabled": True}}}, "podMonitor.selector"),
    ],
)
def test_inconsistent_values_fail_the_render(charts, values, message):
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(charts, "sendguard", values)
