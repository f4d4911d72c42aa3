"""One canonical request target (docs/contract.md#canonical-target): the path that decides
whether a request is a guarded send is exactly the path forwarded upstream.

`canonical_target(raw)` is computed once per request, from the raw request-target as the client
sent it, before any routing; the router matches `Target.path` and the upstream URL is built from
the same `Target`. The canonical path is the RFC 3986 normal form that the upstream client
(yarl) would produce anyway, so nothing between here and Twilio rewrites it:

  - a `%XX` escape of a character that may stand literally in a path (unreserved, sub-delims
    other than `+`, `:` and `@`) is decoded (`%4D` -> `M`, `%2e` -> `.`); any other escape is
    kept, with upper-case hex (`%2b` -> `%2B`);
  - a character that may not stand literally in a path (space, `"`, `<`, `{`, …) is escaped.

Refused with 400 `refused` (Twilio's API paths contain none of them, and each is a spelling that
some server on the way resolves differently from the router):

  - a dot segment, `.` or `..`, in any spelling (`%2e`, `%2E`, `.%2e`, …);
  - an encoded slash or backslash (`%2F`, `%5C`) and a raw backslash;
  - an empty segment (repeated slashes, `//`); one trailing slash is kept and routed as if absent;
  - a `;` (path parameters, which some servers strip before routing), raw or as `%3B`;
  - a control character (`%00`-`%1F`, `%7F`), raw or escaped; a raw non-ASCII character (its
    escaped UTF-8, `%C3%A9`, is fine); a malformed escape (`%zz`, `%4`);
  - a fragment (`#`), which never belongs in a request-target and the client would drop.

The query string is kept byte for byte (`Target.query`): only the path is canonicalised.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from aiohttp import web

from proxy.errors import UpstreamRefused

# Escapes of these are decoded (RFC 3986 `pchar` minus `+`, which yarl keeps escaped); `;` is
# refused below, after decoding.
_DECODED = frozenset(string.ascii_letters + string.digits + "-._~!$&'()*,;=:@")
_LITERAL = "".join(sorted(_DECODED | {"+"}))  # may stand in a canonical path as they are
# An escape, or one character that is not a literal (a stray `%` included): rewritten or refused.
_SPECIAL_RE = re.compile(rf"%[0-9A-Fa-f]{{2}}|[^/{re.escape(_LITERAL)}]")
# Already canonical: literals only (no `;`), no empty segment, no segment starting with `.`
# (which covers `.` and `..`; other dotted names such as `.well-known` take the slow path).
_PLAIN_RE = re.compile(rf"(?:/(?!\.)[{re.escape(_LITERAL.replace(';', ''))}]+)*/?")


@dataclass(frozen=True, slots=True)
class Target:
    path: str  # canonical: what the router matches and what is forwarded
    query: str  # "" or "?…", byte for byte as the client sent it

    def __str__(self) -> str:
        return self.path + self.query


TARGET: web.RequestKey[Target] = web.RequestKey("sendguard_target", Target)


NOT_CANONICAL = (
    "the request path is not canonical (dot segments, encoded or repeated slashes, path "
    "parameters or malformed escapes): send the path as Twilio documents it"
)


def _refused(reason: str) -> UpstreamRefused:
    return UpstreamRefused(NOT_CANONICAL, reason=reason)


def canonical_target(raw: str) -> Target:
    """The request target to route and forward, or UpstreamRefused (400 `refused`)."""
    if "#" in raw:
        raise _refused("fragment-in-target")
    path, mark, query = raw.partition("?")
    if not path.startswith("/"):
        raise UpstreamRefused("absolute-form request targets are not accepted (not a relay)")
    if not _PLAIN_RE.fullmatch(path):
        path = _canonical_path(path)
    return Target(path, mark + query)


def target_of(request: web.Request) -> Target:
    """The request's canonical target: the one the middleware computed, else computed now."""
    target = request.get(TARGET)
    if target is None:
        target = request[TARGET] = canonical_target(request.raw_path)
    return target


def _canonical_path(path: str) -> str:
    canonical = _SPECIAL_RE.sub(_canonical_char, path)
    if ";" in canonical:
        raise _refused("path-parameters")
    segments = canonical.split("/")[1:]
    for index, segment in enumerate(segments):
        if segment in (".", ".."):
            raise _refused("dot-segment")
        if not segment and index < len(segments) - 1:
            raise _refused("repeated-slash")
    return canonical


def _canonical_char(found: re.Match[str]) -> str:
    """One escape, or one character that may not stand in a path as it is."""
    text = found.group()
    if text == "%":
        raise _refused("malformed-escape")
    escaped = len(text) == 3
    code = int(text[1:], 16) if escaped else ord(text)
    char = chr(code)
    if char == "\\" or (escaped and char == "/"):
        raise _refused("encoded-slash" if escaped else "backslash")
    if code < 0x20 or code == 0x7F or (not escaped and code > 0x7F):
        raise _refused("control-or-non-ascii")  # escaped UTF-8 bytes (%C3%A9) are fine
    return char if escaped and char in _DECODED else f"%{code:02X}"
