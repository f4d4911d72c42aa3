"""Admin client commands: `sendguard kill-switch|suppressions|breakers|records|status`.

Each command is one or two HTTP calls to the admin API (proxy/admin/app.py) of a running
sendguard, made with the standard library (urllib, 10 s timeout, no redirects followed, no
HTTP(S)_PROXY: the bearer token goes straight to the admin URL and nowhere else).

    admin URL   --admin-url, else $SENDGUARD_ADMIN_URL, else the address in
                $SENDGUARD_ADMIN_LISTEN (0.0.0.0 / :: read as loopback), else
                http://127.0.0.1:8081
    token       --token-file PATH (or $SENDGUARD_ADMIN_TOKEN_FILE), else $SENDGUARD_ADMIN_TOKEN.
                There is deliberately no --token flag: a flag's value shows in `ps` and in shell
                history. The token is never printed.

Output is a readable table; `--json` prints the API's JSON instead (on an API error too: the
`{"error": …}` body on stdout, the message on stderr).

Exit codes: 0 done (also: releasing a switch that was not engaged), 1 the admin API answered
an error (its message on stderr), 2 usage error, 3 the admin URL cannot be reached,
4 unauthorized (401: no token, the wrong one, or a server started without one).
"""

from __future__ import annotations

import functools
import getpass
import http.client
import json
import os
import shlex
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import IO, Any

import click

from proxy import __version__
from proxy.config_values import split_host_port

ADMIN_URL_ENV = "SENDGUARD_ADMIN_URL"
ADMIN_LISTEN_ENV = "SENDGUARD_ADMIN_LISTEN"
TOKEN_ENV = "SENDGUARD_ADMIN_TOKEN"  # noqa: S105 -- a variable name, not a secret
TOKEN_FILE_ENV = "SENDGUARD_ADMIN_TOKEN_FILE"  # noqa: S105
DEFAULT_ADMIN_URL = "http://127.0.0.1:8081"
TIMEOUT = 10.0
MAX_ANSWER_BYTES = 4 * 1024 * 1024

EXIT_API_ERROR = 1
EXIT_UNREACHABLE = 3
EXIT_UNAUTHORIZED = 4

_WILDCARD_HOSTS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104


# -- errors -----------------------------------------------------------------------------------


class AdminCommandError(click.ClickException):
    """The admin API answered an error (exit 1). Printed as `sendguard: <message>` on stderr;
    with --json the API's error body (if any) goes to stdout first, so that `… --json | jq`
    sees JSON whatever happened."""

    exit_code = EXIT_API_ERROR

    def __init__(self, message: str, raw: Any = None) -> None:
        super().__init__(message)
        self.raw = raw
        self.as_json = False

    def show(self, file: IO[Any] | None = None) -> None:
        if self.as_json and self.raw is not None:
            click.echo(json.dumps(self.raw, indent=2))
        click.echo(f"sendguard: {self.format_message()}", err=True)


class Unreachable(AdminCommandError):
    exit_code = EXIT_UNREACHABLE


class Unauthorized(AdminCommandError):
    exit_code = EXIT_UNAUTHORIZED


# -- the HTTP client --------------------------------------------------------------------------


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the bearer token to another address: answer it as an error."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


@dataclass(frozen=True)
class Answer:
    status: int
    payload: Any


