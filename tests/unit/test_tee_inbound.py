"""The pure half of the tee as tables: where the token sits in the URL Twilio called, what a
callback body says, which callbacks are refused (and with which error and reason), what a
delivery status reports and whether it may teach the guard. No sockets: handler.py's I/O is
exercised on real ones in tests/e2e/test_tee.py."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json

import pytest

from proxy.errors import (
    CallbackForbidden,
    CallbackMethodNotAllowed,
    InvalidRequest,
    SendguardError,
)
from proxy.guard.facts import recipient_tag
from proxy.tee.inbound import (
    ACCOUNT_MISMATCH,
    ACCOUNT_UNKNOWN,
    BODY_INVALID,
    CALLBACK_URL_INVALID,
    CALLBACK_URL_OUTDATED,
    FORM_CONTENT_TYPE,
    METHOD_NOT_ALLOWED,
    SIGNATURE_INVALID,
    DeliveryStatus,
    InboundCallback,
    check_account,
    check_method,
    delivery_status,
    idempotency_token,
    is_bound_recipient,
    locate_token,
    loggable_url,
    parse_callback,
    unwrap_token,
    verified_auth_token,
)
from proxy.tee.rewrite import encode_form
from proxy.tee.signing import compute_signature
from proxy.tee.urls import CALLBACK_PATH_PREFIX, CallbackBinding, CallbackUrlCodec
from tests.identities import ACCOUNT, OTHER_ACCOUNT, OTHER_TOKEN, TOKEN

SECRET = b"k" * 32
PUBLIC = "https://sendguard.example.com"
TO = "+15558675310"
MESSAGE_SID = "SM" + "a" * 32
MG = "MG" + "b" * 32
APP_URL = "https://app.example.com/status?tenant=7"
BINDING = CallbackBinding(ACCOUNT, recipient_tag(ACCOUNT, TO), "k" + "0" * 40)
CODEC = CallbackUrlCodec(PUBLIC, SECRET)
OTHER_SECRET_TOKEN = CallbackUrlCodec(PUBLIC, b"o" * 32).wrap(APP_URL, BINDING).rpartition("/")[2]


def refusal(error: pytest.ExceptionInfo[SendguardError]) -> tuple[type, int, str]:
    return type(error.value), error.value.status, error.value.reason


def wrapped_path(original_url: str = APP_URL) -> str:
    """The raw path Twilio requests for a wrapped URL (what the tee sees)."""
    return CODEC.wrap(original_url, BINDING).partition("#")[0].removeprefix(PUBLIC)


def form_callback(
    params: list[tuple[str, str]], *, original_url: str = APP_URL, content_type: str = ""
) -> InboundCallback:
    signed_url, token = locate_token(PUBLIC, wrapped_path(original_url))
    return parse_callback(unwrap_token(CODEC, token), signed_url, encode_form(params), content_type)


def status_form(**fields: str) -> list[tuple[str, str]]:
    base = {
        "MessageSid": MESSAGE_SID,
        "MessageStatus": "undelivered",
        "AccountSid": ACCOUNT,
        "To": TO,
        "From": "+15005550006",
    }
    base.update(fields)
    return [(name, value) for name, value in base.items() if value is not None]


# -- method and token ------------------------------------------------------------------------


def test_only_post_is_taken():
    check_method("POST")
    for method in ("GET", "PUT", "HEAD", "post"):
        with pytest.raises(SendguardError) as refused:
            check_method(method)
        assert refusal(refused) == (CallbackMethodNotAllowed, 405, METHOD_NOT_ALLOWED)


@pytest.mark.parametrize(
    ("raw_path", "signed_url", "token"),
    [
        (CALLBACK_PATH_PREFIX + "abc.def", PUBLIC + CALLBACK_PATH_PREFIX + "abc.def", "abc.def"),
        # the query is signed, but is no part of the token
        (
            CALLBACK_PATH_PREFIX + "abc.def?bodySHA256=00",
            PUBLIC + CALLBACK_PATH_PREFIX + "abc.def?bodySHA256=00",
            "abc.def",
        ),
        # a path in front (the load balancer's, stripped or not) is the public URL's own
        ("/lb" + CALLBACK_PATH_PREFIX + "t.m", PUBLIC + CALLBACK_PATH_PREFIX + "t.m", "t.m"),
    ],
)
def test_the_signed_url_is_rebuilt_from_the_public_url(raw_path, signed_url, token):
    assert locate_token(PUBLIC, raw_path) == (signed_url, token)


def test_a_path_without_the_callback_prefix_is_refused():
    with pytest.raises(SendguardError) as refused:
        locate_token(PUBLIC, "/2010-04-01/Accounts")
    assert refusal(refused) == (InvalidRequest, 400, CALLBACK_URL_INVALID)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _v1_token(secret: bytes = SECRET) -> str:
    raw = APP_URL.encode()
    mac = hmac.new(secret, b"sendguard-callback-url-v1\x00" + raw, hashlib.sha256).digest()[:16]
    return f"{_b64(raw)}.{_b64(mac)}"


def test_a_token_unwraps_to_the_app_url_and_its_binding():
    _, token = locate_token(PUBLIC, wrapped_path())
    unwrapped = unwrap_token(CODEC, token)
    assert (unwrapped.original_url, unwrapped.binding) == (APP_URL, BINDING)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("garbage", CALLBACK_URL_INVALID),
        ("", CALLBACK_URL_INVALID),
        (_v1_token(b"t" * 32), CALLBACK_URL_INVALID),  # someone else's old token
        (_v1_token(), CALLBACK_URL_OUTDATED),  # ours, of the unbound first format
        (OTHER_SECRET_TOKEN, CALLBACK_URL_INVALID),  # made bound, but with another secret
    ],
)
def test_tokens_sendguard_did_not_make_bound_to_a_send_are_refused(token, reason):
    with pytest.raises(SendguardError) as refused:
        unwrap_token(CODEC, token)
    assert refusal(refused) == (InvalidRequest, 400, reason)


# -- the body --------------------------------------------------------------------------------


def test_a_form_body_keeps_its_params_and_the_first_value_of_each_field():
    params = [*status_form(), ("To", "+15550001111"), ("Body", "Grüße & ✓")]
    callback = form_callback(params)
    assert callback.params == tuple(params)
    assert callback.field("To") == TO  # first value wins, as Twilio reads a field
    assert callback.field("Body") == "Grüße & ✓"
    assert callback.field("Missing") == ""
    assert (callback.account_sid, callback.claimed_account) == (ACCOUNT, ACCOUNT)
    assert callback.binding == BINDING
    assert callback.original_url == APP_URL
    assert callback.signed_url.startswith(PUBLIC + CALLBACK_PATH_PREFIX)
    assert (callback.content_type, callback.body_hash) == (FORM_CONTENT_TYPE, None)


@pytest.mark.parametrize(
    ("claimed", "seen"),
    [
        (ACCOUNT, ACCOUNT),
        (OTHER_ACCOUNT, OTHER_ACCOUNT),
        ("AC123", ""),  # not well-formed: no claim
        ("", ""),
        (ACCOUNT + "x", ""),
    ],
)
def test_the_claimed_account_is_the_bodys_well_formed_account_sid(claimed, seen):
    assert form_callback(status_form(AccountSid=claimed)).claimed_account == seen


def test_the_content_type_sent_is_kept():
    callback = form_callback(status_form(), content_type="application/x-www-form-urlencoded; x=1")
    assert callback.content_type == "application/x-www-form-urlencoded; x=1"


@pytest.mark.parametrize("body", [b"\xff\xfe", b"To=%2B1&" + b"a=1&" * 1000])
def test_a_body_that_is_not_form_data_is_refused(body):
    signed_url, token = locate_token(PUBLIC, wrapped_path())
    with pytest.raises(SendguardError) as refused:
        parse_callback(unwrap_token(CODEC, token), signed_url, body, "")
    assert refusal(refused) == (InvalidRequest, 400, BODY_INVALID)


def json_callback(document: object) -> InboundCallback:
    """A JSON callback: Twilio adds the body's hash to the URL it calls (and signs)."""
    body = json.dumps(document).encode()
    digest = hashlib.sha256(body).hexdigest()
    signed_url, token = locate_token(PUBLIC, f"{wrapped_path()}?bodySHA256={digest}")
    return parse_callback(unwrap_token(CODEC, token), signed_url, body, "")


