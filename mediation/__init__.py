"""Lawful-intercept mediation in the style of ATIS T1.IAS (US CALEA)."""

__version__ = "0.1.0"
