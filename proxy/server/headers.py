"""Which headers cross the proxy, in each direction, and which a replay carries."""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.upstream.hosts import UPSTREAM_HOST_HEADER

DECISION_HEADER = "X-Sendguard-Decision"
REQUEST_ID_HEADER = "X-Request-Id"
REPLAYED_HEADER = "Idempotent-Replayed"

# RFC 9110 §7.6.1 hop-by-hop headers, plus ones aiohttp recomputes for the new message.
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
        "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
        "Content-Length", "Host",
    )
)  # fmt: skip
# What a replay repeats of the original answer: enough for every SDK to parse it the same way.
# The body is replayed byte for byte, so an encoded one (an upstream that compressed although
# asked for identity) is only readable with its Content-Encoding.
REPLAYED_RESPONSE_HEADERS = (
    "Content-Type",
    "Content-Encoding",
    "Location",
    "Twilio-Request-Id",
    "Twilio-Request-Duration",
    "X-Home-Region",
    "X-Api-Domain",
)


_REPLAYED_LOWER = frozenset(h.lower() for h in REPLAYED_RESPONSE_HEADERS)
# What never goes upstream, without and with `identity_encoding` (built once: the hot path).
_UPSTREAM_DROP = _HOP_BY_HOP | {UPSTREAM_HOST_HEADER.lower()}
_UPSTREAM_DROP_IDENTITY = _UPSTREAM_DROP | {"accept-encoding"}


def _connection_listed(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    listed: set[str] = set()
    for value in headers.getall("Connection", []):
        listed.update(token.strip().lower() for token in value.split(","))
    return listed


def upstream_request_headers(
    incoming: CIMultiDictProxy[str], upstream_authority: str, *, identity_encoding: bool
) -> CIMultiDict[str]:
    """`identity_encoding`: ask for an unencoded answer (`Accept-Encoding: identity`, whatever
    the client accepts): a stored answer is replayed to any client, also one that cannot
    decode what the first client could. Merely dropping the header would not do: RFC 9110
    §12.5.3 lets a server pick any coding when the request names none."""
    drop = _UPSTREAM_DROP_IDENTITY if identity_encoding else _UPSTREAM_DROP
    if listed := _connection_listed(incoming):
        drop = drop | listed
    out: CIMultiDict[str] = CIMultiDict(
        (name, value) for name, value in incoming.items() if name.lower() not in drop
    )
    out["Host"] = upstream_authority
    if identity_encoding:
        out["Accept-Encoding"] = "identity"
    return out


def downstream_response_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    drop = _HOP_BY_HOP
    if listed := _connection_listed(upstream):
        drop = drop | listed
    return CIMultiDict((n, v) for n, v in upstream.items() if n.lower() not in drop)


def replayable_headers(upstream: CIMultiDictProxy[str]) -> tuple[tuple[str, str], ...]:
    return tuple((n, v) for n, v in upstream.items() if n.lower() in _REPLAYED_LOWER)


def header_pairs(headers: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    return CIMultiDict(headers)
