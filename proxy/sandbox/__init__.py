"""The sandbox upstream: a realistic fake Twilio (API 2010 Messages and Calls).

`sendguard serve --upstream sandbox` uses it as a network-free Twilio for demos; the test suite
uses it as the fake Twilio whose counts are the ground truth for "at most once":
`SandboxState.creates` counts resources actually created, `received` every request as sent.
Faults are opt-in, from `SandboxState.push_fault(...)` or the `X-Sandbox-Fault` request header.
"""

from proxy.sandbox.app import create_sandbox_app, start_sandbox
from proxy.sandbox.callbacks import twilio_signature
from proxy.sandbox.faults import FAULT_HEADER, FAULT_KINDS, Fault, parse_fault
from proxy.sandbox.keys import SANDBOX_STATE
from proxy.sandbox.state import CallbackAttempt, ReceivedRequest, SandboxState

__all__ = [
    "FAULT_HEADER",
    "FAULT_KINDS",
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
