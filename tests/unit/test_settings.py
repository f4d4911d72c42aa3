"""Settings: precedence, value forms, and errors that name the bad key."""

from __future__ import annotations

import io
import json
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.guard.protection import GuardMode, LimitWindow
from proxy.guard.suppression import DEFAULT_RULES, SuppressionRule
from proxy.settings import (
    ConfigError,
    GuardedRoute,
    Settings,
    load_settings,
    parse_duration,
    parse_recipient_limits,
    parse_size,
)
from proxy.settings_fields import Address, SendLimits, SuppressionRules
from tests.environ import clear_sendguard_env
from tests.identities import ACCOUNT as SID_B
from tests.paths import REPO_ROOT

SID_A = "AC" + "a" * 32


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stray SENDGUARD_* variable in the developer's shell must not leak into these tests."""
    clear_sendguard_env(monkeypatch)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sendguard.toml"
    path.write_text(text)
    return path


def config_error(**kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)
    return info.value


def problem_keys(error: ConfigError) -> list[str]:
    return [key for key, _ in error.problems]


# -- precedence ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "env", "file", "expected"),
    [
        (None, None, None, 600.0),  # default
        (None, None, "1m", 60.0),  # file beats default
        (None, "2m", "1m", 120.0),  # env beats file
        (None, "2m", None, 120.0),
        ("3m", "2m", "1m", 180.0),  # flag beats env
        ("3m", None, "1m", 180.0),
        ("3m", None, None, 180.0),
    ],
)
def test_precedence_flag_env_file_default(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    flag: str | None,
    env: str | None,
    file: str | None,
    expected: float,
) -> None:
    config = write_toml(tmp_path, f'dedup_window = "{file}"\n' if file else "")
    if env is not None:
        monkeypatch.setenv("SENDGUARD_DEDUP_WINDOW", env)
    settings = load_settings(config, dedup_window=flag)
    assert settings.dedup_window == expected
    assert settings.idempotency_ttl == 86400.0  # untouched settings keep their default


def test_config_file_from_env_and_explicit_path_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from_env = tmp_path / "env.toml"
    from_env.write_text('listen = "0.0.0.0:1"\n')
    explicit = tmp_path / "explicit.toml"
    explicit.write_text('listen = "0.0.0.0:2"\n')
    monkeypatch.setenv("SENDGUARD_CONFIG", str(from_env))
    assert load_settings().listen.port == 1
    assert load_settings(explicit).listen.port == 2


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    error = config_error(config_file=tmp_path / "nope.toml")
    assert problem_keys(error) == ["config"]
    assert "no such file" in str(error)


def test_invalid_toml_is_an_error(tmp_path: Path) -> None:
    error = config_error(config_file=write_toml(tmp_path, "listen = \n"))
    assert problem_keys(error) == ["config"]
    assert "invalid TOML" in str(error)


def test_no_config_file_means_defaults() -> None:
    assert load_settings() == Settings()


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.listen = "0.0.0.0:1"  # type: ignore[misc]


# -- errors name the key --------------------------------------------------------------------


def test_unknown_file_key_is_named(tmp_path: Path) -> None:
    error = config_error(config_file=write_toml(tmp_path, 'dedup_windw = "1m"\n'))
    assert error.problems == [
        (
            "dedup_windw",
            f"unknown setting (did you mean dedup_window?) (from {tmp_path}/sendguard.toml)",
        )
    ]


