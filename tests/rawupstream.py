"""A fake Twilio on a raw socket, for what an HTTP framework will not let a test server do.

`RawTwilio` speaks HTTP/1.1 by hand (asyncio.start_server), so a Messages create can be answered
the ways real networks and real servers answer: in one write, in two TCP writes a few ms apart,
chunked, with a Content-Length larger than the body and then a close, gzip-encoded although the
request did not ask for it, or trickled one byte at a time. Every answer carries realistic
Twilio Message JSON with a fresh `SM…` SID.

Ground truth: `creates` counts the Messages creates this server *received* (whole requests,
whatever the answer then did), and `requests` keeps every request as it arrived on the wire.

    async with RawTwilio(answer=Answer.SPLIT) as fake:
        proxy = await proxies.start(upstream=fake.url)
        ...
        assert fake.creates == 1

`answer_next(Answer.SHORT)` queues a way to answer the next create only (then the default
again); `fetch_answer` sets how a fetch of a created message (GET …/Messages/SM….json) is
written. The message list always answers an empty page (Twilio's list lags creates by minutes,
TWILIO-FACTS.md §2.5), so a reconciliation finds nothing here unless a test adds to `listed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import re
import secrets
import socket
from collections import deque
from dataclasses import dataclass, field
from email.utils import formatdate
from enum import StrEnum
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from multidict import CIMultiDict

API_VERSION = "2010-04-01"
_MESSAGES = re.compile(rf"^/{API_VERSION}/Accounts/(AC[0-9a-f]{{32}})/Messages\.json$")
_MESSAGE = re.compile(rf"^/{API_VERSION}/Accounts/(AC[0-9a-f]{{32}})/Messages/(SM[0-9a-f]{{32}})\.json$")  # fmt: skip
_REASONS = {200: "OK", 201: "CREATED", 400: "BAD REQUEST", 401: "UNAUTHORIZED", 404: "NOT FOUND"}
_MAX_HEAD = 64 * 1024


class Answer(StrEnum):
    NORMAL = "normal"  # head and body in one write
    SPLIT = "split"  # head + the body's first bytes, then the rest `split_gap` later
    CHUNKED = "chunked"  # Transfer-Encoding: chunked, `chunks` chunks `chunk_gap` apart
    SHORT = "short"  # Content-Length larger than the body, then the connection closes
    GZIP = "gzip"  # Content-Encoding: gzip although the request did not ask for it
    TRICKLE = "trickle"  # `trickle_bytes` bytes every `trickle_every` seconds


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    target: str
    headers: CIMultiDict[str]
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def form(self) -> list[tuple[str, str]]:
        return parse_qsl(self.body.decode(), keep_blank_values=True)


@dataclass(frozen=True)
class Created:
    """One create as this server answered it: the Message JSON, and the body bytes it put on
    the wire for it (gzip-compressed for Answer.GZIP; the whole JSON even for SHORT)."""

    sid: str
    json_bytes: bytes
    wire_body: bytes
    answer: Answer

    @property
    def message(self) -> dict[str, Any]:
        return dict(json.loads(self.json_bytes))


@dataclass
class RawTwilio:
    answer: Answer = Answer.NORMAL  # how creates are answered unless `answer_next` says otherwise
    fetch_answer: Answer = Answer.NORMAL  # how a fetch of a created message is written
    split_at: int = 100  # SPLIT: body bytes in the first write
    split_gap: float = 0.005
    chunks: int = 4
    chunk_gap: float = 0.002
    short_by: int = 100  # SHORT: Content-Length says this many bytes more than are sent
    trickle_every: float = 0.05
    trickle_bytes: int = 1
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[ReceivedRequest] = field(default_factory=list)
    created: list[Created] = field(default_factory=list)
    listed: list[dict[str, Any]] = field(default_factory=list)  # what the list API shows
    _plan: deque[Answer] = field(default_factory=deque, init=False, repr=False)
    _server: asyncio.Server | None = field(default=None, init=False, repr=False)
    _connections: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)
    _created_event: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> RawTwilio:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> RawTwilio:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- what a test looks at ------------------------------------------------------------------

    @property
    def create_requests(self) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.method == "POST" and _MESSAGES.match(r.path)]

    @property
    def creates(self) -> int:
        return len(self.create_requests)

    def answer_next(self, answer: Answer, times: int = 1) -> None:
        self._plan.extend([answer] * times)

    async def wait_for_creates(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while self.creates < count:
                self._created_event.clear()
                await self._created_event.wait()

    # -- the server ----------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:  # every write its own segment: SPLIT and TRICKLE mean it
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                self.requests.append(request)
                keep_open = await self._answer(request, writer)
                if not keep_open or request.headers.get("Connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return  # the client went away (e.g. sendguard cut a trickle at its deadline)
        except asyncio.CancelledError:
            return  # stop(): asyncio's server would log a cancelled handler as an error
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        """Write the answer; False when the connection must close after it."""
        if not request.headers.get("Authorization", "").startswith("Basic "):
            return await self._write(writer, 401, _error(20003, "Authenticate", 401), Answer.NORMAL)
        created = _MESSAGES.match(request.path)
        if created and request.method == "POST":
            answer = self._plan.popleft() if self._plan else self.answer
            status, message = self._create(created.group(1), request)
            body = _json(message)
            self._created_event.set()
            if status == 201:
                wire = gzip.compress(body, mtime=0) if answer is Answer.GZIP else body
                self.created.append(Created(message["sid"], body, wire, answer))
            return await self._write(writer, status, body, answer)
        if created and request.method == "GET":
            return await self._write(writer, 200, _json(self._page(request)), Answer.NORMAL)
        fetched = _MESSAGE.match(request.path)
        if fetched and request.method == "GET":
            for one in self.created:
                if one.sid == fetched.group(2):
                    return await self._write(writer, 200, one.json_bytes, self.fetch_answer)
        return await self._write(
            writer, 404, _error(20404, "The requested resource was not found", 404),
            Answer.NORMAL,
        )  # fmt: skip

    async def _write(
        self, writer: asyncio.StreamWriter, status: int, body: bytes, answer: Answer
    ) -> bool:
        """Write one answer the way `answer` says; False when the connection must close."""
        headers = _twilio_headers()
        if answer is Answer.GZIP:
            body = gzip.compress(body, mtime=0)
            headers += [("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")]
        if answer is Answer.CHUNKED:
            headers.append(("Transfer-Encoding", "chunked"))
            writer.write(_head(status, headers))
            size = -(-len(body) // self.chunks)
            for start in range(0, len(body), size):
                piece = body[start : start + size]
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                await writer.drain()
                await asyncio.sleep(self.chunk_gap)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        declared = len(body) + (self.short_by if answer is Answer.SHORT else 0)
        headers.append(("Content-Length", str(declared)))
        head = _head(status, headers)
        if answer is Answer.SPLIT:
            writer.write(head + body[: self.split_at])
            await writer.drain()
            await asyncio.sleep(self.split_gap)
            writer.write(body[self.split_at :])
        elif answer is Answer.TRICKLE:
            writer.write(head)
            await writer.drain()
            for start in range(0, len(body), self.trickle_bytes):
                await asyncio.sleep(self.trickle_every)
                writer.write(body[start : start + self.trickle_bytes])
                await writer.drain()
        else:
            writer.write(head + body)
        await writer.drain()
        return answer is not Answer.SHORT  # a short answer ends with the connection

    def _create(self, account: str, request: ReceivedRequest) -> tuple[int, dict[str, Any]]:
        form = dict(request.form)
        if not form.get("To"):
            return 400, _error_dict(21604, "A 'To' phone number is required.", 400)
        if not (form.get("From") or form.get("MessagingServiceSid")):
            return 400, _error_dict(21603, "A 'From' phone number is required.", 400)
        return 201, message_json(account, form)

    def _page(self, request: ReceivedRequest) -> dict[str, Any]:
        uri = request.target
        return {
            "end": max(len(self.listed) - 1, 0),
            "first_page_uri": uri,
            "messages": list(self.listed),
            "next_page_uri": None,
            "page": 0,
            "page_size": 50,
            "previous_page_uri": None,
            "start": 0,
            "uri": uri,
        }


def message_json(account: str, form: dict[str, str]) -> dict[str, Any]:
    """A Messages create answer as Twilio writes it (key order of Twilio's own examples)."""
    sid = "SM" + secrets.token_hex(16)
    now = formatdate(usegmt=True).replace("GMT", "+0000")
    uri = f"/{API_VERSION}/Accounts/{account}/Messages/{sid}"
    body = form.get("Body", "")
    return {
        "body": body,
        "num_segments": str(max(1, -(-len(body) // 160))),
        "direction": "outbound-api",
        "from": form.get("From") or None,
        "to": form["To"],
        "date_updated": now,
        "price": None,
        "error_message": None,
        "uri": uri + ".json",
        "account_sid": account,
        "num_media": str(sum(1 for key in form if key == "MediaUrl")),
        "status": "accepted" if form.get("MessagingServiceSid") else "queued",
        "messaging_service_sid": form.get("MessagingServiceSid"),
        "sid": sid,
        "date_sent": None,
        "date_created": now,
        "error_code": None,
        "price_unit": "USD",
        "api_version": API_VERSION,
        "subresource_uris": {"media": uri + "/Media.json", "feedback": uri + "/Feedback.json"},
    }


def _json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()  # Twilio's separators: ", " and ": "


def _error_dict(code: int, message: str, status: int) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def _error(code: int, message: str, status: int) -> bytes:
    return _json(_error_dict(code, message, status))


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'UNKNOWN')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _twilio_headers() -> list[tuple[str, str]]:
    return [
        ("Date", formatdate(usegmt=True)),
        ("Content-Type", "application/json; charset=utf-8"),
        ("Twilio-Concurrent-Requests", "1"),
        ("Twilio-Request-Id", "RQ" + secrets.token_hex(16)),
        ("Twilio-Request-Duration", "0.087"),
        ("X-Home-Region", "us1"),
        ("X-API-Domain", "api.twilio.com"),
        ("X-Powered-By", "AT-5000"),
        ("X-Shenanigans", "none"),
        ("Access-Control-Allow-Origin", "*"),
        ("Strict-Transport-Security", "max-age=31536000"),
    ]


async def _read_request(reader: asyncio.StreamReader) -> ReceivedRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None  # the client closed an idle keep-alive connection
    if len(head) > _MAX_HEAD:
        raise ConnectionError("request head too large")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, target, _version = request_line.split(" ", 2)
    headers: CIMultiDict[str] = CIMultiDict()
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers.add(name.strip(), value.strip())
    if headers.get("Transfer-Encoding", "").lower() == "chunked":
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")  # no trailers
        body = b"".join(parts)
    else:
        body = await reader.readexactly(int(headers.get("Content-Length", "0")))
    return ReceivedRequest(method, target, headers, body)
