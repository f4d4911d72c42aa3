"""Every response sendguard makes itself, as one exception tree rendered in one place.

    SendguardError                       status  code   decision
    ├── InvalidRequest                   400     79011  invalid-request
    │   └── InvalidIdempotencyKey        400     79001  invalid-key
    ├── UpstreamRefused                  400     79010  refused
    ├── BodyTooLarge                     413     79012  too-large
    ├── KeyMismatch                      422     79002  key-mismatch
    ├── InFlight                         409     79003  in-flight
    ├── OutcomeUnknown                   409     79004  outcome-unknown
    ├── UpstreamTimedOut                 504     79005  outcome-unknown
    ├── UpstreamReset                    502     79006  outcome-unknown
    ├── UpstreamUnreachable              502     79007  upstream-unreachable
    ├── PassthroughTimedOut              504     79008  passthrough
    ├── PassthroughBroken                502     79009  passthrough
    ├── Suppressed                       400     (Twilio's own code)  suppressed
    ├── RateLimited                      429     20429  rate-limited
    ├── BreakerOpen                      429     20429  breaker-open
    ├── Killed                           503     79020  killed
    ├── StoreUnavailable                 503     79021  store-unavailable
    ├── CallbackForbidden                403     79040  refused
    ├── CallbackUndeliverable            502     79041  upstream-unreachable
    ├── CallbackMethodNotAllowed         405     79042  invalid-request
    ├── TeeDisabled                      404     79043  invalid-request
    └── InternalError                    500     79030  internal-error

Bodies are Twilio-shaped (`code`, `message`, `more_info`, `status`, optional `details`) so every
official SDK raises its ordinary REST exception; never both `type` and `title`, which would make
twilio-python pick its RFC 9457 exception class instead.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from proxy.decision import Decision

TWILIO_ERRORS_URL = "https://www.twilio.com/docs/errors/"
SENDGUARD_ERRORS_URL = "https://github.com/sendguard/sendguard#error-codes"


class SendguardError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[int] = 79030
    decision: ClassVar[Decision] = Decision.INTERNAL_ERROR
    default_message: ClassVar[str] = "internal error"

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        details: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.retry_after = retry_after
        self.details = details
        # `reason` is the machine-readable cause logged with the decision; defaults to the code.
        self.reason = str(reason) if reason else self.decision.value  # (a Reason is a str)
        super().__init__(self.message)

    @property
    def twilio_code(self) -> int:
        return self.code

    def body(self) -> dict[str, Any]:
        code = self.twilio_code
        payload: dict[str, Any] = {
            "code": code,
            "message": f"sendguard: {self.message}",
            "more_info": more_info_url(code),
            "status": self.status,
        }
        if self.details:
            payload["details"] = self.details
        return payload

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}

    def body_bytes(self) -> bytes:
        return json.dumps(self.body(), separators=(",", ":")).encode()


def more_info_url(code: int) -> str:
    if 79000 <= code < 80000:
        return f"{SENDGUARD_ERRORS_URL}-{code}"
    return f"{TWILIO_ERRORS_URL}{code}"


class InvalidRequest(SendguardError):
    status = 400
    code = 79011
    decision = Decision.INVALID_REQUEST
    default_message = "the request is malformed"


class InvalidIdempotencyKey(InvalidRequest):
    code = 79001
    decision = Decision.INVALID_KEY
    default_message = "Idempotency-Key must be 1-255 visible ASCII characters"


class UpstreamRefused(SendguardError):
    status = 400
    code = 79010
    decision = Decision.REFUSED
    default_message = "upstream host not allowed"


class BodyTooLarge(SendguardError):
    status = 413
    code = 79012
    decision = Decision.TOO_LARGE
    default_message = "request body too large"


class KeyMismatch(SendguardError):
    status = 422
    code = 79002
    decision = Decision.KEY_MISMATCH
    default_message = "Idempotency-Key was already used with a different request"


class InFlight(SendguardError):
    status = 409
    code = 79003
    decision = Decision.IN_FLIGHT
    default_message = "an identical send is still in flight; retry later"


class OutcomeUnknown(SendguardError):
    status = 409
    code = 79004
    decision = Decision.OUTCOME_UNKNOWN
    default_message = (
        "an earlier attempt of this send has an unknown outcome (it may have been sent); "
        "not resending blindly"
    )


class UpstreamTimedOut(SendguardError):
    status = 504
    code = 79005
    decision = Decision.OUTCOME_UNKNOWN
    default_message = "Twilio did not answer in time; the message may have been sent"


class UpstreamReset(SendguardError):
    status = 502
    code = 79006
    decision = Decision.OUTCOME_UNKNOWN
    default_message = "the connection to Twilio broke after sending; the message may have been sent"


class UpstreamUnreachable(SendguardError):
    status = 502
    code = 79007
    decision = Decision.UPSTREAM_UNREACHABLE
    default_message = "could not connect to Twilio; nothing was sent, safe to retry"


class PassthroughTimedOut(SendguardError):
    status = 504
    code = 79008
    decision = Decision.PASSTHROUGH
    default_message = "the upstream did not answer in time"


class PassthroughBroken(SendguardError):
    status = 502
    code = 79009
    decision = Decision.PASSTHROUGH
    default_message = "the connection to the upstream broke before a complete answer"


class Suppressed(SendguardError):
    status = 400
    code = 0  # none of its own: each instance answers with the Twilio code it learned
    decision = Decision.SUPPRESSED
    default_message = "resending cannot succeed"

    def __init__(self, twilio_code: int, message: str | None = None, **kw: Any) -> None:
        self._twilio_code = twilio_code
        super().__init__(message, **kw)

    @property
    def twilio_code(self) -> int:
        return self._twilio_code


class RateLimited(SendguardError):
    status = 429
    code = 20429
    decision = Decision.RATE_LIMITED
    default_message = "too many messages to this recipient"


class BreakerOpen(SendguardError):
    status = 429
    code = 20429
    decision = Decision.BREAKER_OPEN
    default_message = "the recipient's circuit breaker is open"


class Killed(SendguardError):
    status = 503
    code = 79020
    decision = Decision.KILLED
    default_message = "sending is stopped by a kill switch"


class StoreUnavailable(SendguardError):
    status = 503
    code = 79021
    decision = Decision.STORE_UNAVAILABLE
    default_message = "the dedup store is unavailable; refusing to send unguarded"


# -- the status-callback tee (proxy/tee) ------------------------------------------------------


class CallbackForbidden(SendguardError):
    status = 403
    code = 79040
    decision = Decision.REFUSED
    default_message = "the callback's X-Twilio-Signature is not valid for its account"


class CallbackUndeliverable(SendguardError):
    status = 502
    code = 79041
    decision = Decision.UPSTREAM_UNREACHABLE
    default_message = "the app's status callback URL did not take the callback; retry later"


class CallbackMethodNotAllowed(SendguardError):
    status = 405
    code = 79042
    decision = Decision.INVALID_REQUEST
    default_message = "status callbacks are taken by POST only"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "Allow": "POST"}


class TeeDisabled(SendguardError):
    status = 404
    code = 79043
    decision = Decision.INVALID_REQUEST
    default_message = "the status-callback tee is off (SENDGUARD_PUBLIC_URL is not set)"


class InternalError(SendguardError):
    pass
