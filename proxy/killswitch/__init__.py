"""Kill switches (docs/contract.md#kill-switch): stop guarded sends by scope, everywhere,
within a second.

model.py   pure: Scope, KillSwitch, SendAttributes, match(), retry_after(), env parsing
store.py   Redis shell: one hash + change channel, engage/release/list scripts
board.py   the local snapshot the hot path checks, kept fresh by push + periodic resync
audit.py   event names and the audit log lines of every change
"""

from proxy.killswitch.board import BoardState, KillSwitchBoard
from proxy.killswitch.model import (
    DEFAULT_RETRY_AFTER,
    KillSwitch,
    Scope,
    ScopeKind,
    SendAttributes,
    match,
    parse_break_glass,
    parse_env_switches,
    parse_sender,
    retry_after,
)
from proxy.killswitch.store import Engaged, KillSwitchStore, Listing, Released

__all__ = [
    "DEFAULT_RETRY_AFTER",
    "BoardState",
    "Engaged",
    "KillSwitch",
    "KillSwitchBoard",
    "KillSwitchStore",
    "Listing",
    "Released",
    "Scope",
    "ScopeKind",
    "SendAttributes",
    "match",
    "parse_break_glass",
    "parse_env_switches",
    "parse_sender",
    "retry_after",
]
