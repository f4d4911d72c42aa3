"""The tee's pure parts: Twilio signatures (checked against twilio-python's RequestValidator),
the callback URL codec, the StatusCallback rewrite and the auth-token book."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from proxy.server.guarded import CallbackRouting
from proxy.tee import (
    CALLBACK_PATH_PREFIX,
    AuthTokenBook,
    CallbackBinding,
    CallbackUrlCodec,
    OutdatedCallbackToken,
    UnwrappedCallback,
    compute_signature,
    encode_form,
    rewrite_status_callback,
    signature_matches,
)
from tests.identities import ACCOUNT, OTHER_ACCOUNT, basic_auth
from tests.identities import TOKEN as AUTH_TOKEN

TOKEN = "12345"  # the token of Twilio's own signature examples
API_KEY = "SK" + "0123456789abcdef" * 2
SECRET = b"s" * 32
PUBLIC = "https://sendguard.example.com"
BINDING = CallbackBinding(ACCOUNT, "r" + "0a" * 12, "k" + "1b" * 20)

# -- signatures ------------------------------------------------------------------------------

PARAM_SETS = {
    "twilio docs example": [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+14158675310"),
        ("Digits", "1234"),
        ("From", "+14158675310"),
        ("To", "+18005551212"),
    ],
    "status callback": [
        ("SmsSid", "SM" + "a" * 32),
        ("SmsStatus", "undelivered"),
        ("MessageStatus", "undelivered"),
        ("To", "+15558675310"),
        ("MessageSid", "SM" + "a" * 32),
        ("AccountSid", ACCOUNT),
        ("From", "+15005550006"),
        ("ApiVersion", "2010-04-01"),
        ("ErrorCode", "30007"),
    ],
    "repeated keys, unsorted values": [
        ("MediaUrl", "https://b.example/2.png"),
        ("Body", "x"),
        ("MediaUrl", "https://a.example/1.png"),
        ("MediaUrl", "https://b.example/2.png"),  # a duplicate value counts once
    ],
    "unicode and blanks": [
        ("Body", "Grüße, 世界 🎉"),
        ("ErrorMessage", ""),
        ("Ünïcode", "naïve"),
    ],
    "no params": [],
}


@pytest.mark.parametrize("params", PARAM_SETS.values(), ids=PARAM_SETS.keys())
@pytest.mark.parametrize(
    "url",
    [
        "https://mycompany.com/myapp.php?foo=1&bar=2",
        "https://example.com:8443/cb",
        "http://127.0.0.1:9000/status?tenant=7",
    ],
)
def test_signature_equals_twilio_python(params, url):
    validator = RequestValidator(TOKEN)
    ours = compute_signature(TOKEN, url, params)
    assert ours == validator.compute_signature(url, MultiDict(params))
    assert validator.validate(url, MultiDict(params), ours)
    assert signature_matches([TOKEN], url, params, ours)


def test_signature_of_twilio_docs_example():
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = PARAM_SETS["twilio docs example"]
    assert compute_signature(TOKEN, url, params) == "GvWf1cFY/Q7PnoempGyD5oXAezc="


@settings(max_examples=150, deadline=None)
@given(
    params=st.lists(st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=12)), max_size=8)
)
def test_any_params_sign_like_twilio_python(params):
    url = "https://example.com/cb?x=1"
    expected = RequestValidator(TOKEN).compute_signature(url, MultiDict(params))
    assert compute_signature(TOKEN, url, params) == expected


@pytest.mark.parametrize(
    ("signed_url", "checked_url"),
    [
        ("https://sg.example.com:443/cb?a=1", "https://sg.example.com/cb?a=1"),
        ("https://sg.example.com/cb?a=1", "https://sg.example.com:443/cb?a=1"),
        ("http://sg.example.com:80/cb", "http://sg.example.com/cb"),
        ("http://sg.example.com/cb", "http://sg.example.com:80/cb"),
        ("http://[::1]/cb", "http://[::1]:80/cb"),
        ("http://[::1]:80/cb", "http://[::1]/cb"),
    ],
)
def test_both_port_forms_validate(signed_url, checked_url):
    params = PARAM_SETS["status callback"]
    signature = compute_signature(AUTH_TOKEN, signed_url, params)
    assert signature_matches([AUTH_TOKEN], checked_url, params, signature)
    if "[" not in checked_url:  # twilio-python cuts IPv6 hosts at their first colon
        assert RequestValidator(AUTH_TOKEN).validate(checked_url, MultiDict(params), signature)


def test_wrong_token_url_or_params_do_not_validate():
    url = "https://sg.example.com/cb"
    params = PARAM_SETS["status callback"]
    signature = compute_signature(AUTH_TOKEN, url, params)
    assert not signature_matches(["e" * 32], url, params, signature)
    assert not signature_matches([], url, params, signature)
    assert not signature_matches([AUTH_TOKEN], url + "x", params, signature)
    assert not signature_matches([AUTH_TOKEN], url, [*params, ("Extra", "1")], signature)
    assert not signature_matches([AUTH_TOKEN], url, params, "")
    assert signature_matches(["e" * 32, AUTH_TOKEN], url, params, signature)  # rotation


def test_json_body_with_body_sha256():
    body = json.dumps({"AccountSid": ACCOUNT, "MessageStatus": "delivered"}).encode()
    url = f"https://sg.example.com/cb?bodySHA256={hashlib.sha256(body).hexdigest()}"
    signature = compute_signature(AUTH_TOKEN, url, [])
    assert signature_matches([AUTH_TOKEN], url, [], signature, raw_body=body)
    assert RequestValidator(AUTH_TOKEN).validate(url, body.decode(), signature)
    # the body is covered by its hash; the port quirk applies as well
    assert not signature_matches([AUTH_TOKEN], url, [], signature, raw_body=body + b" ")
    port_url = url.replace(".com/", ".com:443/")
    assert signature_matches([AUTH_TOKEN], port_url, [], signature, raw_body=body)


# -- callback URL codec ----------------------------------------------------------------------

_PATH_CHARS = st.characters(
    codec="utf-8",
    min_codepoint=0x21,
    exclude_characters="/?#\x7f",
    exclude_categories=("Cs", "Zs", "Zl", "Zp", "Cc"),
)
_HOSTS = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,15}[a-z0-9])?(\.[a-z]{2,8}){0,3}", fullmatch=True)


@st.composite
def http_urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "https", "HTTPS"]))
    host = draw(_HOSTS | st.sampled_from(["127.0.0.1", "[::1]", "10.0.0.7"]))
    port = draw(st.none() | st.integers(1, 65535))
    userinfo = draw(st.sampled_from(["", "user:pa55@"]))
    segments = draw(st.lists(st.text(_PATH_CHARS, max_size=10), max_size=4))
    query = draw(st.none() | st.text(_PATH_CHARS, max_size=20))
    fragment = draw(st.none() | st.sampled_from(["rc=3&rp=all", "x"]))
    url = f"{scheme}://{userinfo}{host}" + (f":{port}" if port else "")
    url += "".join("/" + segment for segment in segments)
    url += f"?{query}" if query is not None else ""
    return url + (f"#{fragment}" if fragment is not None else "")


def token_of(wrapped: str) -> str:
    assert wrapped.startswith(PUBLIC + CALLBACK_PATH_PREFIX)
    return wrapped.removeprefix(PUBLIC + CALLBACK_PATH_PREFIX).partition("#")[0]


@settings(max_examples=200, deadline=None)
@given(url=http_urls())
def test_any_http_url_round_trips(url):
    codec = CallbackUrlCodec(PUBLIC, SECRET)
    wrapped = codec.wrap(url, BINDING)
    token = token_of(wrapped)
    assert codec.unwrap(token).original_url == url
    assert codec.unwrap(token).binding == BINDING
    assert all((c.isalnum() and c.isascii()) or c in "-_." for c in token)  # path-safe as is
    assert urlsplit(wrapped).fragment == urlsplit(url).fragment  # connection overrides kept


@settings(max_examples=300, deadline=None)
@given(url=http_urls(), data=st.data())
def test_any_mutated_token_is_refused(url, data):
    codec = CallbackUrlCodec(PUBLIC, SECRET)
    token = token_of(codec.wrap(url, BINDING))
    alphabet = "ABCXYZabcxyz0189-_.=%/+"
    kind = data.draw(st.sampled_from(["replace", "delete", "insert", "truncate"]))
    index = data.draw(st.integers(0, len(token) - 1))
    if kind == "replace":
        char = data.draw(st.sampled_from(alphabet).filter(lambda c: c != token[index]))
        mutated = token[:index] + char + token[index + 1 :]
    elif kind == "delete":
        mutated = token[:index] + token[index + 1 :]
    elif kind == "insert":
        mutated = token[:index] + data.draw(st.sampled_from(alphabet)) + token[index:]
    else:
        mutated = token[:index]
    with pytest.raises(ValueError):
        codec.unwrap(mutated)


def test_tokens_from_another_secret_or_forged_are_refused():
    codec = CallbackUrlCodec(PUBLIC, SECRET)
    other = CallbackUrlCodec(PUBLIC, b"t" * 32)
    token = token_of(other.wrap("https://app.example.com/cb", BINDING))
    with pytest.raises(ValueError):
        codec.unwrap(token)
    # a valid MAC over a URL the codec would never wrap still yields nothing
    evil = b"javascript:alert(1)"
    forged = base64.urlsafe_b64encode(evil).decode().rstrip("=") + ".AAAA"
    for garbage in ["", ".", "abc", forged, "a" * 100_000, "YQ.YQ", "YQ==.YQ=="]:
        with pytest.raises(ValueError):
            codec.unwrap(garbage)


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "file:///etc/passwd",
        "gopher://evil.example/_x",
        "ftp://files.example/x",
        "data:text/html,hi",
        "//app.example.com/cb",
        "/relative/cb",
        "https:///no-host",
        "https://app.example.com:99999/cb",
        "https://app.example.com/cb with space",
        "https://app.example.com/cb\r\nX-Injected: 1",
        "",
        "https://app.example.com/" + "x" * 5000,
    ],
)
def test_wrap_refuses_non_http_urls(url):
    with pytest.raises(ValueError):
        CallbackUrlCodec(PUBLIC, SECRET).wrap(url, BINDING)


def test_codec_checks_its_configuration():
    assert CallbackUrlCodec(PUBLIC + "/", SECRET).public_url == PUBLIC
    for bad_url in ["ftp://x.example", "https://x.example/?q=1", "not a url"]:
        with pytest.raises(ValueError):
            CallbackUrlCodec(bad_url, SECRET)
    with pytest.raises(ValueError):
        CallbackUrlCodec(PUBLIC, b"short")


# -- rewrite ---------------------------------------------------------------------------------


def test_rewrite_replaces_only_status_callback():
    codec = CallbackUrlCodec(PUBLIC, SECRET)
    original = "https://app.example.com/status?tenant=7"
    form = [
        ("To", "+15558675310"),
        ("MediaUrl", "https://a.example/1.png"),
        ("StatusCallback", original),
        ("Body", "hi & bye"),
        ("MediaUrl", "https://a.example/0.png"),
    ]
    rewritten = rewrite_status_callback(form, codec, BINDING)
    assert rewritten is not None
    assert [name for name, _ in rewritten] == [name for name, _ in form]
    assert [p for p in rewritten if p[0] != "StatusCallback"] == [
        p for p in form if p[0] != "StatusCallback"
    ]
    wrapped = dict(rewritten)["StatusCallback"]
    assert codec.unwrap(token_of(wrapped)) == UnwrappedCallback(original, BINDING)
    # idempotent: an already wrapped callback is left alone
    assert rewrite_status_callback(rewritten, codec, BINDING) is None


@pytest.mark.parametrize(
    "form",
    [
        [("To", "+15558675310"), ("Body", "hi")],
        [("StatusCallback", "")],
        [("StatusCallback", "javascript:alert(1)")],
        [("StatusCallback", "not a url")],
        [("StatusCallback", "https://a.example/1"), ("StatusCallback", "https://b.example/2")],
        [("StatusCallback", "https://a.example/1"), ("StatusCallbackMethod", "GET")],
    ],
)
def test_rewrite_leaves_other_sends_alone(form):
    assert rewrite_status_callback(form, CallbackUrlCodec(PUBLIC, SECRET), BINDING) is None


def test_rewrite_takes_explicit_post_method():
    form = [("StatusCallback", "https://a.example/1"), ("StatusCallbackMethod", "post")]
    assert rewrite_status_callback(form, CallbackUrlCodec(PUBLIC, SECRET), BINDING) is not None


# -- binding a callback URL to its send ------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_the_binding_is_covered_by_the_mac():
    codec = CallbackUrlCodec(PUBLIC, SECRET)
    payload_part, _, mac = token_of(codec.wrap("https://app.example.com/cb", BINDING)).partition(
        "."
    )
    payload = _unb64(payload_part)
    assert ACCOUNT.encode() in payload and BINDING.recipient_tag.encode() in payload
    assert b"+1555" not in payload  # the recipient is an opaque tag, never a number
    for original, swapped in [
        (ACCOUNT, OTHER_ACCOUNT),
        (BINDING.recipient_tag, "r" + "ff" * 12),
        (BINDING.dedup_id, "k" + "ee" * 20),
    ]:
        forged = payload.replace(original.encode(), swapped.encode())
        with pytest.raises(ValueError, match="signature mismatch"):
            codec.unwrap(f"{_b64(forged)}.{mac}")


def test_the_binding_comes_from_the_send():
    send = CallbackBinding(OTHER_ACCOUNT, "r" + "12" * 12, "f" + "34" * 20)
    codec = CallbackUrlCodec(PUBLIC, SECRET)
    form = [("To", "+15558675310"), ("StatusCallback", "https://app.example.com/cb")]
    rewritten = rewrite_status_callback(form, codec, send)
    assert rewritten is not None
    unwrapped = codec.unwrap(token_of(dict(rewritten)["StatusCallback"]))
    assert unwrapped.binding == send
    assert codec.unwrap(token_of(codec.wrap("https://app.example.com/cb", BINDING))) != unwrapped


@pytest.mark.parametrize(
    "binding",
    [
        CallbackBinding(API_KEY, BINDING.recipient_tag, BINDING.dedup_id),
        CallbackBinding("", BINDING.recipient_tag, BINDING.dedup_id),
        CallbackBinding(ACCOUNT + "\n", BINDING.recipient_tag, BINDING.dedup_id),
        CallbackBinding(ACCOUNT, "", BINDING.dedup_id),
        CallbackBinding(ACCOUNT, "r\nhttps://evil.example/", BINDING.dedup_id),
        CallbackBinding(ACCOUNT, BINDING.recipient_tag, "k" * 65),
        CallbackBinding(ACCOUNT, BINDING.recipient_tag, "k-1"),
    ],
)
def test_only_well_formed_sends_are_bound(binding):
    with pytest.raises(ValueError):
        CallbackUrlCodec(PUBLIC, SECRET).wrap("https://app.example.com/cb", binding)
    form = [("StatusCallback", "https://app.example.com/cb")]
    assert rewrite_status_callback(form, CallbackUrlCodec(PUBLIC, SECRET), binding) is None


def test_tokens_of_the_first_unbound_format_are_refused_as_outdated():
    codec = CallbackUrlCodec(PUBLIC, SECRET)
    raw = b"https://app.example.com/cb"
    mac = hmac.new(SECRET, b"sendguard-callback-url-v1\x00" + raw, hashlib.sha256).digest()[:16]
    with pytest.raises(OutdatedCallbackToken):
        codec.unwrap(f"{_b64(raw)}.{_b64(mac)}")
    other_mac = hmac.new(b"t" * 32, b"sendguard-callback-url-v1\x00" + raw, hashlib.sha256)
    with pytest.raises(ValueError) as refused:  # someone else's old token: just invalid
        codec.unwrap(f"{_b64(raw)}.{_b64(other_mac.digest()[:16])}")
    assert not isinstance(refused.value, OutdatedCallbackToken)


# -- which sends teach a token ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "learned"),
    [
        (200, True),
        (201, True),
        (299, True),
        (301, False),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (429, False),
        (500, False),
        (503, False),
    ],
)
def test_tokens_are_learned_only_from_creates_twilio_accepted(status, learned):
    routing = CallbackRouting(CallbackUrlCodec(PUBLIC, SECRET), AuthTokenBook({}))
    routing.learn_credential(basic_auth(ACCOUNT, AUTH_TOKEN), status)
    assert routing.tokens.tokens_for(ACCOUNT) == ([AUTH_TOKEN] if learned else [])


def test_encode_form_keeps_order_and_repeats():
    form = [("To", "+1555"), ("MediaUrl", "b"), ("Body", "Grüße & =?"), ("MediaUrl", "a")]
    encoded = encode_form(form)
    assert encoded == b"To=%2B1555&MediaUrl=b&Body=Gr%C3%BC%C3%9Fe+%26+%3D%3F&MediaUrl=a"
    assert parse_qsl(encoded.decode(), keep_blank_values=True) == form
    assert encode_form([]) == b""


# -- auth token book -------------------------------------------------------------------------


def test_token_book_learns_account_tokens_only():
    book = AuthTokenBook({ACCOUNT: "configured-token-1"})
    assert book.tokens_for(ACCOUNT) == ["configured-token-1"]
    assert book.tokens_for(OTHER_ACCOUNT) == []

    book.learn_from_authorization(basic_auth(OTHER_ACCOUNT, AUTH_TOKEN))
    book.learn_from_authorization(basic_auth(API_KEY, "k" * 32))  # an API key's secret: no
    book.learn_from_authorization(basic_auth(ACCOUNT, AUTH_TOKEN))
    assert book.tokens_for(OTHER_ACCOUNT) == [AUTH_TOKEN]
    assert book.tokens_for(ACCOUNT) == ["configured-token-1", AUTH_TOKEN]
    assert book.tokens_for(API_KEY) == []


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Basic",
        "Basic !!!",
        "Bearer " + base64.b64encode(f"{ACCOUNT}:{AUTH_TOKEN}".encode()).decode(),
        "Basic " + base64.b64encode(ACCOUNT.encode()).decode(),  # no colon
        basic_auth(ACCOUNT, ""),
        basic_auth(ACCOUNT, "short"),
        basic_auth(ACCOUNT, "has space in it"),
        basic_auth("AC123", AUTH_TOKEN),
        basic_auth("ac" + ACCOUNT[2:] + "0", AUTH_TOKEN),
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
        "Basic " + "A" * 5000,
    ],
)
def test_token_book_ignores_malformed_authorization(header):
    book = AuthTokenBook({})
    book.learn_from_authorization(header)
    assert book.tokens_for(ACCOUNT) == []


def test_token_book_is_bounded_and_keeps_newest():
    book = AuthTokenBook({}, max_tokens_per_account=3, max_accounts=2)
    for i in range(5):
        book.learn_from_authorization(basic_auth(ACCOUNT, f"token-{i:04d}"))
    book.learn_from_authorization(basic_auth(ACCOUNT, "token-0003"))  # seen again: newest
    assert book.tokens_for(ACCOUNT) == ["token-0003", "token-0004", "token-0002"]

    third = "AC" + "1" * 32
    book.learn_from_authorization(basic_auth(OTHER_ACCOUNT, AUTH_TOKEN))
    book.learn_from_authorization(basic_auth(ACCOUNT, "token-0003"))  # ACCOUNT used most recently
    book.learn_from_authorization(basic_auth(third, AUTH_TOKEN))
    assert book.tokens_for(OTHER_ACCOUNT) == []  # least recently used account evicted
    assert book.tokens_for(ACCOUNT)[0] == "token-0003"
    assert book.tokens_for(third) == [AUTH_TOKEN]