@dataclass
class AdminClient:
    base_url: str  # no trailing slash
    token: str | None
    timeout: float = TIMEOUT
    _verified: bool = field(default=False, init=False, repr=False)

    def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | None] | None = None,
        body: Mapping[str, str | None] | None = None,
        accept: Sequence[int] = (),
    ) -> Answer:
        """One request; a 2xx (or a status in `accept`) is returned, anything else raises
        AdminCommandError with the exit code it means."""
        self.verify()
        if query:
            path += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = None
        if body is not None:
            data = json.dumps({k: v for k, v in body.items() if v is not None}).encode()
        status, _, raw = self._send(method, path, data, auth=path.startswith("/v1/"))
        return self._answer(status, raw, accept)

    def verify(self) -> None:
        """Before the token goes anywhere: is this sendguard's admin port? The proxy port
        forwards every path upstream, so a token sent there would end up at Twilio. The proxy
        marks each answer with X-Sendguard-Decision; the admin API never does."""
        if self._verified:
            return
        status, headers, raw = self._send("GET", "/healthz", None, auth=False)
        if headers.get("X-Sendguard-Decision"):
            raise AdminCommandError(
                f"{self.base_url} is sendguard's proxy port, not its admin port (the token was "
                f"not sent); point --admin-url at the admin listener (default port 8081)"
            )
        try:
            healthy = status == 200 and json.loads(raw).get("status") == "ok"
        except (ValueError, UnicodeDecodeError, AttributeError):
            healthy = False
        if not healthy:
            raise AdminCommandError(
                f"{self.base_url} does not look like a sendguard admin API (GET /healthz "
                f"answered HTTP {status}); check --admin-url (or {ADMIN_URL_ENV})"
            )
        self._verified = True

    def _send(
        self, method: str, path: str, data: bytes | None, *, auth: bool
    ) -> tuple[int, Message, bytes]:
        headers = {"Accept": "application/json", "User-Agent": f"sendguard-cli/{__version__}"}
        if auth and self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        if data is not None:
            headers["Content-Type"] = "application/json"
        url = self.base_url + path
        request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                return response.status, response.headers, response.read(MAX_ANSWER_BYTES)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.headers, exc.read(MAX_ANSWER_BYTES)
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, not HTTP at all
            raise self._unreachable(exc) from None

    def _answer(self, status: int, raw: bytes, accept: Sequence[int]) -> Answer:
        try:
            payload: Any = json.loads(raw) if raw.strip() else None
        except (ValueError, UnicodeDecodeError):
            payload = None
            if 200 <= status < 300 or status in accept:
                raise AdminCommandError(
                    f"the admin API at {self.base_url} answered HTTP {status} without JSON; "
                    f"is --admin-url the admin port (not the proxy port)?"
                ) from None
        if 200 <= status < 300 or status in accept:
            return Answer(status, payload)
        if status == 401:
            raise Unauthorized(f"unauthorized (401): {self._unauthorized_hint(payload)}", payload)
        message = _error_message(payload)
        if message is None:  # not the admin API's error shape
            message = f"{self.base_url} answered HTTP {status}"
            if 300 <= status < 400:
                message += " (a redirect); point --admin-url at the admin port itself"
            else:
                message += "; is --admin-url the admin port (not the proxy port)?"
        else:
            message = f"{message} (HTTP {status})"
        raise AdminCommandError(message, payload)

    def _unauthorized_hint(self, payload: Any) -> str:
        # The admin API names which 401 it is (proxy/admin/app.py); an older one does not.
        error = payload.get("error") if isinstance(payload, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        if code == "admin-token-not-configured":
            return (
                f"this sendguard has no admin token, so its admin API refuses every call; "
                f"start it with {TOKEN_ENV}=<a secret> and give the CLI the same {TOKEN_ENV}"
            )
        if self.token is None:
            return f"no admin token: set {TOKEN_ENV} (or pass --token-file)"
        return (
            f"the admin API refused the token: check {TOKEN_ENV} (or --token-file) "
            f"matches the server's {TOKEN_ENV}"
        )

    def _unreachable(self, reason: object) -> Unreachable:
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, TimeoutError):
            why = f"no answer within {self.timeout:g} s"
        elif isinstance(reason, socket.gaierror):
            why = "unknown host"
        elif isinstance(reason, http.client.HTTPException | ConnectionError):
            why = "the connection failed or the answer was not HTTP"
        else:
            why = _clean(str(reason)) or type(reason).__name__
        return Unreachable(
            f"cannot reach the admin API at {self.base_url} ({why}); check --admin-url "
            f"(or {ADMIN_URL_ENV}) and that sendguard is running"
        )


