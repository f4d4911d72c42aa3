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
from multidict import CIMultiDict, CIMultiDictProxy


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
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        raise SentNoAnswer("reset", type(exc).__name__) from exc


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

    async def send(
        self, method: str, url: str, headers: Mapping[str, str] | CIMultiDict[str], body: bytes
    ) -> UpstreamResult:
        """Send and read the whole answer (guarded sends: it is stored and inspected)."""
        with translate_upstream_errors():
            async with self.session.request(
                method, url, headers=headers, data=body or None, allow_redirects=False
            ) as response:
                payload = await response.content.read(self._max_body + 1)
                if len(payload) > self._max_body:
                    raise SentNoAnswer("reset", "upstream answer larger than max_body_bytes")
                return UpstreamResult(response.status, response.headers, payload)

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, headers: Mapping[str, str] | CIMultiDict[str], body: bytes
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send and hand back the open response (passthrough: streamed to the client)."""
        with translate_upstream_errors():
            async with self.session.request(
                method, url, headers=headers, data=body or None, allow_redirects=False
            ) as response:
                yield response
