"""The upstream side: which host a request goes to, and the one HTTP client that sends it."""