def _error_message(payload: Any) -> str | None:
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return _clean(error["message"])
    return None


# -- resolving the admin URL, the token and the author ----------------------------------------


def default_admin_url(environ: Mapping[str, str] | None = None) -> str:
    """$SENDGUARD_ADMIN_LISTEN as a URL (the address the local server binds), else the default."""
    environ = os.environ if environ is None else environ
    listen = environ.get(ADMIN_LISTEN_ENV, "").strip()
    if not listen:
        return DEFAULT_ADMIN_URL
    try:
        host, port = split_host_port(listen)
    except ValueError as exc:
        raise click.UsageError(f"{ADMIN_LISTEN_ENV}: {exc}; or pass --admin-url") from None
    host = _WILDCARD_HOSTS.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _admin_url(value: str | None) -> str:
    url = (value or "").strip() or default_admin_url()
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a malformed port
    except ValueError:
        raise click.BadParameter("not a URL", param_hint="--admin-url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter("use http(s)://host:port", param_hint="--admin-url")
    if parts.username is not None or parts.password is not None:
        raise click.BadParameter(
            f"no credentials in the URL: the token goes in {TOKEN_ENV}", param_hint="--admin-url"
        )
    if parts.query or parts.fragment:
        raise click.BadParameter("no query or fragment, just http(s)://host:port[/prefix]")
    return url.rstrip("/")


def _token(token_file: Path | None) -> str | None:
    if token_file is not None:
        try:
            text: str | None = token_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
            raise click.BadParameter(
                f"cannot read {token_file}: {reason}", param_hint="--token-file"
            ) from None
        source = "--token-file"
    else:
        text = os.environ.get(TOKEN_ENV)
        source = TOKEN_ENV
    token = (text or "").strip()
    if not token:
        if token_file is not None:
            raise click.BadParameter(f"{token_file} is empty", param_hint="--token-file")
        return None
    if not (token.isascii() and token.isprintable()):  # said without echoing the token
        raise click.UsageError(f"{source}: the admin token must be printable ASCII on one line")
    return token


def default_author() -> str:
    user = os.environ.get("USER") or os.environ.get("LOGNAME")
    if not user:
        try:
            user = getpass.getuser()
        except (OSError, KeyError):
            user = "unknown"
    return f"{user}@{socket.gethostname() or 'localhost'}"


# -- output helpers ---------------------------------------------------------------------------


def _clean(text: str) -> str:
    """No terminal control sequences from a server's answer reach the operator's terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return _clean(str(value))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain aligned columns, two spaces apart, headers upper-cased."""
    cells = [[h.upper() for h in headers], *([_cell(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def pairs(items: Sequence[tuple[str, Any]]) -> str:
    """`label  value` lines, labels aligned."""
    width = max(len(label) for label, _ in items)
    return "\n".join(f"{label.ljust(width)}  {_cell(value)}" for label, value in items)


def when(iso: Any, epoch: Any = None) -> str:
    """`2026-01-02 03:04:05 UTC`, plus `(in 29m 58s)` / `(3m ago)` when the epoch is known."""
    if not isinstance(iso, str) or not iso:
        return "-"
    try:
        moment = datetime.fromisoformat(iso).astimezone(UTC)
    except ValueError:
        return _clean(iso)
    text = moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(epoch, int | float) and not isinstance(epoch, bool):
        delta = float(epoch) - time.time()
        span = _span(abs(delta))
        text += f" (in {span})" if delta >= 0 else f" ({span} ago)"
    return text


def _span(seconds: float) -> str:
    left = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    if left or not parts:
        parts.append(f"{left}s")
    return " ".join(parts[:2])


# -- the shared options -----------------------------------------------------------------------


@dataclass(frozen=True)
class Admin:
    client: AdminClient
    as_json: bool

    def call(self, method: str, path: str, **kwargs: Any) -> Answer:
        try:
            return self.client.call(method, path, **kwargs)
        except AdminCommandError as exc:
            exc.as_json = self.as_json
            raise

    def show(self, payload: Any, render: Callable[[], str]) -> None:
        if self.as_json:
            click.echo(json.dumps(payload, indent=2))
            return
        try:
            text = render()
        except (KeyError, TypeError, AttributeError, ValueError):  # another version's shape
            raise AdminCommandError(
                "unexpected answer from the admin API (a different sendguard version?); "
                "rerun with --json to see it"
            ) from None
        click.echo(text)


def admin_command(func: Callable[..., None]) -> Callable[..., None]:
    """Add --admin-url, --token-file and --json; the command gets an `Admin` first."""

    @functools.wraps(func)
    def wrapper(admin_url: str | None, token_file: Path | None, as_json: bool, **kw: Any) -> None:
        client = AdminClient(_admin_url(admin_url), _token(token_file))
        func(Admin(client, as_json), **kw)

    options = [
        click.option(
            "--admin-url",
            envvar=ADMIN_URL_ENV,
            metavar="URL",
            help=f"The admin API of a running sendguard. [env: {ADMIN_URL_ENV}; default: "
            f"the address in {ADMIN_LISTEN_ENV}, else {DEFAULT_ADMIN_URL}]",
        ),
        click.option(
            "--token-file",
            envvar=TOKEN_FILE_ENV,
            type=click.Path(dir_okay=False, path_type=Path),
            help=f"Read the admin bearer token from this file (e.g. a mounted Secret). "
            f"[env: {TOKEN_FILE_ENV}; default: the token in ${TOKEN_ENV}]",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer."),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def _author_option(func: Callable[..., None]) -> Callable[..., None]:
    return click.option(
        "--author",
        default=default_author,
        show_default="$USER@hostname",
        help="Who is making the change (audit log).",
    )(func)


def _recipient_options(func: Callable[..., None]) -> Callable[..., None]:
    func = click.option("--to", required=True, help="The recipient, E.164 (+14155550100).")(func)
    return click.option("--account", required=True, metavar="AC…", help="The account SID.")(func)


# -- kill switches ----------------------------------------------------------------------------

_SCOPE_HELP = "global | account:AC… | sender:<+E.164|MG…|ID> | recipient:<+E.164> | prefix:<+CC>"


@click.group("kill-switch")
def kill_switch() -> None:
    """Stop guarded sends by scope, on every instance within a second."""


@kill_switch.command("engage")
@click.option("--scope", required=True, help=_SCOPE_HELP)
@click.option("--reason", required=True, help="Why (shown to operators, audit-logged).")
@_author_option
@click.option("--ttl", metavar="DURATION", help="Release by itself after this long (30m, 2h).")
@admin_command
def engage(admin: Admin, scope: str, reason: str, author: str, ttl: str | None) -> None:
    """Engage a kill switch: guarded sends in SCOPE get 503 until it is released."""
    body = {"scope": scope, "reason": reason, "author": author, "ttl": ttl}
    payload = admin.call("POST", "/v1/kill-switches", body=body).payload

    def render() -> str:
        switch = payload["kill_switch"]
        scope = _cell(switch["scope"])
        lines = [
            f"kill switch engaged: {scope}",
            pairs(
                [
                    ("  reason", switch.get("reason")),
                    ("  author", switch.get("author")),
                    ("  expires", _expires(switch)),
                ]
            ),
        ]
        replaced = payload.get("replaced")
        if replaced:
            lines.append(
                f"  (replaced the switch engaged by {_cell(replaced.get('author'))}: "
                f"{_cell(replaced.get('reason'))})"
            )
        lines.append(f"release with: sendguard kill-switch release --scope {shlex.quote(scope)}")
        return "\n".join(lines)

    admin.show(payload, render)


def _expires(switch: Mapping[str, Any]) -> str:
    if not switch.get("expires"):
        return "never (until released)"
    return when(switch["expires"], switch.get("expires_at"))


@kill_switch.command("release")
@click.option("--scope", required=True, help=_SCOPE_HELP)
@click.option("--reason", help="Why (audit-logged).")
@_author_option
@admin_command
def release(admin: Admin, scope: str, reason: str | None, author: str) -> None:
    """Release a kill switch; releasing one that is not engaged is not an error."""
    path = "/v1/kill-switches/" + urllib.parse.quote(scope.strip(), safe="")
    payload = admin.call("DELETE", path, body={"author": author, "reason": reason}).payload
    name = _cell(payload.get("scope", scope))
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
                _expires(s) if s.get("expires") else "never",
                s.get("source"),
            )
            for s in switches
        ]
        return table(("scope", "reason", "author", "since", "expires", "source"), rows)

    admin.show(payload, render)


# -- suppressions -----------------------------------------------------------------------------


@click.group("suppressions")
def suppressions() -> None:
    """What sendguard learned not to resend to a recipient (opt-outs, undeliverable content)."""


@suppressions.command("list")
@_recipient_options
@admin_command
def list_suppressions(admin: Admin, account: str, to: str) -> None:
    """List one recipient's suppressions."""
    payload = admin.call("GET", "/v1/suppressions", query={"account": account, "to": to}).payload
    items = payload.get("suppressions") or []
    who = _cell(payload.get("to"))

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
@_recipient_options
@click.option(
    "--field",
    help="Clear only this one: `to`, `from:<sender>` (the sender in full: `list` masks it) or "
    "`msg:<id>`, as in the FIELD column of `list`. Default: all of them.",
)
@click.option("--reason", required=True, help="Why (audit-logged).")
@_author_option
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
    who = _cell(payload.get("to"))
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
@_recipient_options
@admin_command
def show_breaker(admin: Admin, account: str, to: str) -> None:
    """Show a recipient's breaker state and sends in each limit window."""
    payload = admin.call("GET", "/v1/breakers", query={"account": account, "to": to}).payload

    def render() -> str:
        state = _cell(payload.get("state"))
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
@_recipient_options
@click.option("--reason", required=True, help="Why (audit-logged).")
@_author_option
@admin_command
def reset_breaker(admin: Admin, account: str, to: str, reason: str, author: str) -> None:
    """Close a recipient's breaker and forget the sends its limits counted."""
    body = {"account": account, "to": to, "reason": reason, "author": author}
    payload = admin.call("DELETE", "/v1/breakers", body=body).payload
    who = _cell(payload.get("to"))
    admin.show(
        payload,
        lambda: (
            f"breaker reset for {who}: closed, recent sends forgotten"
            if payload.get("reset")
            else f"nothing to reset for {who}: breaker closed, no recent sends"
        ),
    )


# -- dedup records ----------------------------------------------------------------------------


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
@_author_option
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
            head = f"resolved as sent: {_cell(record.get('id'))} is {_cell(record['resolved_sid'])}"
            then = "retries now replay that message (fetched from Twilio by the next retry)"
        else:
            head = f"resolved as not sent: {_cell(record.get('id'))} released"
            then = "the next retry of this send goes to Twilio"
        return f"{head}\n  {then}"

    admin.show(payload, render)


# -- status -----------------------------------------------------------------------------------


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
        return _cell(mode)
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
        store = _STORE_KINDS.get(kind, _cell(kind)) if isinstance(kind, str) else _cell(kind)
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
                (s.get("scope"), s.get("reason"), s.get("author"), _expires(s)) for s in switches
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


ADMIN_COMMANDS: tuple[click.Command, ...] = (
    kill_switch,
    suppressions,
    breakers,
    records,
    status,
)
