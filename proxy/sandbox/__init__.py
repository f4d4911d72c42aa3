"""The sandbox upstream: a realistic fake Twilio (API 2010 Messages and Calls).

`sendguard serve --upstream sandbox` uses it as a network-free Twilio for demos; the test suite
uses it as the fake Twilio whose counts are the ground truth for "at most once":
`SandboxState.creates` counts resources actually created, `received` every request as sent.
Faults are opt-in, from `SandboxState.push_fault(...)` or the `X-Sandbox-Fault` request header;
list lag (a new message missing from the list for a while) from `SandboxState.list_lag_seconds`
or the `X-Sandbox-List-Lag` header of a create.
"""

from proxy.sandbox.app import create_sandbox_app, start_sandbox
from proxy.sandbox.callbacks import twilio_signature
from proxy.sandbox.faults import FAULT_HEADER, FAULT_KINDS, LIST_LAG_HEADER, Fault, parse_fault
from proxy.sandbox.keys import SANDBOX_STATE
from proxy.sandbox.state import CallbackAttempt, ReceivedRequest, SandboxState

__all__ = [
    "FAULT_HEADER",
    "FAULT_KINDS",
    "LIST_LAG_HEADER",
    "SANDBOX_STATE",
    "CallbackAttempt",
    "Fault",
    "ReceivedRequest",
    "SandboxState",
    "create_sandbox_app",
    "parse_fault",
    "start_sandbox",
    "twilio_signature",
]