def test_bad_value_names_key_reason_and_source(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SENDGUARD_DEDUP_WINDOW", "ten minutes")
    config = write_toml(tmp_path, 'on_store_error = "maybe"\nlisten = "0.0.0.0:1"\n')
    error = config_error(config_file=config, upstream_pool_size="0", listen="nope")
    problems = dict(error.problems)
    assert problems["dedup_window"] == (
        "invalid duration 'ten minutes' (use 30s, 10m, 24h or seconds) "
        "(from env SENDGUARD_DEDUP_WINDOW)"
    )
    assert problems["on_store_error"].endswith(f"(from {config})")
    assert "'local', 'closed' or 'open'" in problems["on_store_error"]
    assert problems["upstream_pool_size"].endswith("(from --upstream-pool-size)")
    assert problems["listen"].startswith("invalid address 'nope'")
    assert str(error).count("\n") == len(error.problems) - 1  # one line per bad key


def test_unknown_override_is_an_error() -> None:
    assert problem_keys(config_error(bogus="1")) == ["bogus"]


# -- durations and sizes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("10m", 600.0),
        ("24h", 86400.0),
        ("1d", 86400.0),
        ("250ms", 0.25),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        (".5s", 0.5),
        ("90", 90.0),
        (" 10m ", 600.0),
        ("0", 0.0),
        (90, 90.0),
        (1.5, 1.5),
    ],
)
def test_parse_duration_valid(value: str | int | float, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        "ten minutes",
        "",
        "m",
        "10x",
        "10 m",
        "10m-",
        "-5",
        "-5s",
        "1e3",
        "\u0661\u0660s",  # Arabic-Indic digits: only ASCII digits count
        "nan",
        "inf",
        -1,
        float("nan"),
        float("inf"),
        10**400,
        True,
    ],
)
def test_parse_duration_invalid(value: Any) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


@pytest.mark.parametrize("parse", [parse_duration, parse_size])
@given(text=st.text())
def test_parse_only_raises_value_error(parse: Callable[[str], float], text: str) -> None:
    try:
        parsed = parse(text)
    except ValueError:
        return
    assert parsed >= 0


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("1048576", 1048576),
        (2048, 2048),
        ("1MiB", 1048576),
        ("512KiB", 524288),
        ("512kib", 524288),
        ("2MB", 2_000_000),
        ("2 mb", 2_000_000),
        ("1.5KiB", 1536),
        ("1GiB", 1024**3),
    ],
)
def test_parse_size_valid(value: str | int, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["lots", "1XB", "-1", "0.5B", "1.5", "", "MiB", True])
def test_parse_size_invalid(value: Any) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(value)


def test_sizes_and_durations_in_settings(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'max_body_bytes = "512KiB"\nupstream_read_timeout = 12\n')
    settings = load_settings(config, inflight_wait="250ms")
    assert settings.max_body_bytes == 524288
    assert settings.upstream_read_timeout == 12.0
    assert settings.inflight_wait == 0.25
    assert problem_keys(config_error(max_body_bytes="0")) == ["max_body_bytes"]
    assert problem_keys(config_error(upstream_connect_timeout="0s")) == ["upstream_connect_timeout"]


# -- lists, maps, routes ----------------------------------------------------------------------


def test_allowed_hosts_env_is_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDGUARD_UPSTREAM_ALLOWED_HOSTS", "*.twilio.com, API.example.com,")
    assert load_settings().upstream_allowed_hosts == ["*.twilio.com", "api.example.com"]
    monkeypatch.setenv("SENDGUARD_UPSTREAM_ALLOWED_HOSTS", "")
    assert load_settings().upstream_allowed_hosts == []


def test_allowed_hosts_from_toml_and_bad_pattern(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'upstream_allowed_hosts = ["*.twilio.com", "x.test"]\n')
    assert load_settings(config).upstream_allowed_hosts == ["*.twilio.com", "x.test"]
    error = config_error(upstream_allowed_hosts="https://evil.test/")
    assert problem_keys(error) == ["upstream_allowed_hosts"]


def test_auth_tokens_env_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDGUARD_TWILIO_AUTH_TOKENS", f"{SID_A}=tok-a, {SID_B}=tok-b\n")
    tokens = load_settings().twilio_auth_tokens
    assert {sid: t.get_secret_value() for sid, t in tokens.items()} == {
        SID_A: "tok-a",
        SID_B: "tok-b",
    }


def test_auth_tokens_from_toml_table(tmp_path: Path) -> None:
    config = write_toml(tmp_path, f'[twilio_auth_tokens]\n{SID_A} = "tok-a"\n')
    assert load_settings(config).twilio_auth_tokens[SID_A].get_secret_value() == "tok-a"


