"""Kill switches (docs/contract.md#kill-switch): stop guarded sends by scope, everywhere,
within a second.

addresses.py  pure: senders, numbers and SIDs in canonical form
scopes.py     pure: Scope (what a switch stops), parsed strictly into canonical text
model.py      pure: KillSwitch, SendAttributes, match(), retry_after(), env parsing
store.py      Redis shell: one hash + change channel, engage/release/list scripts
board.py      the local snapshot the hot path checks, kept fresh by push + periodic resync
audit.py      event names and the audit log lines of every change
"""

from proxy.killswitch.addresses import parse_sender
from proxy.killswitch.board import BoardState, KillSwitchBoard
from proxy.killswitch.model import (
    DEFAULT_RETRY_AFTER,
    KillSwitch,
    SendAttributes,
    match,
    parse_break_glass,
    parse_env_switches,
    retry_after,
)
from proxy.killswitch.scopes import Scope, ScopeKind
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