def test_a_json_body_is_read_by_its_top_level_text_and_number_fields():
    document = {
        "messageSid": MESSAGE_SID,
        "messageStatus": "failed",
        "accountSid": ACCOUNT,
        "errorCode": 30008,
        "flag": True,
        "nested": {"To": TO},
    }
    callback = json_callback(document)
    assert callback.body_hash is not None
    assert (callback.params, callback.content_type) == ((), "application/json")
    assert callback.claimed_account == ACCOUNT
    assert callback.field("MessageSid") == MESSAGE_SID  # camelCase in JSON
    assert callback.field("ErrorCode") == "30008"
    assert callback.field("Flag") == "" and callback.field("Nested") == ""


@pytest.mark.parametrize("document", [[1, 2], "text", None])
def test_a_json_body_that_is_not_an_object_has_no_fields(document):
    assert json_callback(document).fields == {}


# -- verifying -------------------------------------------------------------------------------


def test_a_callback_for_another_account_than_its_url_is_refused():
    check_account(form_callback(status_form()))
    for claimed in (OTHER_ACCOUNT, "", "AC123"):
        with pytest.raises(SendguardError) as refused:
            check_account(form_callback(status_form(AccountSid=claimed)))
        assert refusal(refused) == (CallbackForbidden, 403, ACCOUNT_MISMATCH)


def signed(callback: InboundCallback, token: str = TOKEN, url: str | None = None) -> str:
    return compute_signature(token, url or callback.signed_url, callback.params)


def test_the_auth_token_the_callback_is_signed_with_is_found():
    callback = form_callback(status_form())
    assert verified_auth_token([OTHER_TOKEN, TOKEN], callback, signed(callback)) == TOKEN


