"""The one upstream HTTP client, and the one boundary where its errors are translated.

The whole product rests on telling two failures apart:
  - `NotSent`: the connection was never established (refused, DNS, TLS handshake, connect
    timeout, no pool slot). Twilio cannot have created anything; a retry may send.
  - `SentNoAnswer`: the request was (or may have been) written and no complete answer came
    back (read timeout, reset, disconnect, truncated body). Twilio may have created the
    message: the outcome is UNKNOWN and must never be retried blindly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL


class NotSent(Exception):
    pass


class SentNoAnswer(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind  # "timeout" | "reset"
        super().__init__(f"{kind}: {detail}")


@contextmanager
def translate_upstream_errors() -> Iterator[None]:
    try:
        yield
    # Order matters: both connect-phase classes subclass broader send-phase ones.
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise NotSent(type(exc).__name__) from exc
    except (aiohttp.SocketTimeoutError, TimeoutError) as exc:
        raise SentNoAnswer("timeout", type(exc).__name__) from exc
    # A malformed answer (status line, headers, chunk framing) is no answer either.
    except (
        aiohttp.ClientConnectionError,
        aiohttp.ClientPayloadError,
        aiohttp.ClientResponseError,
        HttpProcessingError,
    ) as exc:
        raise SentNoAnswer("reset", type(exc).__name__) from exc


def attempt_deadline(connect_timeout: float, read_timeout: float) -> float:
    """The longest one guarded attempt may take in total: connecting, then the whole answer."""
    return connect_timeout + read_timeout


def guarded_send_deadline(
    connect_timeout: float, read_timeout: float, retry_429_budget: float
) -> float:
    """The longest a guarded send may spend upstream, 429 retries included: the last retry
    starts within the budget and gets one full attempt. The claim's lease is derived from it."""
    return retry_429_budget + attempt_deadline(connect_timeout, read_timeout)


# Statuses (and the method) whose answers carry no body whatever their Content-Length says.
_BODYLESS_STATUSES = frozenset({204, 304})
_READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class UpstreamResult:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class UpstreamClient:
    def __init__(
        self, *, connect_timeout: float, read_timeout: float, pool_size: int, max_body: int
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=connect_timeout,  # pool wait + connect: both happen before anything is sent
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._pool_size = pool_size
        self._max_body = max_body
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._pool_size)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,  # bodies pass through byte for byte
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),  # a proxy must never mix clients' cookies
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "UpstreamClient not started"
        return self._session

    def deadline(self, retry_429_budget: float) -> float:
        """`guarded_send_deadline` for this client's timeouts."""
        return guarded_send_deadline(self._connect_timeout, self._read_timeout, retry_429_budget)

    async def send(
        self, method: str, url: str, headers: Mapping[str, str] | CIMultiDict[str], body: bytes
    ) -> UpstreamResult:
        """Send and read the whole answer (guarded sends: it is stored and inspected). No
        total deadline here: the caller bounds the whole send, its retries included."""
        with translate_upstream_errors():
            async with self.session.request(
                method, _verbatim(url), headers=headers, data=body or None, allow_redirects=False
            ) as response:
                payload = await self._whole_body(method, response)
                return UpstreamResult(response.status, response.headers, payload)

    async def _whole_body(self, method: str, response: aiohttp.ClientResponse) -> bytes:
        """Every byte of the body up to its end, never just what happens to be buffered: an
        answer written in several TCP segments or chunks is read whole. An answer that ends
        before its declared length, or whose connection drops mid-body, raises (ClientPayloadError
        -> SentNoAnswer); one larger than max_body_bytes is no usable answer either."""
        declared = response.content_length
        if declared is not None and declared > self._max_body:
            raise SentNoAnswer("reset", "upstream answer larger than max_body_bytes")
        parts: list[bytes] = []
        size = 0
        while chunk := await response.content.read(_READ_CHUNK):
            size += len(chunk)
            if size > self._max_body:
                raise SentNoAnswer("reset", "upstream answer larger than max_body_bytes")
            parts.append(chunk)
        bodyless = method.upper() == "HEAD" or response.status in _BODYLESS_STATUSES
        if declared is not None and size != declared and not bodyless:
            # aiohttp's parser already refuses a short body; this is the belt to its braces.
            raise SentNoAnswer("reset", f"upstream body of {size} bytes, {declared} declared")
        return b"".join(parts)

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, headers: Mapping[str, str] | CIMultiDict[str], body: bytes
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send and hand back the open response (passthrough: streamed to the client)."""
        with translate_upstream_errors():
            async with self.session.request(
                method, _verbatim(url), headers=headers, data=body or None, allow_redirects=False
            ) as response:
                yield response


def _verbatim(url: str) -> URL:
    """The target exactly as built from the canonical request target (server/target.py): a
    plain string would be re-parsed by yarl, which re-encodes the query (`%4D` -> `M`)."""
    return URL(url, encoded=True)
