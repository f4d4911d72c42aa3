"""One canonical target (SPEC §2, issue 10 "Guard bypass"): the path that decides whether a
request is a guarded send is exactly the path forwarded upstream, so no spelling of a send path
(dot segments, `%2e`, encoded or repeated slashes, …) reaches Twilio as `passthrough`.

The oracle is the upstream's point of view: RFC 3986 normalisation (decode escapes of
unreserved characters, then remove_dot_segments), written here independently of the proxy.
A wider reading (every escape decoded, slashes merged, `;params` stripped, as some servers do)
must agree with it on every path the proxy accepts: a canonical path leaves nothing to read
differently.

(The pure-function tests import `proxy.server.target` inside the test, so the end-to-end tests
of this module still run, and fail, against code that predates it.)
"""

from __future__ import annotations

import asyncio
import re
import string
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from proxy.errors import UpstreamRefused
from proxy.guard.routes import RouteSpec, RouteTable
from tests.harness import ACCOUNT, basic_auth
from tests.webapps import serving

TABLE = RouteTable(
    [
        RouteSpec("messages", "POST", "/2010-04-01/Accounts/{AccountSid}/Messages.json", 600),
        RouteSpec("calls", "POST", "/2010-04-01/Accounts/{AccountSid}/Calls.json", 60),
    ]
)
BASE = f"/2010-04-01/Accounts/{ACCOUNT}"
MESSAGES = f"{BASE}/Messages.json"
FORM = b"To=%2B15558675310&From=%2B15005550006&Body=hi"


# -- the oracle: how an upstream resolves a path -------------------------------------------------

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_SEND = re.compile(
    r"/2010-04-01/Accounts/AC[0-9a-f]{32}/(?:Messages|Calls)(?:\.json|\.xml)?/?", re.IGNORECASE
)


