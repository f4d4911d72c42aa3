"""What every admin command shares: --admin-url, --token-file, --json and the `Admin` handle.

    admin URL   --admin-url, else $SENDGUARD_ADMIN_URL, else the address in
                $SENDGUARD_ADMIN_LISTEN (0.0.0.0 / :: read as loopback), else
                http://127.0.0.1:8081
    token       --token-file PATH (or $SENDGUARD_ADMIN_TOKEN_FILE), else $SENDGUARD_ADMIN_TOKEN.
                There is deliberately no --token flag: a flag's value shows in `ps` and in shell
                history. The token is never printed.

Output is a readable table; `--json` prints the API's JSON instead (on an API error too: the
`{"error": …}` body on stdout, the message on stderr).
"""

from __future__ import annotations

import functools
import getpass
import json
import os
import socket
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from proxy.cli.admin_client import (
    ADMIN_LISTEN_ENV,
    ADMIN_URL_ENV,
    DEFAULT_ADMIN_URL,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    AdminClient,
    AdminCommandError,
    Answer,
    default_admin_url,
)


def resolve_admin_url(value: str | None) -> str:
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


def read_token(token_file: Path | None) -> str | None:
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
        client = AdminClient(resolve_admin_url(admin_url), read_token(token_file))
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


def author_option(func: Callable[..., None]) -> Callable[..., None]:
    return click.option(
        "--author",
        default=default_author,
        show_default="$USER@hostname",
        help="Who is making the change (audit log).",
    )(func)


def recipient_options(func: Callable[..., None]) -> Callable[..., None]:
    func = click.option("--to", required=True, help="The recipient, E.164 (+14155550100).")(func)
    return click.option("--account", required=True, metavar="AC…", help="The account SID.")(func)
