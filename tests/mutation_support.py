"""Altered encodings for the hand-written decoders' equivalence tests."""

from __future__ import annotations

from hypothesis import strategies as st


def altered(der: bytes, data: st.DataObject) -> tuple[bytes, ...]:
    """``der`` with one octet changed, cut short, one octet more, and changed then spliced.

    Args:
        der: a valid encoding (at least one octet).
        data: hypothesis's draw source, so failures shrink.

    Returns:
        The four variants, for a decoder to answer exactly as the reference does.
    """
    position = data.draw(st.integers(0, len(der) - 1))
    octet = data.draw(st.integers(0, 255))
    changed = der[:position] + bytes((octet,)) + der[position + 1 :]
    cut = data.draw(st.integers(0, len(der)))
    return (changed, der[:cut], der + b"\x00", changed + der[cut:])
