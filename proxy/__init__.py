"""sendguard: an at-most-once guard proxy in front of the Twilio REST API."""

__version__ = "0.1.0"
