"""warrants (being built)."""
