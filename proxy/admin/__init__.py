"""The admin API on its own port (SPEC §5)."""
