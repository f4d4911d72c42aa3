"""sendguard's settings: one frozen model, loaded with precedence flag > env > file > default.

The sources are pydantic-settings' own: init kwargs carry the CLI flags, `SENDGUARD_<NAME>`
env vars, and one TOML file (`--config` or `SENDGUARD_CONFIG`). This module adds only value
parsing (durations, sizes, comma lists) and turns pydantic's validation errors into a
`ConfigError` with one `key: reason` line per bad key, so a bad deployment fails at startup.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
import tomllib
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails, to_jsonable_python
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from proxy.config_values import (
    ACCOUNT_SID,
    check_host_glob,
    check_http_url,
    check_redis_url,
    mask,
    parse_recipient_limits,
    parse_token_pairs,
    split_commas,
    split_host_port,
)
from proxy.durations import parse_duration, parse_size
from proxy.guard.suppression import DEFAULT_RULES as DEFAULT_SUPPRESSION_RULES
from proxy.guard.suppression import parse_rules as parse_suppression_rules
from proxy.killswitch.model import parse_break_glass, parse_env_switches
from proxy.logs import mask_phones_in

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "ConfigError",
    "GuardedRoute",
    "Settings",
    "load_settings",
    "parse_duration",
    "parse_recipient_limits",
    "parse_size",
]

ENV_PREFIX = "SENDGUARD_"
CONFIG_ENV = "SENDGUARD_CONFIG"

_HTTP_TOKEN = re.compile(r"[A-Z]+", re.ASCII)
_PLACEHOLDER = re.compile(r"\{[A-Za-z][A-Za-z0-9]*\}", re.ASCII)

GuardModeName = Literal["off", "report", "enforce"]
Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[Duration, Field(gt=0)]


def _duration_or_off(value: object) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("off", "")):
        return None
    seconds = parse_duration(value)  # type: ignore[arg-type]
    if seconds <= 0:
        raise ValueError("must be a positive duration, or off")
    return seconds


OptionalDuration = Annotated[float | None, BeforeValidator(_duration_or_off)]
ByteCount = Annotated[int, BeforeValidator(parse_size), Field(gt=0)]

# Field values that may hold credentials: never echoed in errors, masked in repr and logs.
_SECRET_KEYS = frozenset({"admin_token", "twilio_auth_tokens", "redis_url"})

# The config file for the Settings() being built. A context variable because pydantic-settings
# asks the class (not an instance) for its sources; load_settings() sets it around the call.
_CONFIG_FILE: ContextVar[Path | None] = ContextVar("sendguard_config_file", default=None)


class ConfigError(Exception):
    """Invalid configuration: `problems` holds one (key, reason) pair per bad key."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{key}: {reason}" for key, reason in problems))


