"""`sendguard kill-switch engage|release|list`: stop guarded sends by scope."""

from __future__ import annotations

import shlex
import urllib.parse

import click

from proxy.cli.admin import Admin, admin_command, author_option
from proxy.cli.render import cell, expires, pairs, table, when

_SCOPE_HELP = "global | account:AC… | sender:<+E.164|MG…|ID> | recipient:<+E.164> | prefix:<+CC>"


@click.group("kill-switch")
def kill_switch() -> None:
    """Stop guarded sends by scope, on every instance within a second."""


@kill_switch.command("engage")
@click.option("--scope", required=True, help=_SCOPE_HELP)
@click.option("--reason", required=True, help="Why (shown to operators, audit-logged).")
@author_option
@click.option("--ttl", metavar="DURATION", help="Release by itself after this long (30m, 2h).")
@admin_command
def engage(admin: Admin, scope: str, reason: str, author: str, ttl: str | None) -> None:
    """Engage a kill switch: guarded sends in SCOPE get 503 until it is released."""
    body = {"scope": scope, "reason": reason, "author": author, "ttl": ttl}
    payload = admin.call("POST", "/v1/kill-switches", body=body).payload

    def render() -> str:
        switch = payload["kill_switch"]
        scope = cell(switch["scope"])
        lines = [
            f"kill switch engaged: {scope}",
            pairs(
                [
                    ("  reason", switch.get("reason")),
                    ("  author", switch.get("author")),
                    ("  expires", expires(switch)),
                ]
            ),
        ]
        replaced = payload.get("replaced")
        if replaced:
            lines.append(
                f"  (replaced the switch engaged by {cell(replaced.get('author'))}: "
                f"{cell(replaced.get('reason'))})"
            )
        lines.append(f"release with: sendguard kill-switch release --scope {shlex.quote(scope)}")
        return "\n".join(lines)

    admin.show(payload, render)


@kill_switch.command("release")
@click.option("--scope", required=True, help=_SCOPE_HELP)
@click.option("--reason", help="Why (audit-logged).")
@author_option
@admin_command
def release(admin: Admin, scope: str, reason: str | None, author: str) -> None:
    """Release a kill switch; releasing one that is not engaged is not an error."""
    path = "/v1/kill-switches/" + urllib.parse.quote(scope.strip(), safe="")
    payload = admin.call("DELETE", path, body={"author": author, "reason": reason}).payload
    name = cell(payload.get("scope", scope))
    admin.show(
        payload,
        lambda: (
            f"kill switch released: {name}"
            if payload.get("released")
            else f"{name}: not engaged (nothing to release)"
        ),
    )


@kill_switch.command("list")
@admin_command
def list_switches(admin: Admin) -> None:
    """List the active kill switches (from the config and from the store)."""
    payload = admin.call("GET", "/v1/kill-switches").payload
    switches = payload.get("kill_switches") or []
    if payload.get("synced") is False and not admin.as_json:
        warning = "warning: the store could not be read: these are the last known switches"
        click.echo(warning, err=True)

    def render() -> str:
        if not switches:
            return "no kill switch engaged"
        rows = [
            (
                s.get("scope"),
                s.get("reason"),
                s.get("author"),
                when(s.get("created")),
                expires(s) if s.get("expires") else "never",
                s.get("source"),
            )
            for s in switches
        ]
        return table(("scope", "reason", "author", "since", "expires", "source"), rows)

    admin.show(payload, render)
