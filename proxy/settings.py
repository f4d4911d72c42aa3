"""sendguard's settings: one frozen model, loaded with precedence flag > env > file > default.

The sources are pydantic-settings' own: init kwargs carry the CLI flags, `SENDGUARD_<NAME>`
env vars, and one TOML file (`--config` or `SENDGUARD_CONFIG`). Each field is typed with
the parsed value it holds (proxy/settings_fields.py: addresses, limits, suppression rules,
durations, sizes, comma lists), so callers never parse a setting again. This module turns
pydantic's validation errors into a `ConfigError` with one `key: reason` line per bad key, so
a bad deployment fails at startup.
"""

from __future__ import annotations

import difflib
import os
import sys
import tomllib
from collections.abc import Iterator
from contextvars import ContextVar
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails, to_jsonable_python
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from proxy.config_values import check_http_url, mask, parse_recipient_limits
from proxy.durations import parse_duration, parse_size
from proxy.guard.protection import GuardMode
from proxy.guard.suppression import DEFAULT_RULES as DEFAULT_SUPPRESSION_RULES
from proxy.settings_fields import (
    Address,
    AuthTokens,
    BreakGlassSenders,
    ByteCount,
    ConfiguredKillSwitches,
    Duration,
    GuardedRoute,
    GuardedRoutes,
    HostGlobs,
    OptionalDuration,
    ParsedText,
    PositiveDuration,
    SendLimits,
    StoreUrl,
    SuppressionRules,
    default_routes,
)

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


class Settings(BaseSettings):
    """Every sendguard setting. Build it with `load_settings()`; it is immutable."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    listen: Annotated[Address, NoDecode] = Field(
        Address.parse("127.0.0.1:8080"), description="Proxy listen address, host:port."
    )
    admin_listen: Annotated[Address, NoDecode] = Field(
        Address.parse("127.0.0.1:8081"), description="Admin listen address, host:port."
    )
    upstream: str = Field(
        "https://api.twilio.com",
        description="Default upstream: an http(s) URL without path, or 'sandbox'.",
    )
    upstream_allowed_hosts: HostGlobs = Field(
        default_factory=lambda: ["*.twilio.com"],
        description="Host globs allowed in X-Sendguard-Upstream-Host, comma-separated.",
    )
    redis_url: StoreUrl | None = Field(
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
    guarded_routes: GuardedRoutes = Field(
        default_factory=default_routes, description="Guarded send routes, as a JSON list."
    )
    recipient_limits: Annotated[SendLimits, NoDecode] = Field(
        SendLimits.parse("5/min,20/h,50/day"), description="Per-recipient send limits, or 'off'."
    )
    recipient_limits_mode: GuardMode = Field(
        GuardMode.ENFORCE, description="Recipient limits and breaker: off, report or enforce."
    )
    account_limits: Annotated[SendLimits, NoDecode] = Field(
        SendLimits.parse("off"),
        description="Per-account send ceiling in fixed windows (e.g. 1000/h), or 'off'.",
    )
    account_limits_mode: GuardMode = Field(
        GuardMode.ENFORCE, description="Per-account ceiling: off, report or enforce."
    )
    breaker_cooldown: PositiveDuration = Field(
        60.0, description="First breaker cooldown; doubles on each consecutive trip."
    )
    breaker_max_cooldown: PositiveDuration = Field(86400.0, description="Longest cooldown.")
    suppressions: Annotated[SuppressionRules, NoDecode] = Field(
        SuppressionRules.parse(DEFAULT_SUPPRESSION_RULES),
        description="Non-retryable codes: CODE=scope:ttl,… (scope sender|recipient|message).",
    )
    suppression_mode: GuardMode = Field(
        GuardMode.ENFORCE, description="Suppression of hopeless resends: off, report or enforce."
    )
    upstream_429_budget: Duration = Field(
        5.0, description="How long upstream 429s are retried inside sendguard."
    )
    twilio_auth_tokens: AuthTokens = Field(
        default_factory=dict,
        description="Callback-signature tokens, AC…=token,…; prefer the env var.",
    )
    kill_switch: ConfiguredKillSwitches = Field(
        None, description="Kill switch scopes, comma-separated (global, account:AC…, …)."
    )
    break_glass_senders: BreakGlassSenders = Field(
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

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    # -- derived views -----------------------------------------------------------------------

    @property
    def upstream_is_sandbox(self) -> bool:
        return self.upstream == "sandbox"

    @property
    def effective_log_format(self) -> Literal["json", "console"]:
        if self.log_format is not None:
            return self.log_format
        return "console" if sys.stderr is not None and sys.stderr.isatty() else "json"

    def route_dedup_window(self, route: GuardedRoute) -> float:
        return self.dedup_window if route.dedup_window is None else route.dedup_window

    def redacted_dict(self) -> dict[str, Any]:
        """All settings as JSON-able values; secrets are "***", URL passwords and numbers masked."""
        data = {name: mask(name, _shown(getattr(self, name))) for name in type(self).model_fields}
        result: dict[str, Any] = to_jsonable_python(data)
        return result

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, value if name is None else mask(name, _shown(value), keep_secret_type=True)


def _shown(value: Any) -> Any:
    # A value parsed from text is shown as written: check-config prints what was configured.
    if isinstance(value, ParsedText):
        return str(value)
    return value.value if isinstance(value, Enum) else value


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