class GuardedRoute(BaseModel):
    """A route whose POSTs are guarded sends (deduped, rate-limited, kill-switchable)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    method: str = "POST"
    path: str
    dedup_window: PositiveDuration | None = None  # None: the global dedup_window

    @field_validator("method", mode="before")
    @classmethod
    def _upper_method(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().upper()
            if not _HTTP_TOKEN.fullmatch(value):
                raise ValueError(f"invalid HTTP method {value!r}")
        return value

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value.startswith("/") or "?" in value:
            raise ValueError(f"{value!r} must be a path starting with '/', without a query")
        if "{AccountSid}" not in value:
            raise ValueError(f"{value!r} must contain {{AccountSid}} (dedup is scoped by account)")
        if "{" in _PLACEHOLDER.sub("", value) or "}" in _PLACEHOLDER.sub("", value):
            raise ValueError(f"{value!r} has a malformed {{placeholder}}")
        return value


def _default_routes() -> list[GuardedRoute]:
    return [
        GuardedRoute(name="messages", path="/2010-04-01/Accounts/{AccountSid}/Messages.json"),
        GuardedRoute(name="calls", path="/2010-04-01/Accounts/{AccountSid}/Calls.json"),
    ]


class Settings(BaseSettings):
    """Every sendguard setting. Build it with `load_settings()`; it is immutable."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    listen: str = Field("127.0.0.1:8080", description="Proxy listen address, host:port.")
    admin_listen: str = Field("127.0.0.1:8081", description="Admin listen address, host:port.")
    upstream: str = Field(
        "https://api.twilio.com",
        description="Default upstream: an http(s) URL without path, or 'sandbox'.",
    )
    upstream_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*.twilio.com"],
        description="Host globs allowed in X-Sendguard-Upstream-Host, comma-separated.",
    )
    redis_url: str | None = Field(
        None, description="Shared store URL (redis://, rediss://, unix://); unset = embedded."
    )
    redis_cluster: bool = Field(False, description="Treat redis_url as a Redis Cluster.")
    data_dir: Path | None = Field(
        None, description="Embedded store persistence directory; unset = in memory."
    )
    admin_token: SecretStr | None = Field(
        None, description="Admin API bearer token; unset = /v1/ refused. Prefer the env var."
    )
    public_url: str | None = Field(
        None, description="Public http(s) URL of this proxy; enables the status-callback tee."
    )
    callback_secret: SecretStr | None = Field(
        None,
        description="Callback URL HMAC secret (16+ bytes); unset = one shared via the store.",
    )
    upstream_connect_timeout: PositiveDuration = Field(5.0, description="Upstream connect timeout.")
    upstream_read_timeout: PositiveDuration = Field(30.0, description="Upstream read timeout.")
    upstream_pool_size: int = Field(100, gt=0, description="Max pooled upstream connections.")
    max_body_bytes: ByteCount = Field(1048576, description="Max request body (e.g. 1MiB).")
    max_connections: int = Field(
        1000,
        gt=0,
        description="Client connections on the proxy port; at the cap the longest-waiting idle"
        " one is closed, else the new one gets 503.",
    )
    client_header_timeout: PositiveDuration = Field(
        10.0, description="A request's head must arrive within this long of its first byte."
    )
    client_body_timeout: PositiveDuration = Field(
        30.0, description="A request's body must arrive within this long of its head (else 408)."
    )
    client_idle_timeout: PositiveDuration = Field(
        60.0, description="Close a client connection that sends no request for this long."
    )
    dedup_window: PositiveDuration = Field(600.0, description="Fingerprint dedup window.")
    idempotency_ttl: PositiveDuration = Field(86400.0, description="Idempotency-Key retention.")
    inflight_wait: Duration = Field(
        5.0, description="How long a duplicate waits for the in-flight original."
    )
    guarded_routes: Annotated[list[GuardedRoute], NoDecode] = Field(
        default_factory=_default_routes, description="Guarded send routes, as a JSON list."
    )
    recipient_limits: str = Field(
        "5/min,20/h,50/day", description="Per-recipient send limits, or 'off'."
    )
    recipient_limits_mode: GuardModeName = Field(
        "enforce", description="Recipient limits and breaker: off, report or enforce."
    )
    account_limits: str = Field(
        "off", description="Per-account send ceiling in fixed windows (e.g. 1000/h), or 'off'."
    )
    account_limits_mode: GuardModeName = Field(
        "enforce", description="Per-account ceiling: off, report or enforce."
    )
    breaker_cooldown: PositiveDuration = Field(
        60.0, description="First breaker cooldown; doubles on each consecutive trip."
    )
    breaker_max_cooldown: PositiveDuration = Field(86400.0, description="Longest cooldown.")
    suppressions: str = Field(
        DEFAULT_SUPPRESSION_RULES,
        description="Non-retryable codes: CODE=scope:ttl,… (scope sender|recipient|message).",
    )
    suppression_mode: GuardModeName = Field(
        "enforce", description="Suppression of hopeless resends: off, report or enforce."
    )
    upstream_429_budget: Duration = Field(
        5.0, description="How long upstream 429s are retried inside sendguard."
    )
    twilio_auth_tokens: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict,
        description="Callback-signature tokens, AC…=token,…; prefer the env var.",
    )
    kill_switch: str | None = Field(
        None, description="Kill switch scopes, comma-separated (global, account:AC…, …)."
    )
    break_glass_senders: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Senders (From or MG…) that pass every kill switch, comma-separated.",
    )
    on_store_error: Literal["local", "closed", "open"] = Field(
        "closed", description="Store outage policy: closed, local or open."
    )
    store_min_replicas: int = Field(
        0, ge=0, le=16, description="Replicas that must hold a claim (WAIT) before a send goes out."
    )
    unknown_resend_after: OptionalDuration = Field(
        None,
        description="Resend an UNKNOWN send once after this long with no evidence; off = never.",
    )
    ready_requires_store: bool = Field(
        False, description="/readyz fails while the store is unreachable (standalone)."
    )
    store_outage_after: PositiveDuration = Field(
        3.0, description="How long the store must be unreachable before the outage policy engages."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level: debug, info, warning or error."
    )
    log_format: Literal["json", "console"] | None = Field(
        None, description="Log format; unset = console on a TTY, else json."
    )
    shutdown_grace: Duration = Field(25.0, description="Graceful-shutdown deadline.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Exactly flags > env > TOML file; no .env or secrets-dir lookups behind the user's back.
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_CONFIG_FILE.get())
        return (init_settings, env_settings, toml)

    # -- value parsing -----------------------------------------------------------------------

    @field_validator(
        "redis_url", "data_dir", "admin_token", "public_url", "kill_switch", "log_format",
        "callback_secret",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `KEY=""` in env or TOML (which has no null) means "unset", as in the default config.
        # Stripping also drops the trailing newline of a token mounted from a file.
        if not isinstance(value, str):
            return value
        return value.strip() or None

    @field_validator("listen", "admin_listen")
    @classmethod
    def _check_address(cls, value: str) -> str:
        split_host_port(value)
        return value.strip()

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, value: str) -> str:
        if value.strip().lower() == "sandbox":
            return "sandbox"
        return check_http_url(value, allow_path=False)

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value, allow_path=True)

    @field_validator("callback_secret")
    @classmethod
    def _check_callback_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 16:
            raise ValueError("must be at least 16 bytes")
        return value

    @field_validator("redis_url")
    @classmethod
    def _validate_redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        checked = check_redis_url(value)
        if "+sentinel://" not in checked.lower():
            for seed in checked.split(","):
                _check_client_url(seed)
        return checked

    @field_validator("store_min_replicas")
    @classmethod
    def _check_min_replicas(cls, value: int, info: ValidationInfo) -> int:
        if value and info.data.get("redis_cluster"):
            raise ValueError(
                "not supported with redis_cluster (WAIT must run on the claim's own connection);"
                " use 0, or a Sentinel/standalone store with replicas"
            )
        if value and info.data.get("redis_url") is None:
            raise ValueError(
                "needs a shared store with replicas (redis_url); the embedded one has none"
            )
        return value

    @field_validator("data_dir")
    @classmethod
    def _expand_data_dir(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()

    @field_validator("upstream_allowed_hosts", mode="before")
    @classmethod
    def _parse_allowed_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            value = split_commas(value)
        if isinstance(value, list):
            value = [check_host_glob(item) if isinstance(item, str) else item for item in value]
        return value

    @field_validator("guarded_routes", mode="before")
    @classmethod
    def _parse_routes_json(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"invalid JSON ({exc.msg} at char {exc.pos})") from None
        return value

    @field_validator("guarded_routes")
    @classmethod
    def _check_routes_unique(cls, routes: list[GuardedRoute]) -> list[GuardedRoute]:
        names = [route.name for route in routes]
        targets = [(route.method, route.path) for route in routes]
        if len(set(names)) != len(names):
            raise ValueError("route names must be unique")
        if len(set(targets)) != len(targets):
            raise ValueError("two routes have the same method and path")
        return routes

    @field_validator("recipient_limits", "account_limits")
    @classmethod
    def _check_recipient_limits(cls, value: str) -> str:
        parse_recipient_limits(value)
        return value.strip()

    @field_validator("suppressions")
    @classmethod
    def _check_suppressions(cls, value: str) -> str:
        parse_suppression_rules(value)
        return value.strip()

    @field_validator("twilio_auth_tokens", mode="before")
    @classmethod
    def _parse_auth_tokens(cls, value: object) -> object:
        pairs = parse_token_pairs(value) if isinstance(value, str) else value
        if isinstance(pairs, dict):
            for sid, token in pairs.items():
                if not ACCOUNT_SID.fullmatch(str(sid)):
                    raise ValueError(f"invalid account SID {sid!r} (AC + 32 hex digits)")
                if isinstance(token, str) and not token.strip():
                    raise ValueError(f"empty auth token for {sid}")
            return {sid: t.strip() if isinstance(t, str) else t for sid, t in pairs.items()}
        return pairs

    @field_validator("kill_switch")
    @classmethod
    def _check_kill_switch(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            switches = parse_env_switches(value, now=0.0)  # names the bad scope
        except ValueError as exc:  # the bad scope may be someone's phone number
            raise ValueError(mask_phones_in(str(exc))) from None
        return ",".join(str(switch.scope) for switch in switches) or None

    @field_validator("break_glass_senders", mode="before")
    @classmethod
    def _parse_break_glass(cls, value: object) -> object:
        if isinstance(value, str):
            value = split_commas(value)
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            try:
                parse_break_glass(value)  # names the bad sender
            except ValueError as exc:
                raise ValueError(mask_phones_in(str(exc))) from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    # -- derived views -----------------------------------------------------------------------

    @property
    def listen_host(self) -> str:
        return split_host_port(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return split_host_port(self.listen)[1]

    @property
    def admin_listen_host(self) -> str:
        return split_host_port(self.admin_listen)[0]

    @property
    def admin_listen_port(self) -> int:
        return split_host_port(self.admin_listen)[1]

    @property
    def upstream_is_sandbox(self) -> bool:
        return self.upstream == "sandbox"

    @property
    def recipient_limit_windows(self) -> list[tuple[int, float]]:
        """(count, window seconds) pairs, shortest window first; empty when limits are off."""
        return parse_recipient_limits(self.recipient_limits)

    @property
    def account_limit_windows(self) -> list[tuple[int, float]]:
        return parse_recipient_limits(self.account_limits)

    @property
    def kill_switch_scopes(self) -> list[str]:
        return [] if self.kill_switch is None else self.kill_switch.split(",")

    @property
    def effective_log_format(self) -> Literal["json", "console"]:
        if self.log_format is not None:
            return self.log_format
        return "console" if sys.stderr is not None and sys.stderr.isatty() else "json"

    def route_dedup_window(self, route: GuardedRoute) -> float:
        return self.dedup_window if route.dedup_window is None else route.dedup_window

    def redacted_dict(self) -> dict[str, Any]:
        """All settings as JSON-able values; secrets are "***", URL passwords and numbers masked."""
        data = {name: mask(name, getattr(self, name)) for name in type(self).model_fields}
        result: dict[str, Any] = to_jsonable_python(data)
        return result

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, value if name is None else mask(name, value, keep_secret_type=True)


# Query parameters redis-py takes from a URL that sendguard's store clients can use.
_REDIS_URL_OPTIONS = frozenset(
    {"client_name", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile"}
)


def _check_client_url(url: str) -> None:
    """What redis-py itself would refuse (or silently misread) only once sendguard runs:
    a non-numeric db in the path, a bad or unknown query parameter. Never echoes the URL."""
    from urllib.parse import parse_qsl, urlsplit

    from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS, parse_url

    parts = urlsplit(url)
    db = parts.path.strip("/") if parts.scheme != "unix" else ""
    if db and not (db.isascii() and db.isdigit()):
        raise ValueError("the path must be the database number, e.g. redis://redis:6379/0")
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if name not in URL_QUERY_ARGUMENT_PARSERS and name not in _REDIS_URL_OPTIONS:
            raise ValueError(f"unknown query parameter {name!r} in the URL")
    try:
        parse_url(url)
    except ValueError as exc:  # e.g. "Invalid value for 'socket_timeout' in connection URL."
        raise ValueError(str(exc).rstrip(".")) from None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from flags (`overrides`, None = not given) > env > config file > defaults.

    The config file is `config_file`, else `$SENDGUARD_CONFIG`, else none. Raises ConfigError.
    """
    path = _resolve_config_file(config_file)
    given = {key: value for key, value in overrides.items() if value is not None}
    token = _CONFIG_FILE.set(path)
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise ConfigError(_problems(exc, given, path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("config", f"{path}: invalid TOML: {exc}")]) from exc
    except UnicodeDecodeError as exc:  # tomllib decodes the file itself
        raise ConfigError([("config", f"{path}: not UTF-8 text (a TOML file)")]) from exc
    except OSError as exc:
        raise ConfigError([("config", f"{path}: cannot read: {exc.strerror}")]) from exc
    finally:
        _CONFIG_FILE.reset(token)


def _resolve_config_file(config_file: Path | None) -> Path | None:
    if config_file is None:
        from_env = os.environ.get(CONFIG_ENV, "").strip()
        if not from_env:
            return None
        config_file = Path(from_env)
    path = Path(config_file)  # tolerates a str from programmatic callers
    if not path.is_file():
        what = "not a file" if path.exists() else "no such file"
        raise ConfigError([("config", f"{what}: {path}")])
    return path


def _problems(
    exc: ValidationError, flags: dict[str, Any], path: Path | None
) -> list[tuple[str, str]]:
    # One line per bad key: several errors on one key (or one list item) are joined.
    reasons: dict[str, list[str]] = {}
    origins: dict[str, str | None] = {}
    for error in exc.errors(include_url=False):
        key = _format_loc(error["loc"])
        reasons.setdefault(key, []).append(_reason(error))
        origins[key] = _origin(str(error["loc"][0]), flags, path) if error["loc"] else None
    return [
        (key, "; ".join(dict.fromkeys(why)) + (f" (from {origins[key]})" if origins[key] else ""))
        for key, why in reasons.items()
    ]


def _format_loc(loc: tuple[int | str, ...]) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else part)
    return key or "settings"


def _reason(error: ErrorDetails) -> str:
    loc = error["loc"]
    if error["type"] == "extra_forbidden":
        if len(loc) != 1:
            return "unknown key"
        close = difflib.get_close_matches(str(loc[0]), Settings.model_fields, n=1)
        return "unknown setting" + (f" (did you mean {close[0]}?)" if close else "")
    if error["type"] == "value_error":
        return str(error.get("ctx", {}).get("error", error["msg"]))
    reason = error["msg"][:1].lower() + error["msg"][1:]
    value = error["input"]
    if loc and loc[0] not in _SECRET_KEYS and not isinstance(value, dict | list):
        reason += f", got {value!r}"
    return reason


def _origin(key: str, flags: dict[str, Any], path: Path | None) -> str | None:
    """Which source supplied `key`, following the precedence (defaults are never invalid)."""
    if key in flags:
        return "--" + key.replace("_", "-")
    env_name = ENV_PREFIX + key.upper()
    if any(name.upper() == env_name for name in os.environ):  # env lookup is case-insensitive
        return f"env {env_name}"
    return str(path) if path is not None else None
