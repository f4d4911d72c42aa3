"""The operator console (docs/contract.md#admin, issue 16): a static page at `/ui/` on the
admin port.

    GET /ui/                      the page (open: it is static and holds no data)
    GET /ui/console.js|.css|…     its assets (the files of proxy/admin/ui/, nothing else)
    GET /v1/decisions?after=N     recent decisions of this instance (bearer token, like /v1/)

Everything the page shows comes from the `/v1/` API with `Authorization: Bearer <token>`. The
token is typed once and kept in the tab's sessionStorage: never in a URL, never in a cookie.
Every `/ui/` answer carries a strict CSP (scripts, styles and fetches from this origin only,
no inline code, Trusted Types on, no framing, no form submission), `X-Frame-Options: DENY`,
`Referrer-Policy: no-referrer` and `Cache-Control: no-store`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web

from proxy import __version__
from proxy.admin.params import AdminInputError, Params
from proxy.server.recent import RECENT, RecentDecisions

UI_PREFIX = "/ui/"
DECISIONS_DEFAULT_LIMIT = 200
DECISIONS_MAX_LIMIT = 1000

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "font-src 'none'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",  # forms are handled by script; never submitted (token in a URL)
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",  # no HTML string sinks: the page builds nodes
        "trusted-types 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
# Token-protected JSON is never to be kept by a browser cache.
API_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}

_CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str


def load_assets() -> dict[str, Asset]:
    """The files of proxy/admin/ui/ (package data), read once: name -> bytes and type."""
    folder = resources.files("proxy.admin") / "ui"
    assets: dict[str, Asset] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _CONTENT_TYPES:
            assets[entry.name] = Asset(entry.read_bytes(), _CONTENT_TYPES[suffix])
    if "index.html" not in assets:
        raise RuntimeError("the operator console's index.html is missing from proxy/admin/ui/")
    return assets


def add_console_routes(app: web.Application, proxy_app: web.Application) -> None:
    """Register `/ui/` and `/v1/decisions` on the admin app (its bearer middleware guards
    /v1/; /ui/ is open and static)."""
    assets = load_assets()

    async def page(request: web.Request) -> web.Response:
        name = request.match_info.get("name") or "index.html"
        asset = assets.get(name)
        if asset is None:
            raise web.HTTPNotFound(reason="no such console file")
        return web.Response(
            body=asset.body,
            content_type=asset.content_type,
            charset="utf-8" if asset.content_type.startswith("text/") else None,
        )

    async def to_page(request: web.Request) -> web.Response:
        raise web.HTTPPermanentRedirect(UI_PREFIX)

    async def decisions(request: web.Request) -> web.Response:
        recent = proxy_app.get(RECENT)
        params = await Params.of(request)
        after = _whole(params, "after", 0, None)
        limit = _whole(params, "limit", DECISIONS_DEFAULT_LIMIT, DECISIONS_MAX_LIMIT)
        return web.json_response(decisions_view(recent, after, limit))

    app.router.add_get("/ui", to_page)
    app.router.add_get(UI_PREFIX, page)
    app.router.add_get(UI_PREFIX + "{name:[A-Za-z0-9_-]+\\.[a-z]+}", page)
    app.router.add_get("/v1/decisions", decisions)
    app.on_response_prepare.append(_security_headers)


def decisions_view(recent: RecentDecisions | None, after: int, limit: int) -> dict[str, Any]:
    if recent is None:
        entries: list[dict[str, Any]] = []
        missed, last, capacity = 0, 0, 0
    else:
        entries, missed = recent.after(after, limit)
        last, capacity = recent.last, recent.capacity
    restarted = after > last  # the reader's `after` is from before this process started
    # The reader's next `after`: its newest entry, or (nothing new) where it stands.
    next_after = entries[-1]["seq"] if entries else (last if restarted else after)
    return {
        "decisions": entries,  # oldest first
        "next": next_after,
        "restarted": restarted,
        "last": last,
        "missed": missed,  # newer than `after` but already out of the ring
        "capacity": capacity,
        "version": __version__,
    }


def _whole(params: Params, name: str, default: int, maximum: int | None) -> int:
    raw = params.text(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 18 or (maximum is not None and not 1 <= int(raw) <= maximum):
        bound = f"from 1 to {maximum}" if maximum is not None else "0 or more"
        raise AdminInputError(f"{name!r} must be a whole number {bound}")
    return int(raw)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    path = request.path
    if path == "/ui" or path.startswith(UI_PREFIX):
        response.headers.update(SECURITY_HEADERS)
    elif path.startswith("/v1/"):
        for name, value in API_HEADERS.items():
            response.headers.setdefault(name, value)
