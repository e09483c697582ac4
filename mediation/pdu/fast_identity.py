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

import struct

from mediation.pdu.tlv import read_header

_SEQUENCE, _OID, _CONTEXT_0, _CASE, _PAYLOAD = 0x30, 0x06, 0xA0, 0x80, 0x81
_TWO, _FIVE, _SIX = (struct.Struct(f">{n}B").unpack_from for n in (2, 5, 6))


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
    # The tap's own layout first, read with one struct call a PDU and no
    # Python loop (the loop below cost ~0.5 µs a PDU of every tap batch):
    # the outer SEQUENCE's length in any of its three forms, each header
    # inside in the short form (a CmII message alternative also in the
    # one-octet long form). Any other form, and any check that fails, takes
    # the loop, whose answer this always is.
    size = len(der)
    if size < 12 or der[0] != _SEQUENCE:
        return _first_headers_loop(kind, der)
    n = der[1]
    if n < 0x80:
        pos, stop = 2, 2 + n
    elif n == 0x82 and der[2]:
        pos, stop = 4, 4 + (der[2] << 8 | der[3])
    elif n == 0x81 and der[2] >= 0x80:
        pos, stop = 3, 3 + der[2]
    else:
        return _first_headers_loop(kind, der)
    if stop > size:
        return None  # the loop's answer too: the outer value overruns the PDU
    if kind == "cmCC" and pos + 6 <= stop:  # [0] header { [0] correlationInfo { [0] caseId
        header, h, info, i, case, c = _SIX(der, pos)
        after, info_end, end = pos + 2 + h, pos + 4 + i, pos + 6 + c
        if (
            header == _CONTEXT_0 == info
            and case == _CASE
            and h < 0x80 > i
            and c < 0x80
            and end <= info_end <= after <= stop
        ):
            return der[pos + 6 : end], _CONTEXT_0, after, stop
    elif kind == "cmII" and pos + 2 <= stop:  # OID, [n] { [0] caseId
        oid, o = _TWO(der, pos)
        at = pos + 2 + o  # the message alternative
        if oid == _OID and o < 0x80 and at + 5 <= stop:
            tag, n, b2, b3, b4 = _FIVE(der, at)
            if n < 0x80:
                start, case, c = at + 2, b2, b3
            elif n == 0x81 and b2 >= 0x80:  # its length in the one-octet long form
                start, n, case, c = at + 3, b2, b3, b4
            else:
                start, case, c = 0, -1, 0  # another form: the loop
            end = start + n
            if tag & 0x1F != 0x1F and case == _CASE and c < 0x80 and start + 2 + c <= end <= stop:
                return der[start + 2 : start + 2 + c], tag, start, end
    return _first_headers_loop(kind, der)


def _first_headers_loop(kind: str, der: bytes) -> tuple[bytes, int, int, int] | None:
    """:func:`first_headers` for every form, one header a turn."""
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
