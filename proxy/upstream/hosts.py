"""Upstream host selection: the default upstream, or an allowlisted `X-Sendguard-Upstream-Host`.

The proxy is never an open relay: the header must be a plain DNS name (optionally `:443`)
that matches an allowlist glob, else the request is refused with 400 `refused`. An allowlisted
host is reached over https on port 443 only; the one exception is the configured default
upstream itself, named exactly as configured (`host` or `host:port`, e.g. a local fake on
`127.0.0.1:9000`), which keeps its own scheme and port.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from yarl import URL

from proxy.errors import UpstreamRefused

UPSTREAM_HOST_HEADER = "X-Sendguard-Upstream-Host"
HTTPS_PORT = 443
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_RE = re.compile(rf"(?P<host>{_LABEL}(?:\.{_LABEL})*)(?::(?P<port>[0-9]{{1,5}}))?")


@dataclass(frozen=True)
class Upstream:
    scheme: str
    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> Upstream:
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host or parsed.port is None:
            raise ValueError(f"not an http(s) upstream URL: {url!r}")
        return cls(parsed.scheme, parsed.host, parsed.port)

    @property
    def default_port(self) -> bool:
        return self.port == (443 if self.scheme == "https" else 80)

    @property
    def authority(self) -> str:
        return self.host if self.default_port else f"{self.host}:{self.port}"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.authority}"


def select_upstream(
    header: str | None, default: Upstream, allowed: Sequence[str], *, pinned: bool = False
) -> Upstream:
    """The upstream a request goes to. `pinned` (the sandbox) sends every allowed host to the
    default: a demo with real credentials and a client naming api.twilio.com must never
    reach the real Twilio."""
    if header is None:
        return default
    found = _HOST_RE.fullmatch(header.strip().lower())
    if found is None:
        raise UpstreamRefused(f"{UPSTREAM_HOST_HEADER} is not a valid host name")
    host = found.group("host")
    if not any(fnmatchcase(host, pattern.lower()) for pattern in allowed):
        raise UpstreamRefused(f"upstream host {host!r} is not in the allowlist")
    port_text = found.group("port")
    port = int(port_text) if port_text is not None else None
    is_default = host == default.host and port in (None, default.port)
    if port not in (None, HTTPS_PORT) and not is_default:
        # Allowlisted hosts are reached over https on 443 only: a port is no way around the
        # allowlist (another service on a Twilio host, or a local port behind a glob).
        raise UpstreamRefused(f"{UPSTREAM_HOST_HEADER} may name port {HTTPS_PORT} only")
    if pinned or is_default:
        return default  # the configured upstream keeps its own scheme (e.g. a local http fake)
    return Upstream("https", host, HTTPS_PORT)
