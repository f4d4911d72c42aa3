"""The `sendguard` CLI: generated setting flags, check-config, and config errors (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from proxy import __version__, cli
from proxy.cli import serve as serve_module
from proxy.settings import Settings
from tests.environ import clear_sendguard_env, env_without_sendguard
from tests.paths import REPO_ROOT


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stray SENDGUARD_* variable in the developer's shell must not leak into these tests."""
    clear_sendguard_env(monkeypatch)


def run(*args: str) -> Result:
    return CliRunner().invoke(cli.cli, list(args))


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"sendguard, version {__version__}"


def test_check_config_ok() -> None:
    result = run("check-config")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == "configuration OK"
    assert 'listen = "127.0.0.1:8080"' in result.stdout.splitlines()
    assert "redis_url = (unset)" in result.stdout.splitlines()


def test_check_config_json_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDGUARD_ADMIN_TOKEN", "admin-sekrit")
    result = run("check-config", "--json")
    assert result.exit_code == 0, result.output
    values = json.loads(result.stdout)  # stdout is pure JSON
    assert values["admin_token"] == "***"
    assert "admin-sekrit" not in result.output


def test_check_config_bad_file_key_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('listen = "0.0.0.0:8080"\nbogus_key = 1\n')
    result = run("check-config", "--config", str(config))
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [  # one problem, one line
        f"sendguard: invalid configuration: bogus_key: unknown setting (from {config})",
    ]
    assert result.stdout == ""


def test_check_config_reports_every_bad_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDGUARD_DEDUP_WINDOW", "ten minutes")
    result = run("check-config", "--listen", "nowhere")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "sendguard: invalid configuration:",
        "  listen: invalid address 'nowhere' (use host:port, e.g. 127.0.0.1:8080) (from --listen)",
        "  dedup_window: invalid duration 'ten minutes' (use 30s, 10m, 24h or seconds)"
        " (from env SENDGUARD_DEDUP_WINDOW)",
    ]


def test_config_file_from_env_missing_exits_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SENDGUARD_CONFIG", str(tmp_path / "missing.toml"))
    result = run("check-config")
    assert result.exit_code == 2
    assert "config file (--config / SENDGUARD_CONFIG): no such file" in result.stderr


def test_flags_override_env_and_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "sendguard.toml"
    config.write_text('listen = "0.0.0.0:1"\ndedup_window = "1m"\nredis_cluster = true\n')
    monkeypatch.setenv("SENDGUARD_DEDUP_WINDOW", "2m")
    result = run(
        "check-config",
        "--json",
        "--config",
        str(config),
        "--listen",
        "0.0.0.0:3",
        "--no-redis-cluster",
        "--upstream-allowed-hosts",
        "*.twilio.com,api.example.com",
        "--guarded-routes",
        '[{"name": "sms", "path": "/2010-04-01/Accounts/{AccountSid}/Messages.json"}]',
    )
    assert result.exit_code == 0, result.output
    values = json.loads(result.stdout)
    assert values["listen"] == "0.0.0.0:3"  # flag > file
    assert values["dedup_window"] == 120.0  # env > file (no flag given)
    assert values["redis_cluster"] is False  # --no-redis-cluster > file
    assert values["upstream_allowed_hosts"] == ["*.twilio.com", "api.example.com"]
    assert [route["name"] for route in values["guarded_routes"]] == ["sms"]


def test_every_setting_has_a_flag() -> None:
    for command in (serve_module.serve, serve_module.check_config):
        names = {param.name for param in command.params}
        assert set(Settings.model_fields) | {"config"} <= names


def test_help_shows_parsed_defaults_as_written() -> None:
    text = " ".join(run("serve", "--help").stdout.split())  # click wraps the help lines
    assert "SENDGUARD_LISTEN; default: 127.0.0.1:8080]" in text
    assert "SENDGUARD_RECIPIENT_LIMITS; default: 5/min,20/h,50/day]" in text
    assert "SENDGUARD_ACCOUNT_LIMITS; default: off]" in text
    assert "SENDGUARD_KILL_SWITCH]" in text  # unset by default: no default shown


def test_serve_with_invalid_flag_exits_2_before_importing_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_import(name: str) -> types.ModuleType:
        raise AssertionError(f"imported {name} despite an invalid configuration")

    monkeypatch.setattr(serve_module, "importlib", types.SimpleNamespace(import_module=no_import))
    result = run("serve", "--upstream-pool-size", "zero")
    assert result.exit_code == 2
    assert "upstream_pool_size" in result.stderr


def test_serve_passes_settings_and_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[Settings] = []

    def fake_serve(settings: Settings) -> int:
        received.append(settings)
        return 3

    def fake_import(name: str) -> Any:
        assert name == "proxy.server.run"
        return types.SimpleNamespace(serve=fake_serve)

    monkeypatch.setattr(serve_module, "importlib", types.SimpleNamespace(import_module=fake_import))
    result = run("serve", "--listen", "127.0.0.1:0", "--upstream", "sandbox")
    assert result.exit_code == 3
    assert [(s.listen.port, s.upstream) for s in received] == [(0, "sandbox")]


def test_python_dash_m_proxy_help() -> None:
    env = env_without_sendguard()
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--help"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: sendguard")
    assert "serve" in result.stdout
    assert "check-config" in result.stdout
