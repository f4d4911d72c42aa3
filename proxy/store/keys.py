"""Every Redis key sendguard uses is built here, and nowhere else.

Each key carries a `{hash tag}` equal to its unit of atomicity (one dedup identity, one
recipient), so every script touches a single Redis Cluster slot, and one busy account never
becomes one hot slot.
"""

from __future__ import annotations

PREFIX = "sg"
# Bump when a stored layout changes incompatibly: old records are then simply not seen.
LAYOUT_VERSION = "1"


def dedup_record(dedup_id: str) -> str:
    """Hash: the claim/outcome record of one logical send (by key scope or fingerprint)."""
    return f"{PREFIX}:{LAYOUT_VERSION}:{{{dedup_id}}}:rec"
