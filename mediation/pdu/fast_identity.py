"""A PDU's case identity and where its message lies, in one walk of its first headers.

The server's gate (mediation/server/tap_gate.py) asks three things of every
PDU a tap sends: its case identity, which CmII message it is, and, for a
warrant of addresses, the packet's or the report's two addresses. Each
reader walked the PDU's first DER headers again from the start (with
:func:`mediation.pdu.tlv.read_header`, about 0.3 µs a header): seven
headers for a CmII PDU where four say it all.

:func:`first_headers` reads those four once, inline, for the forms every
encoder here writes (a one-octet tag, a short or one- or two-octet long
length, within its enclosing value). For anything else it answers None,
and the caller asks the reference readers, which decide: so an answer of
this module is always theirs (tests/test_tap_gate_fast.py proves it, on
valid and altered encodings).
"""

from __future__ import annotations

from mediation.pdu.tlv import read_header

_SEQUENCE, _OID, _CONTEXT_0, _CASE, _PAYLOAD = 0x30, 0x06, 0xA0, 0x80, 0x81


def span(der: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """``(start, stop)`` of the contents of the TLV at ``pos``, in the common DER forms.

    Args:
        der: the octets.
        pos: where the TLV starts (its tag is the caller's to check: one octet).
        end: where the enclosing value ends.

    Returns:
        Where its contents start and stop, when its length is in the short or
        the one- or two-octet long form, minimal, and within ``end`` (then
        exactly :func:`mediation.pdu.tlv.read_header`'s answer); None for
        every other length (the reference reader decides those).
    """
    if pos + 2 > end:
        return None
    size = der[pos + 1]
    if size < 0x80:
        start = pos + 2
    elif size == 0x81:
        if pos + 3 > end or der[pos + 2] < 0x80:
            return None
        size, start = der[pos + 2], pos + 3
    elif size == 0x82:
        if pos + 4 > end or not der[pos + 2]:
            return None
        size, start = der[pos + 2] << 8 | der[pos + 3], pos + 4
    else:
        return None
    stop = start + size
    return (start, stop) if stop <= end else None


def header(der: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """:func:`mediation.pdu.tlv.read_header` as ``(tag, start, stop)``: short TLVs read inline.

    Args:
        der, pos, end: as ``read_header`` (the TLV at ``pos``, inside ``end``).

    Returns:
        The tag octet and where the contents start and stop.

    Raises:
        PDUError: as ``read_header``, which reads every TLV but a short one
        with a one-octet tag (the fields a reader skips to find another).
    """
    if pos + 2 <= end:
        tag, size = der[pos], der[pos + 1]
        if size < 0x80 and tag & 0x1F != 0x1F and pos + 2 + size <= end:
            return tag, pos + 2, pos + 2 + size
    tag, start, size = read_header(der, pos, end)
    return tag, start, start + size


def first_headers(kind: str, der: bytes) -> tuple[bytes, int, int, int] | None:
    """The case identity's octets, and where the rest of the PDU lies, in the common forms.

    A CmII PDU is ``SEQUENCE { OID, [n] { [0] caseId, ... } }``; a CmCC
    PDU (``IAS-CC-APDU``) is ``SEQUENCE { [0] header { [0] correlationInfo
    { [0] caseId ... } ... }, [1] payload ... }``.

    Args:
        kind: ``"cmII"`` or ``"cmCC"``.
        der: the PDU.

    Returns:
        ``(case, tag, start, stop)``: for CmII the message alternative's tag
        and its contents' bounds; for CmCC the header's tag (``0xA0``), the
        offset just after the header and the end of the PDU's contents (where
        its other fields are). None when any of these headers is not in a
        common form, or the case identity is not the first field, or the
        kind is neither: then the reference readers decide.
    """
    if kind == "cmII":
        steps = _CMII_STEPS
    elif kind == "cmCC":
        steps = _CMCC_STEPS
    else:
        return None
    # :func:`span` inline, once per header in a loop (no call a header): each
    # step checks the tag, reads the length and enters the value or steps
    # over it; any other form, or a bound crossed, answers None.
    pos, stop, kept = 0, len(der), (0, 0, 0, 0)
    for want, enter, keep in steps:
        if pos + 2 > stop:
            return None
        tag, size = der[pos], der[pos + 1]
        if (tag & 0x1F == 0x1F) if want is None else (tag != want):
            return None
        if size < 0x80:
            start = pos + 2
        elif size == 0x81:
            if pos + 3 > stop or der[pos + 2] < 0x80:
                return None
            size, start = der[pos + 2], pos + 3
        elif size == 0x82:
            if pos + 4 > stop or not der[pos + 2]:
                return None
            size, start = der[pos + 2] << 8 | der[pos + 3], pos + 4
        else:
            return None
        end = start + size
        if end > stop:
            return None
        if keep:
            kept = (tag, start, end, stop)
        if enter:
            pos, stop = start, end
        else:
            pos = end
    tag, start, end, outer = kept
    if kind == "cmII":  # the message alternative's tag and contents
        return der[pos:stop], tag, start, end
    return der[pos:stop], _CONTEXT_0, end, outer  # after the header, to the PDU's end


# (tag, or None: any one-octet tag; enter its value, else step over it; keep its bounds)
_CMII_STEPS = (
    (_SEQUENCE, True, False),
    (_OID, False, False),
    (None, True, True),  # the message alternative
    (_CASE, True, False),
)
_CMCC_STEPS = (
    (_SEQUENCE, True, False),
    (_CONTEXT_0, True, True),  # the header
    (_CONTEXT_0, True, False),  # correlationInfo
    (_CASE, True, False),
)


def cc_packet(der: bytes, after_header: int, stop: int) -> bytes | None:
    """A CmCC PDU's ``[1] payload`` when it follows the header directly (the common form).

    Args:
        der, after_header, stop: the PDU and :func:`first_headers`'s bounds.

    Returns:
        The packet, or None when the next field is not ``[1]`` in a common
        form (the reference reader decides).
    """
    if after_header >= stop or der[after_header] != _PAYLOAD:
        return None
    found = span(der, after_header, stop)
    return None if found is None else der[found[0] : found[1]]


def ip_pair(packet: bytes) -> tuple[bytes, bytes] | None:
    """An IP packet's source and destination address (packed), read where the header has them.

    The same octets :func:`mediation.tap.packet.parse_frame` reads for a raw
    IP packet: an IPv4 header of at least 20 octets, an IPv6 one of 40.

    Returns:
        The two addresses; None when the packet is shorter or of another version.
    """
    size = len(packet)
    if not size:
        return None
    version = packet[0] >> 4
    if version == 4 and size >= 20:
        return packet[12:16], packet[16:20]
    if version == 6 and size >= 40:
        return packet[8:24], packet[24:40]
    return None
