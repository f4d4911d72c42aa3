"""The status-callback tee (docs/contract.md#tee): sendguard in the middle of Twilio's status
callbacks.

With a public URL configured, a guarded send's `StatusCallback` is rewritten to a sendguard URL
that carries the app's own URL and the send it was made for (account, recipient tag, dedup id)
in an HMAC-signed token (rewrite.py, urls.py). Twilio's callbacks then reach sendguard, which
verifies their `X-Twilio-Signature` with the bound account's auth token (tokens.py, signing.py),
lets the guard learn the delivery outcome for the bound recipient only, and forwards each
callback to the app's URL with a fresh signature the app's own validator accepts (handler.py:
the I/O; inbound.py: the pure reading and judging of a callback; dedup.py: redeliveries).
"""

from proxy.tee.dedup import CallbackDeduper, MemoryCallbackDeduper
from proxy.tee.handler import CallbackLearner, CallbackTee
from proxy.tee.inbound import DeliveryStatus
from proxy.tee.rewrite import encode_form, rewrite_status_callback
from proxy.tee.signing import compute_signature, signature_matches
from proxy.tee.tokens import AuthTokenBook
from proxy.tee.urls import (
    CALLBACK_PATH_PREFIX,
    CallbackBinding,
    CallbackUrlCodec,
    OutdatedCallbackToken,
    UnwrappedCallback,
)

__all__ = [
    "CALLBACK_PATH_PREFIX",
    "AuthTokenBook",
    "CallbackBinding",
    "CallbackDeduper",
    "CallbackLearner",
    "CallbackTee",
    "CallbackUrlCodec",
    "DeliveryStatus",
    "MemoryCallbackDeduper",
    "OutdatedCallbackToken",
    "UnwrappedCallback",
    "compute_signature",
    "encode_form",
    "rewrite_status_callback",
    "signature_matches",
]
