"""evidence (being built)."""