def _decode_unreserved(path: str) -> str:
    def one(found: re.Match[str]) -> str:
        char = chr(int(found.group(1), 16))
        return char if char in _UNRESERVED else "%" + found.group(1).upper()

    return _ESCAPE.sub(one, path)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, step by step."""
    source, output = path, ""
    while source:
        if source.startswith("../"):
            source = source[3:]
        elif source.startswith("./"):
            source = source[2:]
        elif source.startswith("/./"):
            source = "/" + source[3:]
        elif source == "/.":
            source = "/"
        elif source.startswith("/../"):
            source = "/" + source[4:]
            output = output[: output.rfind("/")] if "/" in output else ""
        elif source == "/..":
            source = "/"
            output = output[: output.rfind("/")] if "/" in output else ""
        elif source in (".", ".."):
            source = ""
        else:
            start = 1 if source.startswith("/") else 0
            end = source.find("/", start)
            end = len(source) if end < 0 else end
            output += source[:end]
            source = source[end:]
    return output


def upstream_resolves(path: str) -> str:
    return remove_dot_segments(_decode_unreserved(path))


def is_send(path: str) -> bool:
    """The path, as an RFC 3986 upstream resolves it, is a send route."""
    return bool(_SEND.fullmatch(upstream_resolves(path)))


def is_send_widely(path: str) -> bool:
    """… as a lax upstream might resolve it: all escapes decoded, `;params` dropped, slashes
    merged, backslashes taken for slashes."""
    decoded = unquote(path).replace("\\", "/")
    decoded = "/".join(segment.partition(";")[0] for segment in decoded.split("/"))
    resolved = re.sub(r"/{2,}", "/", remove_dot_segments(decoded))
    return bool(_SEND.fullmatch(resolved))


def test_the_oracle_resolves_like_rfc_3986():
    assert remove_dot_segments("/a/b/c/./../../g") == "/a/g"
    assert remove_dot_segments("mid/content=5/../6") == "mid/6"
    assert upstream_resolves(f"{BASE}/X/%2E%2e/Messages.json") == MESSAGES
    assert upstream_resolves(f"{BASE}%2FMessages.json") == f"{BASE}%2FMessages.json"
    assert is_send(f"{BASE}/./%4Dessages.json") and not is_send(f"{BASE}/Messages/SM1.json")
    assert is_send_widely(f"{BASE}%2fMessages.json;x=1") and not is_send(f"{BASE}%2fMessages.json")


# -- the canonicalisation, as a pure function ----------------------------------------------------


def canonical(raw: str) -> Any:
    from proxy.server.target import canonical_target

    return canonical_target(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (MESSAGES, MESSAGES),
        ("/", "/"),
        (MESSAGES + "/", MESSAGES + "/"),  # one trailing slash: kept, routed as if absent
        (f"{BASE}/%4Dessages%2Ejson", MESSAGES),  # unreserved escapes are decoded
        (f"{BASE}/%4dessages.json", MESSAGES),
        ("/v1/PhoneNumbers/%2b15558675310", "/v1/PhoneNumbers/%2B15558675310"),
        ("/v1/Services/a%21b%40c", "/v1/Services/a!b@c"),  # as yarl would send them anyway
        ("/v1/Entities/%C3%A9t%C3%A9", "/v1/Entities/%C3%A9t%C3%A9"),
        ("/v1/Entities/a b|c", "/v1/Entities/a%20b%7Cc"),
        ("/.well-known/x/...", "/.well-known/x/..."),  # dotted names that are not dot segments
    ],
)
def test_canonical_paths(raw, expected):
    assert canonical(raw).path == expected


@pytest.mark.parametrize(
    "raw",
    [
        f"{BASE}/X/../Messages.json",
        f"{BASE}/./Messages.json",
        f"{BASE}/X/%2e%2e/Messages.json",
        f"{BASE}/X/%2E%2E/Messages.json",
        f"{BASE}/X/.%2e/Messages.json",
        f"{BASE}/X/%2e./Messages.json",
        f"{BASE}/%2e/Messages.json",
        f"{BASE}/Messages.json/..",
        f"{BASE}%2FMessages.json",
        f"{BASE}%2fMessages.json",
        f"{BASE}%5cMessages.json",
        f"{BASE}\\Messages.json",
        f"//2010-04-01/Accounts/{ACCOUNT}/Messages.json",
        f"{BASE}//Messages.json",
        f"{BASE}/Messages.json;x=1",
        f"{BASE}/Messages.json%3B",
        f"{BASE}/Messages.json%00",
        f"{BASE}/Messages.json%zz",
        f"{BASE}/Messages.json%4",
        f"{MESSAGES}#fragment",
        f"{BASE}/Messages.j\x7fson",
        f"{BASE}/Messagés.json",
        "http://api.twilio.com/2010-04-01",
    ],
)
def test_non_canonical_paths_are_refused(raw):
    with pytest.raises(UpstreamRefused) as refused:
        canonical(raw)
    assert refused.value.status == 400 and refused.value.decision.value == "refused"


def test_the_query_is_kept_byte_for_byte():
    query = "?To=%2b1555&x=%41&y=a+b%20c&z=../..&&w=%zz&v=/./"
    target = canonical(f"{BASE}/X/%4Dessages.json{query}")
    assert (target.path, target.query) == (f"{BASE}/X/Messages.json", query)
    assert str(target) == f"{BASE}/X/Messages.json{query}"


# Atoms that path segments are made of: the send route's own, and every troublesome spelling.
ATOMS = [
    "2010-04-01", "Accounts", "accounts", ACCOUNT, ACCOUNT.upper(), "Messages.json", "Messages",
    "Messages.xml", "MESSAGES.JSON", "Calls.json", "%4Dessages.json", "Messages%2Ejson",
    "SM123.json", "X", ".", "..", "%2e", "%2E", ".%2e", "%2e%2E", "%2f", "%2F", "%5C", "\\",
    ";x=1", "%3B", "%20", "%2B", "%zz", "~",
]  # fmt: skip
NOISE = ["", ".", "..", "%2e", "%2E%2e", "X/..", "X/%2e%2e", "X/.%2E", "a/b/../..", "./."]
SEPARATORS = ["/"] * 12 + ["//", "%2F", "%2f", "/./", "\\"]


@st.composite
def _respelled(draw: st.DrawFn, segment: str) -> str:
    """The same segment with some characters percent-encoded (either hex case), or re-cased."""
    out = []
    for char in segment:
        how = draw(st.sampled_from(["keep", "keep", "keep", "upper", "lower", "escape", "ESCAPE"]))
        if how == "escape":
            out.append(f"%{ord(char):02x}")
        elif how == "ESCAPE":
            out.append(f"%{ord(char):02X}")
        else:
            out.append(getattr(char, how)() if how != "keep" else char)
    return "".join(out)


@st.composite
def send_spellings(draw: st.DrawFn) -> str:
    """A send path, mangled: segments respelled, noise inserted, separators swapped."""
    segments = ["2010-04-01", "Accounts", ACCOUNT, draw(st.sampled_from(["Messages", "Calls"]))]
    segments[-1] += draw(st.sampled_from([".json", ".xml", "", ".JSON"]))
    path = ""
    for index, segment in enumerate(segments):
        path += draw(st.sampled_from(SEPARATORS)) if index else "/"
        if draw(st.integers(0, 4)) == 0:
            path += draw(st.sampled_from(NOISE)) + "/"
        path += draw(_respelled(segment)) if draw(st.booleans()) else segment
    return path + draw(st.sampled_from(["", "", "", "", "/", "/.", "/..", "//", "%2F", ";x"]))


free_paths = st.lists(
    st.lists(st.sampled_from(ATOMS), min_size=0, max_size=2).map("".join), max_size=7
).map(lambda segments: "/" + "/".join(segments))
paths = st.one_of(send_spellings(), free_paths)


@settings(max_examples=600, deadline=None)
@given(raw=paths)
def test_guarded_iff_the_forwarded_path_is_a_send(raw):
    try:
        target = canonical(raw)
    except UpstreamRefused:
        return  # refused with 400: nothing forwarded, nothing to guard
    guarded = TABLE.match("POST", target.path) is not None
    assert guarded == is_send(target.path), (raw, target.path)
    # The forwarded path means what the client's path meant, to a strict upstream and a lax one
    # alike: no send spelling slips past the router.
    assert is_send(raw) == is_send_widely(raw) == is_send_widely(target.path) == guarded, raw
    # The client sends the canonical path as it is: parsing it again changes nothing.
    assert URL("https://api.twilio.com" + target.path).raw_path == target.path


@settings(max_examples=200, deadline=None)
@given(raw=paths)
def test_canonicalisation_is_idempotent(raw):
    try:
        target = canonical(raw)
    except UpstreamRefused:
        return
    assert canonical(target.path).path == target.path


# -- end to end: a real proxy with a global kill switch, and a counting upstream ------------------


@pytest.fixture
async def counting_upstream():
    """An upstream that answers everything like Twilio (201 to a POST) and records the raw
    target of every request it sees."""
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        await request.read()
        status = 201 if request.method == "POST" else 200
        return web.json_response({"sid": "SM" + "0" * 32, "status": "queued"}, status=status)

    async with serving(answer) as url:
        yield url, seen


@pytest.fixture
async def killed_proxy(proxies, counting_upstream, shared_redis_url):
    url, _ = counting_upstream
    return await proxies.start(
        upstream=url, redis_url=shared_redis_url, kill_switch="global", recipient_limits="off"
    )


async def raw_request(base: str, method: str, target: str, body: bytes = b"") -> tuple[int, str]:
    """Send the target exactly as written (an HTTP client would normalise it first); returns
    the status and `X-Sendguard-Decision`."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {basic_auth()}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode("latin-1") + body)
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    headers = rest.partition(b"\r\n\r\n")[0].decode("latin-1")
    found = re.search(r"(?im)^X-Sendguard-Decision: *(\S+)", headers)
    return int(status_line.split()[1]), found.group(1) if found else ""


