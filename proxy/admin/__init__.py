"""The admin API on its own port (docs/contract.md#admin)."""
