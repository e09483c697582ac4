"""lea (being built)."""
