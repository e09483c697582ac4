"""Acknowledgements and receiver reports, read by hand for the delivery hot path.

Internals of :mod:`mediation.pdu.fast`. An agency sends an
``acknowledgement`` every few dozen envelopes over TLS and a
``receiverReport`` every second per UDP stream; the reference codec takes
about 80 us for either, this about 3. Strict DER, like the envelope
reader: whatever it accepts the reference accepts with an equal record
(tests/test_pdu_fast_control.py). The agency writes an acknowledgement
here too (:func:`encode_acknowledgement`, about 2 us against some 100-400
for the reference), byte-identical to the reference. A field it does not expect (a later
version's extension, say) is not its business: it says "ask the reference"
by returning None, so the reference alone decides everything unusual.
"""

from __future__ import annotations

from mediation.pdu.delivery import (
    MAX_SEQUENCE,
    Acknowledgement,
    ChainCheckpoint,
    ReceiverReport,
    SequenceRange,
)
from mediation.pdu.errors import PDUError
from mediation.pdu.fast_cc import CACHE_LIMIT
from mediation.pdu.fast_der import (
    expect,
    generalized_time,
    integer,
    read_integer,
    read_time,
    tlv,
)
from mediation.pdu.fast_envelope import _STREAM_RECORDS, _read_stream, _stream_tlv

_MAX_COUNT = 2**64 - 1  # INTEGER (0..18446744073709551615)


def decode_control(data: bytes) -> Acknowledgement | ReceiverReport | None:
    """An ``acknowledgement`` ([3]) or ``receiverReport`` ([6]) DeliveryMessage.

    Args:
        data: one whole DeliveryMessage.

    Returns:
        The record, or None: another message, or anything this reader
        does not take on itself (a malformed one, an extension); the
        caller decodes those with the reference codec.
    """
    try:
        if data[0] == 0xA3:
            return _acknowledgement(data)
        if data[0] == 0xA6:
            return _report(data)
    except (PDUError, IndexError):
        return None
    return None


def encode_acknowledgement(ack: Acknowledgement) -> bytes:
    """The DER of an ``acknowledgement`` ([3]) DeliveryMessage, as the reference writes it.

    Args:
        ack: a valid record (its fields were checked when it was made).

    Returns:
        ``[3] { stream [0] { warrantHandle, kind }, nextExpected [1] }``.
    """
    return tlv(b"\xa3", _stream_tlv(ack.stream) + tlv(b"\x81", integer(ack.next_expected)))


def encode_checkpoint(checkpoint: ChainCheckpoint) -> bytes:
    """The DER of a ``chainCheckpoint`` ([7]) DeliveryMessage, as the reference writes it.

    Every endpoint of a stream sends each of its signed checkpoints (one a
    second or per 1,000 records): about 3 us here against 100 or more.

    Args:
        checkpoint: a valid record (its fields were checked when it was made).
    """
    return tlv(
        b"\xa7",
        b"".join(
            (
                _stream_tlv(checkpoint.stream),
                tlv(b"\x81", integer(checkpoint.last_sequence)),
                tlv(b"\x82", checkpoint.chain_hash),
                tlv(b"\x83", generalized_time(checkpoint.checkpoint_time)),
                tlv(b"\x84", checkpoint.signature),
                tlv(b"\x85", checkpoint.key_id),
            )
        ),
    )


def _outer(data: bytes) -> tuple[int, int]:
    pos, end = expect(data, 0, len(data), data[0], "message")
    if end != len(data):
        raise PDUError("bytes after the message", end)
    return pos, end


def _stream(data: bytes, pos: int, end: int) -> tuple[object, int]:
    start, stop = expect(data, pos, end, 0xA0, "stream")
    raw = data[start:stop]
    stream = _STREAM_RECORDS.get(raw)
    if stream is None:
        stream = _read_stream(data, start, stop)
        if len(_STREAM_RECORDS) >= CACHE_LIMIT:
            _STREAM_RECORDS.clear()
        _STREAM_RECORDS[raw] = stream
    return stream, stop


def _number(data: bytes, pos: int, end: int, tag: int, what: str, top: int) -> tuple[int, int]:
    start, stop = expect(data, pos, end, tag, what)
    value = read_integer(data, start, stop, what)
    if not 0 <= value <= top:
        raise PDUError(f"{what}: out of range", start)
    return value, stop


def _acknowledgement(data: bytes) -> Acknowledgement | None:
    pos, end = _outer(data)
    stream, pos = _stream(data, pos, end)
    next_expected, pos = _number(data, pos, end, 0x81, "nextExpected", MAX_SEQUENCE)
    if pos != end:
        return None  # an extension: the reference's business
    return Acknowledgement(stream, next_expected)  # type: ignore[arg-type]


def _report(data: bytes) -> ReceiverReport | None:
    pos, end = _outer(data)
    stream, pos = _stream(data, pos, end)
    start, pos = expect(data, pos, end, 0x81, "reportTime")
    report_time = read_time(data, start, pos, "reportTime")
    highest = None
    if pos < end and data[pos] == 0x82:
        highest, pos = _number(data, pos, end, 0x82, "highestSequence", MAX_SEQUENCE)
    received, pos = _number(data, pos, end, 0x83, "receivedCount", _MAX_COUNT)
    start, pos = expect(data, pos, end, 0xA4, "missing")
    missing = _ranges(data, start, pos)
    omitted = None
    if pos < end and data[pos] == 0x85:
        omitted, pos = _number(data, pos, end, 0x85, "missingOmitted", _MAX_COUNT)
    if pos != end:
        return None
    return ReceiverReport(
        stream,  # type: ignore[arg-type]
        report_time,
        received,
        missing,
        highest_sequence=highest,
        missing_omitted=omitted,
    )


def _ranges(data: bytes, pos: int, end: int) -> tuple[SequenceRange, ...]:
    """SEQUENCE OF SequenceRange contents (bounded by the datagram or message)."""
    out = []
    while pos < end:
        start, pos = expect(data, pos, end, 0x30, "SequenceRange")
        first, at = _number(data, start, pos, 0x80, "first", MAX_SEQUENCE)
        last, at = _number(data, at, pos, 0x81, "last", MAX_SEQUENCE)
        if at != pos or last < first:
            raise PDUError("SequenceRange: not first then last", start)
        out.append(SequenceRange(first, last))
    return tuple(out)
