"""tap (being built)."""