@pytest.mark.parametrize(
    "value", ["ACnope=tok", "sekrit-token", f"{SID_A}=", f"{SID_A}=a,{SID_A}=b"]
)
def test_auth_tokens_invalid(value: str) -> None:
    error = config_error(twilio_auth_tokens=value)
    assert problem_keys(error) == ["twilio_auth_tokens"]
    assert "sekrit" not in str(error)


ROUTES = [
    {"name": "messages", "path": "/2010-04-01/Accounts/{AccountSid}/Messages.json"},
    {
        "name": "conversations",
        "method": "post",
        "path": "/v1/Accounts/{AccountSid}/Services/{ServiceSid}/Messages",
        "dedup_window": "30m",
    },
]


def check_routes(settings: Settings) -> None:
    messages, conversations = settings.guarded_routes
    assert messages == GuardedRoute(name="messages", path=str(ROUTES[0]["path"]))
    assert conversations.method == "POST"
    assert settings.route_dedup_window(messages) == 600.0
    assert settings.route_dedup_window(conversations) == 1800.0


def test_guarded_routes_from_env_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDGUARD_GUARDED_ROUTES", json.dumps(ROUTES))
    check_routes(load_settings())


def test_guarded_routes_from_toml(tmp_path: Path) -> None:
    tables = "".join(
        "[[guarded_routes]]\n" + "".join(f'{k} = "{v}"\n' for k, v in route.items())
        for route in ROUTES
    )
    check_routes(load_settings(write_toml(tmp_path, tables)))


def test_default_guarded_routes() -> None:
    routes = load_settings().guarded_routes
    assert [(r.name, r.method, r.path) for r in routes] == [
        ("messages", "POST", "/2010-04-01/Accounts/{AccountSid}/Messages.json"),
        ("calls", "POST", "/2010-04-01/Accounts/{AccountSid}/Calls.json"),
    ]


ACCOUNT_ROUTE = {"name": "x", "path": "/{AccountSid}"}


@pytest.mark.parametrize(
    ("routes", "key"),
    [
        ([{"name": "x", "path": "/Messages.json"}], "guarded_routes[0].path"),
        ([{"name": "x", "path": "/A/{AccountSid}/{oops"}], "guarded_routes[0].path"),
        ([{**ACCOUNT_ROUTE, "dedup_window": "0"}], "guarded_routes[0].dedup_window"),
        ([{**ACCOUNT_ROUTE, "windw": "1m"}], "guarded_routes[0].windw"),
        ([{**ACCOUNT_ROUTE, "method": "PO ST"}], "guarded_routes[0].method"),
        ([{"path": "/{AccountSid}"}], "guarded_routes[0].name"),
        ([ACCOUNT_ROUTE, {**ACCOUNT_ROUTE, "path": "/{AccountSid}/b"}], "guarded_routes"),
        ("[{", "guarded_routes"),  # not JSON
    ],
)
def test_guarded_routes_invalid(routes: str | list[dict[str, str]], key: str) -> None:
    as_json = routes if isinstance(routes, str) else json.dumps(routes)
    assert problem_keys(config_error(guarded_routes=as_json)) == [key]


# -- recipient limits, kill switch, addresses, URLs ---------------------------------------------


@pytest.mark.parametrize(
    ("spec", "windows"),
    [
        ("5/min,20/h,50/day", [(5, 60.0), (20, 3600.0), (50, 86400.0)]),
        ("off", []),
        (" OFF ", []),
        ("50/d, 10/s", [(10, 1.0), (50, 86400.0)]),
        ("3/sec,2/hour,4/minute", [(3, 1.0), (4, 60.0), (2, 3600.0)]),
    ],
)
def test_recipient_limits_valid(spec: str, windows: list[tuple[int, float]]) -> None:
    assert parse_recipient_limits(spec) == windows
    limits = load_settings(recipient_limits=spec).recipient_limits
    assert [(w.count, w.seconds) for w in limits.windows] == windows
    assert str(limits) == spec.strip()  # shown as written


