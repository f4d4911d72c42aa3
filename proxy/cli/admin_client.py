"""The admin API's HTTP client: one request at a time, the token sent only to a verified admin port.

Made with the standard library (urllib, 10 s timeout, no redirects followed, no HTTP(S)_PROXY:
the bearer token goes straight to the admin URL and nowhere else). Every failure is an
`AdminCommandError` whose exit code says what went wrong:

    1 the admin API answered an error (its message on stderr), 3 the admin URL cannot be
    reached, 4 unauthorized (401: no token, the wrong one, or a server started without one).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from typing import IO, Any

import click

from proxy import __version__
from proxy.cli.render import clean
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
            why = clean(str(reason)) or type(reason).__name__
        return Unreachable(
            f"cannot reach the admin API at {self.base_url} ({why}); check --admin-url "
            f"(or {ADMIN_URL_ENV}) and that sendguard is running"
        )


def _error_message(payload: Any) -> str | None:
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return clean(error["message"])
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
