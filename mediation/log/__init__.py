"""log (being built)."""