@pytest.mark.parametrize(
    "spec", ["", "5", "5/week", "0/min", "-1/min", "x/min", "5/min,", "5/min,6/m", "5/min 20/h"]
)
def test_recipient_limits_invalid(spec: str) -> None:
    with pytest.raises(ValueError, match="limit"):
        parse_recipient_limits(spec)
    assert problem_keys(config_error(recipient_limits=spec)) == ["recipient_limits"]


@pytest.mark.parametrize(
    ("value", "scopes"),
    [
        ("global", ["global"]),
        (f"account:{SID_A}", [f"account:{SID_A}"]),
        ("sender:MG" + "1" * 32, ["sender:MG" + "1" * 32]),
        ("sender:+14155550100", ["sender:+14155550100"]),
        ("recipient:+14155550100", ["recipient:+14155550100"]),
        ("prefix:+44", ["prefix:+44"]),
        (" global , prefix:+1 ", ["global", "prefix:+1"]),
        ("", []),
        (" , ", []),
    ],
)
def test_kill_switch_valid(value: str, scopes: list[str]) -> None:
    configured = load_settings(kill_switch=value).kill_switch
    assert configured is None if not scopes else str(configured) == ",".join(scopes)
    if configured is not None:
        assert [str(scope) for scope in configured.scopes] == scopes
        switches = configured.switches(1000.0)  # engaged at startup, until the config changes
        assert [switch.scope for switch in switches] == list(configured.scopes)
        assert {(s.created_at, s.expires_at) for s in switches} == {(1000.0, None)}


@pytest.mark.parametrize(
    "value",
    [
        "everything",
        "account:ACxyz",
        "recipient:447700900123",
        "prefix:44",
        "sender:",
        "sender:whatsapp:+14155550100",  # a sender scope covers every channel: no prefix
        "global,nope",
    ],
)
def test_kill_switch_invalid(value: str) -> None:
    error = config_error(kill_switch=value)
    assert problem_keys(error) == ["kill_switch"]
    assert "447700900123" not in str(error)  # phone numbers are never echoed


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("0.0.0.0:80", "0.0.0.0", 80),
        ("localhost:0", "localhost", 0),
        ("[::1]:8080", "::1", 8080),
        ("[::]:65535", "::", 65535),
        ("proxy.internal:8080", "proxy.internal", 8080),
    ],
)
def test_listen_valid(address: str, host: str, port: int) -> None:
    settings = load_settings(listen=address, admin_listen=address)
    assert (settings.listen.host, settings.listen.port) == (host, port)
    assert (settings.admin_listen.host, settings.admin_listen.port) == (host, port)
    assert str(settings.listen) == address


@pytest.mark.parametrize(
    "address",
    ["8080", "localhost", ":8080", "::1:8080", "host:99999", "host:abc", "[zz]:80", "a b:80", ""],
)
def test_listen_invalid(address: str) -> None:
    assert problem_keys(config_error(listen=address)) == ["listen"]
    assert problem_keys(config_error(admin_listen=address)) == ["admin_listen"]


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("sandbox", "sandbox"),
        ("Sandbox", "sandbox"),
        ("https://api.twilio.com/", "https://api.twilio.com"),
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
    ],
)
def test_upstream_valid(value: str, stored: str) -> None:
    settings = load_settings(upstream=value)
    assert settings.upstream == stored
    assert settings.upstream_is_sandbox == (stored == "sandbox")


@pytest.mark.parametrize(
    "value",
    [
        "ftp://x",
        "api.twilio.com",
        "https://api.twilio.com/2010-04-01",
        "https://x?y=1",
        "http://:80",
    ],
)
def test_upstream_invalid(value: str) -> None:
    assert problem_keys(config_error(upstream=value)) == ["upstream"]


@pytest.mark.parametrize(
    "value", ["redis://redis:6379/0", "rediss://:pw@redis:6380", "unix:///run/redis.sock"]
)
def test_redis_url_valid(value: str) -> None:
    assert load_settings(redis_url=value).redis_url == value


@pytest.mark.parametrize("value", ["http://user:hunter2@redis", "redis://", "unix://", "redis"])
def test_redis_url_invalid_never_echoes_password(value: str) -> None:
    error = config_error(redis_url=value)
    assert problem_keys(error) == ["redis_url"]
    assert "hunter2" not in str(error)