SEND_SPELLINGS = [
    MESSAGES,
    f"{BASE}/Calls.json",
    f"{BASE}/X/../Messages.json",
    f"{BASE}/./Messages.json",
    f"/2010-04-01/X/../Accounts/{ACCOUNT}/Messages.json",
    f"/x/../2010-04-01/Accounts/{ACCOUNT}/Messages.json",
    f"{BASE}/X/%2e%2e/Messages.json",
    f"{BASE}/X/%2E%2E/Messages.json",
    f"{BASE}/X/.%2e/Messages.json",
    f"{BASE}/%2e/Messages.json",
    f"{BASE}/X/Y/../../Messages.json",
    f"{BASE}/Messages.json/X/..",
    f"{BASE}%2FMessages.json",
    f"{BASE}%2fMessages.json",
    f"/2010-04-01/Accounts%2F{ACCOUNT}/Messages.json",
    f"{BASE}\\Messages.json",
    f"{BASE}%5CMessages.json",
    f"//2010-04-01/Accounts/{ACCOUNT}/Messages.json",
    f"/2010-04-01//Accounts/{ACCOUNT}/Messages.json",
    f"{BASE}//Messages.json",
    f"{BASE}/Messages.json/",
    f"{BASE}/Messages.xml",
    f"{BASE}/Messages",
    f"{BASE}/Calls",
    f"/2010-04-01/accounts/{ACCOUNT}/MESSAGES.JSON",
    f"/2010-04-01/ACCOUNTS/{ACCOUNT}/messages.Xml",
    f"{BASE}/%4Dessages.json",
    f"{BASE}/Messages%2Ejson",
    f"{BASE}/Messages.json;jsessionid=1",
    f"{BASE}/Messages.json%3B",
    f"{MESSAGES}?To=../..",
    f"/_sendguard/callbacks/v1/../../../2010-04-01/Accounts/{ACCOUNT}/Messages.json",
    f"/_sendguard/callbacks/v1/%2e%2e/%2e%2e/%2e%2e{MESSAGES}",
]


