"""Setting values: parsing, validation and masking, free of the settings model itself.

Every check raises ValueError with a message that never echoes a value that may be secret
(tokens, Redis URLs with passwords, phone numbers in kill-switch scopes).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr

ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}", re.ASCII)
E164 = re.compile(r"\+[1-9][0-9]{1,14}", re.ASCII)
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?", re.ASCII)
_HOST_GLOB = re.compile(r"[a-z0-9*?.\[\]!-]+", re.ASCII)
_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)
_PHONE_LIKE = re.compile(r"\+?[0-9]{6,}", re.ASCII)

_LIMIT_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}
_LIMITS_HINT = "use N/unit pairs like '5/min,20/h,50/day' with unit s, min, h or day; or 'off'"

_URL_KEYS = ("upstream", "redis_url", "public_url")


def parse_recipient_limits(spec: str) -> list[tuple[int, float]]:
    """Parse "5/min,20/h" into [(5, 60.0), (20, 3600.0)], shortest window first; "off" -> []."""
    text = spec.strip().lower()
    if text == "off":
        return []
    windows: dict[float, int] = {}
    for part in text.split(","):
        count, _, unit = (piece.strip() for piece in part.partition("/"))
        if not count.isascii() or not count.isdigit() or unit not in _LIMIT_UNITS:
            raise ValueError(f"invalid limit {part.strip()!r} ({_LIMITS_HINT})")
        if int(count) <= 0:
            raise ValueError(f"invalid limit {part.strip()!r}: count must be positive")
        window = _LIMIT_UNITS[unit]
        if window in windows:
            raise ValueError(f"two limits for the same window ({part.strip()!r})")
        windows[window] = int(count)
    return [(count, window) for window, count in sorted(windows.items())]


def split_host_port(address: str) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"; the host is returned without brackets."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not _PORT.fullmatch(port) or int(port) > 65535:
        raise ValueError(f"invalid address {address!r} (use host:port, e.g. 127.0.0.1:8080)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address in {address!r}") from None
    elif ":" in host:
        raise ValueError(f"invalid address {address!r}: put IPv6 addresses in brackets, [::1]:80")
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"invalid host in {address!r} (use 0.0.0.0 for all interfaces)")
    return host, int(port)


def split_commas(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def check_http_url(value: str, *, allow_path: bool) -> str:
    value = value.strip()
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a malformed port
    except ValueError:
        raise ValueError(f"invalid URL {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid URL {value!r} (use http(s)://host[:port])")
    if parts.query or parts.fragment or (not allow_path and parts.path not in ("", "/")):
        what = "query or fragment" if allow_path else "path, query or fragment"
        raise ValueError(f"URL {value!r} must not have a {what}")
    return value.rstrip("/")


SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


@dataclass(frozen=True)
class SentinelTarget:
    """`redis+sentinel://[user:password@]host:port[,host:port…]/<master>[/db]`: the sentinels
    to ask, the master's name, and the credentials of the data nodes."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int
    username: str | None
    password: str | None
    tls: bool


def parse_sentinel_url(value: str) -> SentinelTarget:
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise ValueError("not a redis+sentinel:// URL")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts, userinfo = netloc, ""
    username, colon, password = userinfo.partition(":")
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("each sentinel must be host:port, e.g. sentinel-0:26379")
        sentinels.append((host.strip("[]"), int(port)))
    parts = [unquote(part) for part in path.split("/") if part]
    if not parts or len(parts) > 2:
        raise ValueError("the path must name the master: /<master-name>[/db]")
    if len(parts) == 2 and not parts[1].isdigit():
        raise ValueError("the db after the master name must be a number")
    return SentinelTarget(
        sentinels=tuple(sentinels),
        master=parts[0],
        db=int(parts[1]) if len(parts) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) if colon else None,
        tls=scheme.lower() == "rediss+sentinel",
    )


def check_redis_url(value: str) -> str:
    """One URL, several comma-separated (a cluster's seed nodes; each is checked), or a
    redis+sentinel:// URL with its sentinels comma-separated in the authority."""
    if value.strip().lower().startswith(SENTINEL_SCHEMES):
        parse_sentinel_url(value.strip())
        return value.strip()
    seeds = [seed.strip() for seed in value.split(",")]
    if len(seeds) > 1:
        for seed in seeds:
            if not seed:
                raise ValueError("empty seed URL in a comma-separated list")
            _check_one_redis_url(seed)
            if urlsplit(seed).scheme == "unix":
                raise ValueError("cluster seeds are redis:// or rediss:// URLs, not unix://")
        return ",".join(seeds)
    return _check_one_redis_url(value)


def _check_one_redis_url(value: str) -> str:
    # Never echo the URL: it may carry a password.
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a malformed port
    except ValueError:
        raise ValueError("malformed URL") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            f"unsupported scheme {parts.scheme!r} (use redis://, rediss://, unix://, "
            "redis+sentinel://)"
        )
    if parts.scheme == "unix" and not parts.path:
        raise ValueError("unix:// URL needs a socket path, e.g. unix:///run/redis.sock")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("URL needs a host, e.g. redis://redis:6379/0")
    return value


# Query parameters redis-py takes from a URL that sendguard's store clients can use.
_REDIS_URL_OPTIONS = frozenset(
    {"client_name", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile"}
)


def check_redis_client_url(url: str) -> None:
    """What redis-py itself would refuse (or silently misread) only once sendguard runs:
    a non-numeric db in the path, a bad or unknown query parameter. Never echoes the URL."""
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


def check_host_glob(pattern: str) -> str:
    pattern = pattern.strip().lower()
    if not _HOST_GLOB.fullmatch(pattern):
        raise ValueError(f"invalid host pattern {pattern!r} (a host glob like *.twilio.com)")
    return pattern


def parse_token_pairs(value: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in split_commas(value):
        sid, sep, token = item.partition("=")
        sid = sid.strip()
        if not sep:  # don't echo the item: it may be a bare token
            raise ValueError("expected AC…=token pairs separated by commas")
        if sid in pairs:
            raise ValueError(f"account {sid} listed twice")
        pairs[sid] = token
    return pairs


def mask(name: str, value: Any, *, keep_secret_type: bool = False) -> Any:
    """A value safe to log: secrets hidden, URL passwords and phone numbers masked."""
    if name in _URL_KEYS and isinstance(value, str):
        return mask_url_password(value)
    if name == "kill_switch" and isinstance(value, str):
        return ",".join(mask_scope(scope) for scope in value.split(","))
    if keep_secret_type:  # repr: SecretStr already renders as '**********'
        return value
    return hide_secrets(value)


def hide_secrets(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "***"
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, dict):
        return {key: hide_secrets(item) for key, item in value.items()}
    if isinstance(value, list):
        return [hide_secrets(item) for item in value]
    return value


def mask_url_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo = f"{parts.username or ''}:***"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def mask_scope(scope: str) -> str:
    kind, _, arg = scope.partition(":")
    if kind in ("recipient", "sender"):
        return f"{kind}:{_PHONE_LIKE.sub(mask_number, arg)}"
    return scope


def mask_number(match: re.Match[str]) -> str:
    number = match.group(0)
    return number[:3] + "*" * (len(number) - 5) + number[-2:]
