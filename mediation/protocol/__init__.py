"""protocol (being built)."""
