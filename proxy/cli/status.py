"""`sendguard status`: one instance's readiness, store, kill switches and request counts."""

from __future__ import annotations

from typing import Any

import click

from proxy.cli.admin import Admin, admin_command
from proxy.cli.render import cell, expires, pairs, table, when

_STORE_KINDS = {
    "embedded": "embedded (private to this instance)",
    "standalone": "standalone Redis",
    "sentinel": "Redis via Sentinel",
    "cluster": "Redis Cluster",
}
_STORE_MODES = {  # /readyz and /v1/status `store_mode`: which store guards sends right now
    "shared": "normal: sends guarded by the {store} store",
    "local": "local (OUTAGE: sends guarded by this instance's private store)",
    "closed": "closed (OUTAGE: guarded sends refused)",
    "open": "open (OUTAGE: sends forwarded UNGUARDED)",
}


def _store_mode_text(mode: Any, kind: Any) -> str:
    text = _STORE_MODES.get(mode) if isinstance(mode, str) else None
    if text is None:
        return cell(mode)
    return text.format(store=kind if isinstance(kind, str) and kind in _STORE_KINDS else "primary")


@click.command("status")
@admin_command
def status(admin: Admin) -> None:
    """Readiness, store kind and mode, engaged kill switches and request counts of one
    instance."""
    ready = admin.call("GET", "/readyz", accept=(503,)).payload or {}
    overview = admin.call("GET", "/v1/status").payload or {}

    def render() -> str:
        sync = overview.get("kill_switch_sync") or {}
        switches = overview.get("kill_switches") or []
        engaged = f"{len(switches)} engaged" if switches else "none engaged"
        engaged += " (store sync {}, push {})".format(
            "ok" if sync.get("synced") else "FAILING", "live" if sync.get("pushed") else "down"
        )
        kind = overview.get("store_kind", ready.get("store_kind"))
        mode = _store_mode_text(overview.get("store_mode", ready.get("store_mode")), kind)
        if ready.get("degraded") or overview.get("degraded_since"):
            mode += f" (DEGRADED since {when(overview.get('degraded_since'))})"
        store = _STORE_KINDS.get(kind, cell(kind)) if isinstance(kind, str) else cell(kind)
        store_up = overview.get("store_up", ready.get("store_up"))
        if store_up is not None:
            store += ", up" if store_up else ", DOWN"
        lines = [
            pairs(
                [
                    ("admin url", admin.client.base_url),
                    ("ready", "yes" if ready.get("ready") else "NO"),
                    ("shutting down", ready.get("shutting_down")),
                    ("store", store),
                    ("store mode", mode),
                    ("kill switches", engaged),
                    ("status-callback tee", "on" if overview.get("tee") else "off"),
                ]
            )
        ]
        if switches:
            rows = [
                (s.get("scope"), s.get("reason"), s.get("author"), expires(s)) for s in switches
            ]
            lines += ["", table(("scope", "reason", "author", "expires"), rows)]
        counts = overview.get("requests_by_decision") or {}
        lines.append("")
        if counts:
            by_count = sorted(counts.items(), key=lambda item: (-float(item[1]), item[0]))
            lines.append(table(("decision", "requests"), by_count))
        else:
            lines.append("no requests yet")
        return "\n".join(lines)

    admin.show({"readyz": ready, "status": overview}, render)
