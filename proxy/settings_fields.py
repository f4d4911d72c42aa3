"""The typed values `Settings` holds: each setting is parsed once, when it is loaded.

Callers read the parsed form (`settings.listen.port`, `settings.recipient_limits.windows`,
`settings.suppressions.rules`, `settings.kill_switch.scopes`) and never parse a setting again.
A value written as text keeps the operator's spelling (`text`) for `check-config`, the flag
help and repr, so what sendguard prints is what was configured. Every parser raises
ValueError, which pydantic reports against the setting's name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    SecretStr,
    field_validator,
)
from pydantic_core import core_schema
from pydantic_settings import NoDecode

from proxy.config_values import (
    ACCOUNT_SID,
    check_host_glob,
    check_redis_client_url,
    check_redis_url,
    parse_recipient_limits,
    parse_token_pairs,
    split_commas,
    split_host_port,
)
from proxy.durations import parse_duration, parse_size
from proxy.guard.protection import LimitWindow
from proxy.guard.suppression import SuppressionRule
from proxy.guard.suppression import parse_rules as parse_suppression_rules
from proxy.killswitch.model import (
    CONFIG_AUTHOR,
    CONFIG_REASON,
    KillSwitch,
    parse_break_glass,
    parse_env_switches,
)
from proxy.killswitch.scopes import Scope
from proxy.logs import mask_phones_in

_HTTP_TOKEN = re.compile(r"[A-Z]+", re.ASCII)
_PLACEHOLDER = re.compile(r"\{[A-Za-z][A-Za-z0-9]*\}", re.ASCII)

# -- durations and sizes ----------------------------------------------------------------------

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


# -- values written as text -------------------------------------------------------------------


class ParsedText:
    """A setting given as a string and held parsed. Pydantic first checks the input is a string
    (so a wrong type reads as before: "input should be a valid string"), then `parse()` reads
    it; an already-parsed value (a default) passes as is. It serializes back to `text`."""

    text: str

    @classmethod
    def parse(cls, text: str) -> Self:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.text

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        from_text = core_schema.no_info_after_validator_function(
            cls.parse, core_schema.str_schema()
        )

        def keep_parsed(value: Any, validate: core_schema.ValidatorFunctionWrapHandler) -> Any:
            return value if isinstance(value, cls) else validate(value)

        return core_schema.no_info_wrap_validator_function(
            keep_parsed,
            from_text,
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )


@dataclass(frozen=True)
class Address(ParsedText):
    """A listen address, `host:port` or `[v6]:port`; `host` is without brackets."""

    host: str
    port: int
    text: str

    @classmethod
    def parse(cls, text: str) -> Self:
        host, port = split_host_port(text)
        return cls(host, port, text.strip())


@dataclass(frozen=True)
class SendLimits(ParsedText):
    """`5/min,20/h,50/day`: send-count windows, shortest first; `off` is no windows."""

    windows: tuple[LimitWindow, ...]
    text: str

    @classmethod
    def parse(cls, text: str) -> Self:
        windows = tuple(LimitWindow(c, w) for c, w in parse_recipient_limits(text))
        return cls(windows, text.strip())


@dataclass(frozen=True)
class SuppressionRules(ParsedText):
    """`CODE=scope:ttl,…`: which Twilio error codes suppress resends, for whom, how long."""

    rules: dict[int, SuppressionRule]
    text: str

    @classmethod
    def parse(cls, text: str) -> Self:
        return cls(parse_suppression_rules(text), text.strip())


# -- lists, tokens, scopes and the store URL --------------------------------------------------
# A list or table comes as comma-separated text from env and flags, as an array from TOML.


def _parse_host_globs(value: object) -> object:
    if isinstance(value, str):
        value = split_commas(value)
    if isinstance(value, list):
        value = [check_host_glob(item) if isinstance(item, str) else item for item in value]
    return value


HostGlobs = Annotated[list[str], NoDecode, BeforeValidator(_parse_host_globs)]


def _parse_auth_tokens(value: object) -> object:
    pairs = parse_token_pairs(value) if isinstance(value, str) else value
    if isinstance(pairs, dict):
        for sid, token in pairs.items():
            if not ACCOUNT_SID.fullmatch(str(sid)):
                raise ValueError(f"invalid account SID {sid!r} (AC + 32 hex digits)")
            if isinstance(token, str) and not token.strip():
                raise ValueError(f"empty auth token for {sid}")
        return {sid: t.strip() if isinstance(t, str) else t for sid, t in pairs.items()}
    return pairs


AuthTokens = Annotated[dict[str, SecretStr], NoDecode, BeforeValidator(_parse_auth_tokens)]


def _parse_break_glass(value: object) -> object:
    if isinstance(value, str):
        value = split_commas(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        try:
            parse_break_glass(value)  # names the bad sender
        except ValueError as exc:
            raise ValueError(mask_phones_in(str(exc))) from None
    return value


BreakGlassSenders = Annotated[list[str], NoDecode, BeforeValidator(_parse_break_glass)]


@dataclass(frozen=True)
class KillSwitchScopes(ParsedText):
    """`global,account:AC…`: the scopes SENDGUARD_KILL_SWITCH engages, deduplicated; `text` is
    their canonical spelling (what check-config shows, phone numbers masked)."""

    scopes: tuple[Scope, ...]
    text: str

    @classmethod
    def parse(cls, text: str) -> Self:
        try:
            switches = parse_env_switches(text, now=0.0)  # names the bad scope
        except ValueError as exc:  # the bad scope may be someone's phone number
            raise ValueError(mask_phones_in(str(exc))) from None
        scopes = tuple(switch.scope for switch in switches)
        return cls(scopes, ",".join(str(scope) for scope in scopes))

    def switches(self, now: float) -> tuple[KillSwitch, ...]:
        """The configured switches as engaged at startup (`now`): no expiry, no release but
        a new configuration."""
        return tuple(
            KillSwitch(scope, CONFIG_REASON, CONFIG_AUTHOR, now, expires_at=None)
            for scope in self.scopes
        )


def _no_scope_is_unset(value: object) -> object:
    # `" , "` names no scope, like `""`: no kill switch is configured.
    return None if isinstance(value, str) and not split_commas(value) else value


ConfiguredKillSwitches = Annotated[
    KillSwitchScopes | None, NoDecode, BeforeValidator(_no_scope_is_unset)
]


def _check_store_url(value: str) -> str:
    checked = check_redis_url(value)
    if "+sentinel://" not in checked.lower():
        for seed in checked.split(","):
            check_redis_client_url(seed)
    return checked


StoreUrl = Annotated[str, AfterValidator(_check_store_url)]


# -- guarded routes ---------------------------------------------------------------------------


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


def default_routes() -> list[GuardedRoute]:
    return [
        GuardedRoute(name="messages", path="/2010-04-01/Accounts/{AccountSid}/Messages.json"),
        GuardedRoute(name="calls", path="/2010-04-01/Accounts/{AccountSid}/Calls.json"),
    ]


def _parse_routes(value: object) -> object:
    """The env var and flag give the routes as a JSON list; TOML gives a list already."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON ({exc.msg} at char {exc.pos})") from None
    return value


def _check_routes_unique(routes: list[GuardedRoute]) -> list[GuardedRoute]:
    names = [route.name for route in routes]
    targets = [(route.method, route.path) for route in routes]
    if len(set(names)) != len(names):
        raise ValueError("route names must be unique")
    if len(set(targets)) != len(targets):
        raise ValueError("two routes have the same method and path")
    return routes


GuardedRoutes = Annotated[
    list[GuardedRoute],
    NoDecode,  # JSON, parsed here with an error that says so, not by pydantic-settings
    BeforeValidator(_parse_routes),
    AfterValidator(_check_routes_unique),
]