def test_public_url() -> None:
    assert (
        load_settings(public_url="https://sg.example.com/").public_url == "https://sg.example.com"
    )
    assert problem_keys(config_error(public_url="sg.example.com")) == ["public_url"]


def test_empty_string_means_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'redis_url = "redis://redis:6379"\n')
    monkeypatch.setenv("SENDGUARD_REDIS_URL", "")  # env switches a file's Redis back off
    assert load_settings(config).redis_url is None


def test_logging_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(log_level="WARNING").log_level == "warning"
    assert problem_keys(config_error(log_level="loud")) == ["log_level"]
    assert load_settings(log_format="console").effective_log_format == "console"

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert load_settings().effective_log_format == "json"
    monkeypatch.setattr(sys, "stderr", Tty())
    assert load_settings().effective_log_format == "console"


def test_redis_cluster_bool_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDGUARD_REDIS_CLUSTER", "true")
    assert load_settings().redis_cluster is True


# -- secrets --------------------------------------------------------------------------------------


def test_secrets_never_in_redacted_dict_or_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDGUARD_ADMIN_TOKEN", "admin-sekrit\n")
    monkeypatch.setenv("SENDGUARD_TWILIO_AUTH_TOKENS", f"{SID_A}=twilio-sekrit")
    settings = load_settings(
        redis_url="rediss://default:redis-sekrit@redis:6380/0",
        kill_switch="recipient:+14155550100",
    )
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "admin-sekrit"  # newline stripped
    redacted = settings.redacted_dict()
    assert redacted["admin_token"] == "***"
    assert redacted["twilio_auth_tokens"] == {SID_A: "***"}
    assert redacted["redis_url"] == "rediss://default:***@redis:6380/0"
    assert redacted["kill_switch"] == "recipient:+14*******00"
    for text in (json.dumps(redacted), repr(settings), str(settings)):
        for secret in ("admin-sekrit", "twilio-sekrit", "redis-sekrit", "4155550100"):
            assert secret not in text


def test_settings_hold_parsed_values() -> None:
    settings = load_settings(
        suppressions=" 21610=recipient:30d ", account_limits="1000/h", suppression_mode="report"
    )
    assert settings.suppressions.rules == {21610: SuppressionRule(21610, "recipient", 2592000.0)}
    assert str(settings.suppressions) == "21610=recipient:30d"
    assert settings.account_limits.windows == (LimitWindow(1000, 3600.0),)
    assert settings.suppression_mode is GuardMode.REPORT
    assert settings.redacted_dict()["suppression_mode"] == "report"


def test_defaults_are_parsed_like_the_text_they_show() -> None:
    defaults = load_settings()
    assert defaults.listen == Address("127.0.0.1", 8080, "127.0.0.1:8080")
    assert defaults.recipient_limits == SendLimits.parse("5/min,20/h,50/day")
    assert defaults.recipient_limits.windows[0] == LimitWindow(5, 60.0)
    assert defaults.suppressions == SuppressionRules.parse(DEFAULT_RULES)
    assert defaults.account_limits.windows == ()


def test_redacted_dict_is_plain_json(tmp_path: Path) -> None:
    redacted = load_settings(data_dir=str(tmp_path)).redacted_dict()
    assert json.loads(json.dumps(redacted)) == redacted
    assert redacted["data_dir"] == str(tmp_path)
    assert set(redacted) == set(Settings.model_fields)


# -- the shipped config files --------------------------------------------------------------------


def test_default_config_file_has_every_key_at_its_default() -> None:
    path = REPO_ROOT / "config" / "sendguard.toml"
    assert set(tomllib.loads(path.read_text())) == set(Settings.model_fields)
    assert load_settings(path) == Settings()


def test_example_config_file_is_valid() -> None:
    settings = load_settings(REPO_ROOT / "config" / "example.toml")
    assert settings.redis_url is not None
    assert settings.admin_token is None  # comes from the environment in production
