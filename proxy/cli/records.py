"""`sendguard records show|unknown|resolve`: dedup records and the UNKNOWN ledger."""

from __future__ import annotations

import urllib.parse
from datetime import datetime
from typing import Any

import click

from proxy.cli.admin import Admin, admin_command, author_option
from proxy.cli.render import cell, pairs, table, when


@click.group("records")
def records() -> None:
    """Dedup records: what sendguard stored about a send, and the UNKNOWN ledger."""


@records.command("show")
@click.option("--message-sid", metavar="SM…", help="The Message SID Twilio returned.")
@click.option("--account", metavar="AC…", help="With --key: the account SID.")
@click.option("--key", help="With --account: the Idempotency-Key the app sent.")
@click.option("--id", "record_id", metavar="ID", help="A record id (from `records unknown`).")
@admin_command
def show_record(
    admin: Admin,
    message_sid: str | None,
    account: str | None,
    key: str | None,
    record_id: str | None,
) -> None:
    """Show one send's record, by --message-sid, by --id, or by --account and --key."""
    if sum(1 for given in (message_sid, record_id, account or key) if given) > 1:
        raise click.UsageError("give one of --message-sid, --id, or --account and --key")
    if not (message_sid or record_id) and not (account and key):
        raise click.UsageError("give --message-sid SM…, --id ID, or --account AC… and --key KEY")
    query: dict[str, str | None]
    if message_sid:
        query = {"message_sid": message_sid}
    elif record_id:
        query = {"id": record_id}
    else:
        query = {"account": account, "key": key}
    payload = admin.call("GET", "/v1/records", query=query).payload

    def render() -> str:
        record = payload.get("record") or {}
        items: list[tuple[str, Any]] = [
            ("id", record.get("id")),
            ("state", record.get("state")),
            ("message sid", record.get("message_sid")),
            ("upstream status", record.get("upstream_status")),
            ("claimed at", when(record.get("claimed_at"))),
            ("lease until", when(record.get("lease_until"))),
            ("unknown reason", record.get("unknown_reason")),
        ]
        if record.get("state") == "unknown":
            items += [
                ("reconciliations", record.get("reconciliations")),
                ("resolved sid", record.get("resolved_sid")),
            ]
        send = record.get("send") or {}
        items += [(f"send.{name}", value) for name, value in sorted(send.items())]
        return pairs(items)

    admin.show(payload, render)


@records.command("unknown")
@click.option("--limit", type=click.IntRange(1, 500), default=100, show_default=True,
              help="List at most this many.")  # fmt: skip
@admin_command
def unknown_records(admin: Admin, limit: int) -> None:
    """List the UNKNOWN sends (Twilio's answer was lost: they may have gone out), oldest first.

    Check each one in Twilio's console (same account, To, sender and about that time), then
    settle it with `sendguard records resolve ID --sent SM… | --not-sent --reason …`.
    """
    payload = admin.call("GET", "/v1/records", query={"state": "unknown", "limit": str(limit)})
    body = payload.payload
    entries = body.get("records") or []

    def render() -> str:
        if not entries:
            return "no UNKNOWN sends"
        rows = [
            (
                e.get("id"),
                e.get("account"),
                e.get("to"),
                e.get("from"),
                e.get("route"),
                when(e.get("claimed_at"), _epoch(e.get("claimed_at"))),
                e.get("reason"),
                e.get("reconciliations"),
                e.get("resolved_sid"),
            )
            for e in entries
        ]
        headers = ("id", "account", "to", "from", "route", "claimed", "reason", "lookups", "sid")
        text = table(headers, rows)
        if body.get("truncated"):
            text += f"\n(the oldest {len(entries)} shown; raise --limit for more)"
        if any(e.get("resolved_sid") for e in entries):
            text += "\n(a SID is known: the next retry of that send fetches it and replays it)"
        return text

    admin.show(body, render)


def _epoch(iso: Any) -> float | None:
    if not isinstance(iso, str):
        return None
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


_HEX = frozenset("0123456789abcdef")


def _message_sid(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not (len(value) == 34 and value[:2] in ("SM", "MM") and set(value[2:]) <= _HEX):
        raise click.BadParameter("a Message SID: SM + 32 hex digits", ctx, param)
    return value


@records.command("resolve")
@click.argument("record_id", metavar="ID")
@click.option("--sent", "sent_sid", metavar="SM…", callback=_message_sid,
              help="It went out, as this Message SID: retries replay that message.")  # fmt: skip
@click.option("--not-sent", is_flag=True, help="It never went out: the next retry sends it.")
@click.option("--reason", required=True, help="How you know (audit-logged): a ticket, a check.")
@author_option
@admin_command
def resolve_record(
    admin: Admin, record_id: str, sent_sid: str | None, not_sent: bool, reason: str, author: str
) -> None:
    """Settle an UNKNOWN send ID (from `records unknown`) with what Twilio's console shows."""
    if bool(sent_sid) == not_sent:
        raise click.UsageError("give exactly one of --sent SM… or --not-sent")
    body: dict[str, str | None] = {
        "outcome": "sent" if sent_sid else "not-sent",
        "message_sid": sent_sid,
        "reason": reason,
        "author": author,
    }
    path = f"/v1/records/{urllib.parse.quote(record_id.strip(), safe='')}/resolve"
    payload = admin.call("POST", path, body=body).payload

    def render() -> str:
        record = payload["record"]
        if payload["outcome"] == "sent":
            head = f"resolved as sent: {cell(record.get('id'))} is {cell(record['resolved_sid'])}"
            then = "retries now replay that message (fetched from Twilio by the next retry)"
        else:
            head = f"resolved as not sent: {cell(record.get('id'))} released"
            then = "the next retry of this send goes to Twilio"
        return f"{head}\n  {then}"

    admin.show(payload, render)
