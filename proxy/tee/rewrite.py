"""The tee's two rewrites: a send's `StatusCallback` pointed at the tee (everything else as
the app sent it), and a callback addressed back to the app's own URL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlencode, urlsplit, urlunsplit

from multidict import CIMultiDict

from proxy.tee.signing import BODY_HASH_PARAM, SIGNATURE_HEADER, SIGNATURE_SETTINGS_HEADER
from proxy.tee.urls import BoundSend, CallbackUrlCodec

STATUS_CALLBACK = "StatusCallback"
STATUS_CALLBACK_METHOD = "StatusCallbackMethod"
# Headers of Twilio's callback that go on to the app; our signature replaces Twilio's, and a
# SharedKey settings header would make the app check ours with the wrong key.
_PASSED_PREFIXES = ("x-twilio-", "i-twilio-")
_NOT_PASSED = frozenset({SIGNATURE_HEADER.lower(), SIGNATURE_SETTINGS_HEADER.lower()})


def rewrite_status_callback(
    form: Sequence[tuple[str, str]], codec: CallbackUrlCodec, send: BoundSend
) -> tuple[tuple[str, str], ...] | None:
    """The form with `StatusCallback` wrapped by `codec` and bound to `send` (its account,
    recipient tag and dedup id); None when there is nothing to rewrite.

    None (forward the send unchanged) when: no `StatusCallback`, or more than one (which would
    Twilio use?); its value is not an http(s) URL with a host; it is already a tee URL; the
    send asks for callbacks by another method than POST (Calls' `StatusCallbackMethod=GET`),
    which the tee does not take; or the send has no well-formed account SID to bind to.
    """
    indexes = [i for i, (name, _) in enumerate(form) if name == STATUS_CALLBACK]
    if len(indexes) != 1:
        return None
    methods = {value.strip().upper() for name, value in form if name == STATUS_CALLBACK_METHOD} - {
        ""
    }
    if methods - {"POST"}:
        return None
    index = indexes[0]
    original = form[index][1]
    if codec.is_wrapped(original):
        return None
    try:
        wrapped = codec.wrap(original, send)
    except ValueError:
        return None
    rewritten = list(form)
    rewritten[index] = (STATUS_CALLBACK, wrapped)
    return tuple(rewritten)


def encode_form(form: Sequence[tuple[str, str]]) -> bytes:
    """application/x-www-form-urlencoded, in order, repeated keys kept (as Twilio's SDKs send)."""
    return urlencode(list(form)).encode("ascii")


def callback_target(original_url: str, body_hash: str | None) -> tuple[str, str]:
    """(URL to POST to, URL to sign) for a callback going to the app's `original_url`.

    Both drop the fragment, which no server sees; the signed one also drops userinfo, which the
    app cannot see in its request either (it arrives as Basic auth). A JSON callback's
    `bodySHA256` goes along in the query, as Twilio would have put it there.
    """
    parts = urlsplit(original_url)._replace(fragment="")
    if body_hash is not None:
        extra = f"{BODY_HASH_PARAM}={body_hash}"
        parts = parts._replace(query=f"{parts.query}&{extra}" if parts.query else extra)
    target = urlunsplit(parts)
    signed = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return target, signed


def callback_headers(
    inbound: Mapping[str, str], content_type: str, signature: str
) -> CIMultiDict[str]:
    """Twilio's `User-Agent`, `X-Twilio-*` and `I-Twilio-*` headers, with our signature."""
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in inbound.items():
        lowered = name.lower()
        if lowered == "user-agent" or (
            lowered.startswith(_PASSED_PREFIXES) and lowered not in _NOT_PASSED
        ):
            headers.add(name, value)
    headers["Content-Type"] = content_type
    headers[SIGNATURE_HEADER] = signature
    return headers
