"""`sendguard suppressions list|clear` and `sendguard breakers show|reset`: one recipient's
learned suppressions and circuit breaker."""

from __future__ import annotations

import click

from proxy.cli.admin import Admin, admin_command, author_option, recipient_options
from proxy.cli.render import cell, pairs, table, when


@click.group("suppressions")
def suppressions() -> None:
    """What sendguard learned not to resend to a recipient (opt-outs, undeliverable content)."""


@suppressions.command("list")
@recipient_options
@admin_command
def list_suppressions(admin: Admin, account: str, to: str) -> None:
    """List one recipient's suppressions."""
    payload = admin.call("GET", "/v1/suppressions", query={"account": account, "to": to}).payload
    items = payload.get("suppressions") or []
    who = cell(payload.get("to"))

    def render() -> str:
        if not items:
            return f"no suppressions for {who}"
        rows = [
            (
                s.get("field"),
                s.get("scope"),
                s.get("sender"),
                s.get("code"),
                s.get("source"),
                when(s.get("until")),
                s.get("active"),
            )
            for s in items
        ]
        headers = ("field", "scope", "sender", "code", "source", "until", "active")
        return f"suppressions for {who}:\n" + table(headers, rows)

    admin.show(payload, render)


@suppressions.command("clear")
@recipient_options
@click.option(
    "--field",
    help="Clear only this one: `to`, `from:<sender>` (the sender in full: `list` masks it) or "
    "`msg:<id>`, as in the FIELD column of `list`. Default: all of them.",
)
@click.option("--reason", required=True, help="Why (audit-logged).")
@author_option
@admin_command
def clear_suppressions(
    admin: Admin, account: str, to: str, field: str | None, reason: str, author: str
) -> None:
    """Clear a recipient's suppressions, so that sends to them are forwarded again."""
    if field and "*" in field:  # no stored field holds '*': this is `list`'s masked form
        raise click.BadParameter(
            "give the sender in full (e.g. from:+14155550100), not the masked form `list` shows",
            param_hint="--field",
        )
    body = {"account": account, "to": to, "field": field, "reason": reason, "author": author}
    payload = admin.call("DELETE", "/v1/suppressions", body=body).payload
    cleared = payload.get("cleared") or 0
    who = cell(payload.get("to"))
    admin.show(
        payload,
        lambda: (
            f"cleared {cleared} suppression{'s' if cleared != 1 else ''} for {who}"
            if cleared
            else f"no suppression {field!r} for {who}"
            if field
            else f"no suppressions to clear for {who}"
        ),
    )


# -- breakers ---------------------------------------------------------------------------------


@click.group("breakers")
def breakers() -> None:
    """A recipient's circuit breaker and recent send counts."""


@breakers.command("show")
@recipient_options
@admin_command
def show_breaker(admin: Admin, account: str, to: str) -> None:
    """Show a recipient's breaker state and sends in each limit window."""
    payload = admin.call("GET", "/v1/breakers", query={"account": account, "to": to}).payload

    def render() -> str:
        state = cell(payload.get("state"))
        if payload.get("open_until"):
            state += f" until {when(payload['open_until'])}"
        head = pairs(
            [
                ("recipient", payload.get("to")),
                ("breaker", state),
                ("trips", payload.get("trips")),
                ("probe in flight", payload.get("probe_in_flight")),
            ]
        )
        windows = payload.get("sends_in_windows") or {}
        if not windows:
            return head + "\nlimits      off"
        rows = [(label, count) for label, count in windows.items()]
        return head + "\n\n" + table(("limit", "sends in window"), rows)

    admin.show(payload, render)


@breakers.command("reset")
@recipient_options
@click.option("--reason", required=True, help="Why (audit-logged).")
@author_option
@admin_command
def reset_breaker(admin: Admin, account: str, to: str, reason: str, author: str) -> None:
    """Close a recipient's breaker and forget the sends its limits counted."""
    body = {"account": account, "to": to, "reason": reason, "author": author}
    payload = admin.call("DELETE", "/v1/breakers", body=body).payload
    who = cell(payload.get("to"))
    admin.show(
        payload,
        lambda: (
            f"breaker reset for {who}: closed, recent sends forgotten"
            if payload.get("reset")
            else f"nothing to reset for {who}: breaker closed, no recent sends"
        ),
    )
