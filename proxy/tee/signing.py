"""Twilio's `X-Twilio-Signature`: computing it and checking it (docs/twilio-facts.md#signature).

The signed string is the URL Twilio requested (scheme, host, port if any, path, query) followed
by every form parameter as `name + value`: names sorted, each name's values sorted and
de-duplicated, no separators, no URL-encoding. The signature is base64(HMAC-SHA1(auth token,
that string)). JSON bodies are signed differently: Twilio adds `bodySHA256=<hex sha256(body)>`
to the URL's query and signs the URL alone; the checker also compares the body's hash.

Checking follows Twilio's own validators: the URL is tried as given, without its port and with
the scheme's default port added, because Twilio's signing side is inconsistent about ports.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from urllib.parse import SplitResult, parse_qsl, urlsplit, urlunsplit

SIGNATURE_HEADER = "X-Twilio-Signature"
# Names a SharedKey (HMAC-SHA256) signature instead of the auth-token one checked here.
SIGNATURE_SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
BODY_HASH_PARAM = "bodySHA256"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def compute_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    # Sorting the distinct pairs is sorting names, then each name's distinct values.
    payload = url + "".join(name + value for name, value in sorted(set(params)))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def url_variants(url: str) -> tuple[str, ...]:
    """The URL as given, without its port, and with the scheme's default port; no repeats."""
    variants = [url]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return tuple(variants)
    host = _host_part(parts)
    if host is not None:
        userinfo, _, _ = parts.netloc.rpartition("@")
        prefix = f"{userinfo}@" if userinfo else ""
        if port is not None:
            variants.append(urlunsplit(parts._replace(netloc=prefix + host)))
        elif parts.scheme in _DEFAULT_PORTS:
            netloc = f"{prefix}{host}:{_DEFAULT_PORTS[parts.scheme]}"
            variants.append(urlunsplit(parts._replace(netloc=netloc)))
    return tuple(dict.fromkeys(variants))


def matching_token(
    auth_tokens: Iterable[str],
    url: str,
    params: Sequence[tuple[str, str]],
    signature: str,
    raw_body: bytes | None = None,
) -> str | None:
    """The first auth token under which `signature` is valid for this request, else None.

    With `raw_body` given and `bodySHA256` in the URL's query, the request is a JSON one:
    the body must hash to that value and the signature covers the URL only (`params` unused).
    """
    if raw_body is not None:
        body_hash = query_value(url, BODY_HASH_PARAM)
        if body_hash is not None:
            computed = hashlib.sha256(raw_body).hexdigest()
            if not hmac.compare_digest(computed.encode(), body_hash.encode()):
                return None
            params = ()
    expected = signature.strip().encode()
    urls = url_variants(url)
    for token in auth_tokens:
        if not token:
            continue
        for candidate in urls:
            if hmac.compare_digest(compute_signature(token, candidate, params).encode(), expected):
                return token
    return None


def signature_matches(
    auth_tokens: Iterable[str],
    url: str,
    params: Sequence[tuple[str, str]],
    signature: str,
    raw_body: bytes | None = None,
) -> bool:
    return matching_token(auth_tokens, url, params, signature, raw_body) is not None


def _host_part(parts: SplitResult) -> str | None:
    """The netloc's host as written (IPv6 keeps its brackets), without userinfo and port."""
    hostinfo = parts.netloc.rpartition("@")[2]
    if not hostinfo:
        return None
    if hostinfo.startswith("["):
        end = hostinfo.find("]")
        return hostinfo[: end + 1] if end > 0 else None
    return hostinfo.partition(":")[0] or None


def query_value(url: str, name: str) -> str | None:
    """The first value of a query parameter of `url`, None when it has none."""
    for key, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if key == name:
            return value
    return None
