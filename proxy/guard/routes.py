"""Which requests are guarded sends, and which account they belong to."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

ACCOUNT_SID_RE = re.compile(r"AC[0-9a-fA-F]{32}")
_PLACEHOLDER_RE = re.compile(r"\{(\w+)\}")
_SLASHES_RE = re.compile(r"/{2,}")


@dataclass(frozen=True)
class RouteSpec:
    name: str
    method: str
    path: str  # template, e.g. /2010-04-01/Accounts/{AccountSid}/Messages.json
    dedup_window: float  # seconds the fingerprint of a keyless send is remembered


@dataclass(frozen=True)
class RouteMatch:
    route: RouteSpec
    account_sid: str


class RouteTable:
    """Matches method + path against the guarded-route templates (one compiled regex each)."""

    def __init__(self, routes: Iterable[RouteSpec]) -> None:
        self._routes = [(route, _compile(route.path)) for route in routes]

    def match(self, method: str, path: str) -> RouteMatch | None:
        """`path` is the request's canonical target path (proxy/server/target.py), the very
        path forwarded upstream; never `request.path`, which keeps dot segments."""
        path = normalise_path(path)
        for route, pattern in self._routes:
            if method.upper() != route.method.upper():
                continue
            found = pattern.fullmatch(path)
            if found:
                return RouteMatch(route, found.group("AccountSid"))
        return None


def normalise_path(path: str) -> str:
    """`//a/b/` and `/a/b` reach the same Twilio resource, so they must be guarded alike."""
    collapsed = _SLASHES_RE.sub("/", path)
    return collapsed.rstrip("/") or "/"


def _compile(template: str) -> re.Pattern[str]:
    """Template -> regex. Errs towards guarding: case-insensitive, and `X.json` also matches
    `X` and `X.xml`, because Twilio's 2010 API creates a message on any of the three."""
    extension = ""
    if template.lower().endswith(".json"):
        template, extension = template[: -len(".json")], r"(?:\.json|\.xml)?"
    parts: list[str] = []
    last = 0
    for placeholder in _PLACEHOLDER_RE.finditer(template):
        parts.append(re.escape(template[last : placeholder.start()]))
        name = placeholder.group(1)
        parts.append(f"(?P<{name}>{ACCOUNT_SID_RE.pattern})" if name == "AccountSid" else r"[^/]+")
        last = placeholder.end()
    parts.append(re.escape(template[last:]))
    return re.compile("".join(parts) + extension, re.IGNORECASE)