@pytest.mark.parametrize("spelling", SEND_SPELLINGS)
async def test_no_spelling_of_a_send_reaches_upstream_past_a_global_kill_switch(
    killed_proxy, counting_upstream, spelling
):
    _, seen = counting_upstream
    status, decision = await raw_request(killed_proxy.url, "POST", spelling, FORM)
    assert (status, decision) in {(503, "killed"), (400, "refused")}, spelling
    assert seen == []


async def test_reads_and_canonical_passthrough_still_flow(killed_proxy, counting_upstream):
    """The upstream is live, a kill switch stops sends only, and a passthrough is forwarded
    with its canonical path and its query as sent."""
    _, seen = counting_upstream
    assert await raw_request(killed_proxy.url, "GET", MESSAGES) == (200, "passthrough")
    query = "?To=%2B1555&DateSent%3E=2026-01-01&a=1&a=2&b=x+y%20z"
    target = f"{BASE}/%4Dessages/SM1.json{query}"
    assert await raw_request(killed_proxy.url, "GET", target) == (200, "passthrough")
    assert seen == [MESSAGES, f"{BASE}/Messages/SM1.json{query}"]


@pytest.mark.parametrize(
    "spelling",
    [f"{BASE}/X/../Messages.json", f"{BASE}%2FMessages/SM1.json", f"{BASE}//Messages.json"],
)
async def test_non_canonical_reads_are_refused_too(killed_proxy, counting_upstream, spelling):
    """Not sends, but non-canonical all the same: 400 `refused`, never forwarded."""
    _, seen = counting_upstream
    assert await raw_request(killed_proxy.url, "GET", spelling) == (400, "refused")
    assert seen == []


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=paths)
async def test_end_to_end_a_send_is_guarded_iff_the_upstream_would_see_a_send(
    killed_proxy, counting_upstream, raw
):
    _, seen = counting_upstream
    before = len(seen)
    status, decision = await raw_request(killed_proxy.url, "POST", raw, FORM)
    forwarded = seen[before:]
    if is_send(raw) or is_send_widely(raw):
        assert (status, decision) in {(503, "killed"), (400, "refused")}, raw
    if decision == "killed":
        assert is_send(raw) or is_send_widely(raw), raw
    for path in forwarded:  # whatever reached the upstream is no send by any reading
        assert not is_send(path) and not is_send_widely(path), (raw, path)
    assert forwarded == [] or decision == "passthrough", (raw, decision)
