"""One-pass readers for what a receiver decodes all day: the usual layout of an envelope and a CC.

A receiver decodes every envelope it is sent, and nearly all of them are
laid out one way: short or one- or two-octet long lengths, a stream and a
correlation information seen before (their records cached by the full
readers), positive sequence numbers, no extension fields. These readers
take that layout in one pass, with none of the calls the full readers
(``fast_envelope.read_envelope``, ``fast_cc.read_cc``) make per field but
one shared length reader (:func:`_contents`), and return None on any
doubt: the full reader then reads the data and names the fault. Whatever
they return is what the full reader returns (the times are read by the
same ``read_time``, which raises what the full reader would raise there):
proven by property tests (tests/test_pdu_fast_reuse.py).
"""

from __future__ import annotations

from mediation.pdu.cmcc import CCApdu, CCDeliveryHeader
from mediation.pdu.fast_cc import _DIRECTION_OF, _INFO_RECORDS
from mediation.pdu.fast_der import _TIMES, read_time
from mediation.pdu.fast_envelope import _CLOCK_OF, _STREAM_RECORDS, TAG_KIND, EnvelopeFields

_NEW = object.__new__


def _contents(data: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """Where the contents of the TLV at ``pos`` start, and their length; None past the usual.

    The short and the one- and two-octet long forms, valid DER, as
    ``fast_der.expect`` reads them inline (the tag is the caller's to
    check), but None where that would raise: the full reader then names
    the fault. One function rather than three inline copies: it costs
    0.05-0.15 us a CC envelope and its CC (in process, 2026-12-04), about
    1% of a receiver's CPU a PDU.
    """
    n = data[pos + 1]
    if n < 0x80:
        return pos + 2, n
    if n == 0x81 and pos + 3 <= end and data[pos + 2] >= 0x80:
        return pos + 3, data[pos + 2]
    if n == 0x82 and pos + 4 <= end and data[pos + 2]:
        return pos + 4, data[pos + 2] << 8 | data[pos + 3]
    return None


def read_envelope_usual(data: bytes) -> EnvelopeFields | None:
    """:func:`read_envelope` for the usual layout in one pass; None for anything else.

    The usual layout: every length in its short or one- or two-octet long
    form, a stream seen before (its record cached by ``read_envelope``),
    a sequence number of up to 8 octets, a clock status of one octet,
    ``redelivered`` absent or TRUE, no extension fields. Every field is
    checked as ``read_envelope`` checks it (the time by ``read_time``,
    which raises what ``read_envelope`` would raise); on any doubt it
    returns None and ``read_envelope`` reads the envelope and names the
    fault. A receiver decodes every envelope: inline, a decode saves the
    seven calls ``read_envelope`` makes (a fifth of it). Proven equal by a
    property test (tests/test_pdu_fast_reuse.py).
    """
    size = len(data)
    if size < 4 or data[0] != 0xA0:
        return None
    first = data[1]
    if first == 0x82 and data[2] and (data[2] << 8 | data[3]) + 4 == size:
        pos = 4
    elif first == 0x81 and data[2] >= 0x80 and data[2] + 3 == size:
        pos = 3
    elif first < 0x80 and first + 2 == size:
        pos = 2
    else:
        return None
    if data[pos] != 0xA0 or (n := data[pos + 1]) >= 0x80:
        return None
    start = pos + 2
    pos = start + n
    stream = _STREAM_RECORDS.get(data[start:pos])
    if stream is None or pos + 2 > size or data[pos] != 0x81:
        return None
    n = data[pos + 1]
    start = pos + 2
    pos = start + n
    if pos > size or n == 0 or n > 9:
        return None
    lead = data[start]
    if n == 1 and lead < 0x80:
        sequence = lead
    elif (n <= 8 and 0 < lead < 0x80) or (lead == 0 and data[start + 1] >= 0x80):
        sequence = int.from_bytes(data[start:pos], "big")  # under 2**64: in range
    else:
        return None
    if pos + 2 > size or data[pos] != 0x82 or (n := data[pos + 1]) >= 0x80 or pos + 2 + n > size:
        return None
    start = pos + 2
    pos = start + n
    time = _TIMES.get(data[start:pos]) or read_time(data, start, pos, "mediationTime")
    clock = None
    if pos + 3 <= size and data[pos] == 0x83:
        if data[pos + 1] != 1 or data[pos + 2] >= 0x80:
            return None
        clock = _CLOCK_OF.get(data[pos + 2])
        pos += 3
    redelivered = False
    if pos + 3 <= size and data[pos] == 0x84:
        if data[pos + 1] != 1 or data[pos + 2] != 0xFF:
            return None
        redelivered = True
        pos += 3
    # content [5], then its alternative, each ending where the envelope ends
    if pos + 2 > size or data[pos] != 0xA5 or (got := _contents(data, pos, size)) is None:
        return None
    content, n = got
    if content + n != size or content + 2 > size:
        return None
    kind = TAG_KIND.get(data[content])
    if kind is None or (got := _contents(data, content, size)) is None:
        return None
    start, n = got
    if start + n != size:
        return None
    return stream, sequence, time, clock, redelivered, kind, content, start, size


def read_cc_usual(data: bytes, pos: int, end: int) -> CCApdu | None:
    """:func:`fast_cc.read_cc` of ``data[pos:end]`` for the usual layout; None for anything else.

    The usual layout: a ccDeliveryHeader of under 128 octets whose
    correlation information was seen before, its fields each present or
    not, a positive sequence number of up to 8 octets, then the payload.
    """
    if end - pos < 4 or data[pos] != 0xA0 or (n := data[pos + 1]) >= 0x80:
        return None
    pos += 2
    stop = pos + n  # the header's end
    if stop + 2 > end or data[pos] != 0xA0 or (n := data[pos + 1]) >= 0x80 or pos + 2 + n > stop:
        return None
    info = _INFO_RECORDS.get(data[pos + 2 : pos + 2 + n])
    if info is None:
        return None
    pos += 2 + n
    time_stamp = direction = sequence = None
    if pos < stop and data[pos] == 0x81:
        if (n := data[pos + 1]) >= 0x80 or pos + 2 + n > stop:
            return None
        time_stamp = _TIMES.get(data[pos + 2 : pos + 2 + n]) or read_time(
            data, pos + 2, pos + 2 + n, "timeStamp"
        )
        pos += 2 + n
    if pos < stop and data[pos] == 0x82:
        if pos + 3 > stop or data[pos + 1] != 1:
            return None
        direction = _DIRECTION_OF.get(data[pos + 2])
        if direction is None:
            return None
        pos += 3
    if pos < stop and data[pos] == 0x83:  # non-negative, 1 to 8 octets, DER (inline: per CC)
        n = data[pos + 1]
        start = pos + 2
        pos = start + n
        if n < 1 or n > 8 or pos > stop:
            return None
        lead = data[start]
        if n == 1 and lead < 0x80:
            sequence = lead
        elif n > 1 and (0 < lead < 0x80 or (lead == 0 and data[start + 1] >= 0x80)):
            sequence = int.from_bytes(data[start:pos], "big")
        else:
            return None
    if pos != stop or data[pos] != 0x81:
        return None
    got = _contents(data, pos, end)  # the payload, ending where the CC ends
    if got is None or got[0] + got[1] != end:
        return None
    start = got[0]
    header = _NEW(CCDeliveryHeader)  # what fast_cc.read_cc builds, as it builds it
    fields = header.__dict__
    fields["correlation_info"] = info
    fields["time_stamp"] = time_stamp
    fields["packet_direction"] = direction
    fields["sequence_number"] = sequence
    apdu = _NEW(CCApdu)
    fields = apdu.__dict__
    fields["payload"] = data[start:end]
    fields["header"] = header
    return apdu