@pytest.mark.parametrize(
    ("tokens", "signer", "reason"),
    [
        ([], TOKEN, ACCOUNT_UNKNOWN),  # no token known for the bound account
        ([TOKEN], OTHER_TOKEN, SIGNATURE_INVALID),  # a forger's own genuine token
        ([TOKEN], "", SIGNATURE_INVALID),  # no signature at all
    ],
)
def test_callbacks_not_signed_with_a_bound_accounts_token_are_forbidden(tokens, signer, reason):
    callback = form_callback(status_form())
    signature = signed(callback, signer) if signer else ""
    with pytest.raises(SendguardError) as refused:
        verified_auth_token(tokens, callback, signature)
    assert refusal(refused) == (CallbackForbidden, 403, reason)


def test_a_tampered_body_does_not_verify():
    callback = form_callback(status_form())
    signature = signed(callback)
    tampered = form_callback(status_form(MessageStatus="delivered"))
    with pytest.raises(CallbackForbidden):
        verified_auth_token([TOKEN], tampered, signature)


def test_a_signature_over_the_url_with_or_without_its_fragment_verifies():
    callback = form_callback(status_form(), original_url=APP_URL + "#rc=3")
    without = signed(callback)
    with_fragment = signed(callback, url=callback.signed_url + "#rc=3")
    assert verified_auth_token([TOKEN], callback, without) == TOKEN
    assert verified_auth_token([TOKEN], callback, with_fragment) == TOKEN


def test_a_json_callback_verifies_by_its_body_hash():
    callback = json_callback({"messageSid": MESSAGE_SID, "accountSid": ACCOUNT})
    signature = compute_signature(TOKEN, callback.signed_url, ())
    assert verified_auth_token([TOKEN], callback, signature) == TOKEN
    other_body = dataclasses.replace(callback, body=callback.body + b" ")
    with pytest.raises(CallbackForbidden):
        verified_auth_token([TOKEN], other_body, signature)


# -- what it teaches -------------------------------------------------------------------------


def status(**fields: str) -> DeliveryStatus | None:
    return delivery_status(form_callback(status_form(**fields)))


@pytest.mark.parametrize(
    ("code", "error_code"),
    [
        ("30007", 30007),
        (" 30003 ", 30003),
        ("0", None),  # Twilio's "no error"
        ("", None),
        ("abc", None),
        ("-5", None),
        ("٣٠٠٠٧", None),  # digits, but not ASCII ones
    ],
)
def test_the_error_code_is_a_positive_ascii_number(code, error_code):
    reported = status(ErrorCode=code)
    assert reported is not None and reported.error_code == error_code


def test_a_status_reports_the_bound_account_and_the_sender_as_a_send_names_it():
    assert status() == DeliveryStatus(ACCOUNT, MESSAGE_SID, "undelivered", None, TO, "+15005550006")
    reported = status(MessagingServiceSid=MG)
    assert reported is not None and reported.sender == MG  # before From, as in a send's facts


def test_the_old_sms_field_names_are_read_too():
    params = [("SmsSid", MESSAGE_SID), ("SmsStatus", "sent"), ("AccountSid", ACCOUNT)]
    reported = delivery_status(form_callback(params))
    assert reported is not None and (reported.message_sid, reported.status) == (MESSAGE_SID, "sent")


@pytest.mark.parametrize("missing", ["MessageSid", "MessageStatus"])
def test_a_callback_without_a_message_sid_or_status_reports_nothing(missing):
    params = [(k, v) for k, v in status_form() if k != missing]
    assert delivery_status(form_callback(params)) is None


@pytest.mark.parametrize(
    ("to", "bound"),
    [
        (TO, True),
        ("0015558675310", True),  # the same number, international prefix
        ("whatsapp:" + TO, False),  # another channel is another recipient (as in dedup keys)
        ("+1 (555) 867-5310", True),
        ("+15550001111", False),
        ("", False),
    ],
)
def test_only_the_bound_recipient_may_teach(to, bound):
    assert is_bound_recipient(BINDING, to) is bound
    other_account = CallbackBinding(OTHER_ACCOUNT, BINDING.recipient_tag, BINDING.dedup_id)
    assert not is_bound_recipient(other_account, to)  # the tag is per account


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("abc-123", "abc-123"),
        ("  abc  ", "abc"),
        ("", None),
        ("   ", None),
        ("x" * 256, "x" * 256),
        ("x" * 257, None),  # too long to be a key
        ("clé", None),  # not ASCII
    ],
)
def test_the_idempotency_token_is_a_dedup_key_only_when_usable(header, key):
    assert idempotency_token(header) == key


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        ("https://app.example.com/status?tenant=7&sig=s#rc=3", "https://app.example.com/status"),
        ("https://user:pw@app.example.com:8443/cb", "https://app.example.com:8443/cb"),
        ("http://app.example.com", "http://app.example.com"),
    ],
)
def test_the_logged_destination_carries_no_secrets(url, logged):
    assert loggable_url(url) == logged
