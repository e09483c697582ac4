"""The hot path: hand-written DER for CC APDUs and delivery envelopes.

Byte-identical to the reference codec (:mod:`mediation.pdu.codec`, built on
asn1tools' ``der``) for every valid record, and proven so by property tests
(``tests/test_pdu_fast.py``). Decoding is strict DER: whatever it accepts
the reference accepts too, with an equal record; anything else is a
:class:`PDUError` with a byte offset, never another exception.

Public surface::

    encode_cc(apdu) -> bytes              decode_cc(data) -> CCApdu
    encode_envelope(envelope) -> bytes    decode_envelope(data) -> Envelope
    encode_envelope_raw(stream, seq, time, kind, content_der, ...) -> bytes
    split_envelope(data) -> SplitEnvelope (header fields, kind, content_der)
    encode_content(content) -> (kind, der)
    decode_content(kind, der) -> content
    encode(record) / decode(data)         any PDU, fast where it can be
    decode_control(data) -> Acknowledgement | ReceiverReport | None
                                          (None: leave it to the reference)

CC content is encoded and decoded here; CmII messages and completeness
notices (rare, varied) go through the reference codec and are spliced in
or out: their standalone ``0x30`` SEQUENCE becomes the implicit ``[0]`` or
``[2]`` inside the explicit ``content [5]``, with the same length octets.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

from mediation.pdu import codec, fast_cmii
from mediation.pdu.cmcc import CCApdu
from mediation.pdu.cmii import CmIIMessage
from mediation.pdu.convert import utc
from mediation.pdu.delivery import (
    MAX_SEQUENCE,
    ClockStatus,
    CompletenessNotice,
    Envelope,
    EnvelopeContent,
    StreamId,
    StreamKind,
    check_range,
)
from mediation.pdu.errors import PDUError
from mediation.pdu.fast_cc import cc_contents, read_cc
from mediation.pdu.fast_control import decode_control
from mediation.pdu.fast_der import Buffer, as_bytes, expect, guarded, length
from mediation.pdu.fast_envelope import (
    CMCC,
    CMII,
    CONTENT_KINDS,
    FIRST_TAGS,
    KIND_TAG,
    NOTICE,
    frame,
    read_envelope,
)
from mediation.pdu.fast_usual import read_cc_usual, read_envelope_usual
from mediation.pdu.tlv import read_header

__all__ = [
    "CMCC",
    "CMII",
    "CONTENT_KINDS",
    "NOTICE",
    "SplitEnvelope",
    "decode",
    "decode_cc",
    "decode_content",
    "decode_control",
    "decode_envelope",
    "encode",
    "encode_cc",
    "encode_content",
    "encode_envelope",
    "encode_envelope_raw",
    "split_envelope",
]


class SplitEnvelope(NamedTuple):
    """An envelope's header fields and its content, still encoded.

    The field order is :func:`encode_envelope_raw`'s parameter order, so
    ``encode_envelope_raw(*split_envelope(data))`` rebuilds ``data``
    (less any extension fields of a later version).
    """

    stream: StreamId
    sequence_number: int
    mediation_time: dt.datetime
    content_kind: str
    content_der: bytes
    clock_status: ClockStatus | None
    redelivered: bool


# Encoding ----------------------------------------------------------------------


def _reference_encode(record: CCApdu | Envelope) -> bytes:
    """The reference codec, for values of a type the fast encoder does not expect.

    It either encodes them (byte-identical by definition) or raises the
    PDUError it always raises. Valid records never come here (tested).
    """
    return codec.encode(record)


def encode_cc(apdu: CCApdu) -> bytes:
    """DER of a standalone ``IAS-CC-APDU``, byte-identical to the reference.

    Args:
        apdu: the CC record.

    Returns:
        The encoding, starting with ``0x30``.

    Raises:
        PDUError: not a :class:`CCApdu`, or a value the schema refuses.
    """
    if not isinstance(apdu, CCApdu):
        raise PDUError(f"encode_cc: not a CCApdu but a {type(apdu).__name__}")
    try:
        contents = cc_contents(apdu)
    except Exception:  # an unexpected value type: the reference decides
        return _reference_encode(apdu)
    return b"\x30" + length(len(contents)) + contents


def encode_content(content: EnvelopeContent) -> tuple[str, bytes]:
    """A content PDU encoded on its own, as the evidence log stores it.

    Args:
        content: a CmII message, a CC APDU or a completeness notice.

    Returns:
        ``(content_kind, der)``: ``"cmII"``, ``"cmCC"`` or ``"notice"``, and
        the standalone DER SEQUENCE (starting with ``0x30``).

    Raises:
        PDUError: another type, or a value the schema refuses.
    """
    if isinstance(content, CCApdu):
        return CMCC, encode_cc(content)
    if isinstance(content, CmIIMessage):
        return CMII, codec.encode(content)
    if isinstance(content, CompletenessNotice):
        return NOTICE, codec.encode_notice(content)
    raise PDUError(f"content: cannot carry a {type(content).__name__}")


def encode_envelope(envelope: Envelope) -> bytes:
    """DER of a DeliveryMessage ``pduEnvelope``, byte-identical to the reference.

    Args:
        envelope: the envelope record.

    Returns:
        The encoding, starting with ``0xA0``.

    Raises:
        PDUError: not an :class:`Envelope`, or a value the schema refuses.
    """
    if not isinstance(envelope, Envelope):
        raise PDUError(f"encode_envelope: not an Envelope but a {type(envelope).__name__}")
    content = envelope.content
    try:
        if content.__class__ is CCApdu:
            contents = cc_contents(content)
            head = b"\xa1" + length(len(contents))
        else:
            kind, der = encode_content(content)
            head, contents = bytes((KIND_TAG[kind],)), memoryview(der)[1:]
        return frame(
            envelope.stream,
            envelope.sequence_number,
            envelope.mediation_time,
            envelope.clock_status,
            envelope.redelivered,
            head,
            contents,
        )
    except PDUError:
        raise
    except Exception:  # an unexpected value type: the reference decides
        return _reference_encode(envelope)


def encode_envelope_raw(
    stream: StreamId,
    sequence_number: int,
    mediation_time: dt.datetime,
    content_kind: str,
    content_der: bytes,
    clock_status: ClockStatus | None = None,
    redelivered: bool = False,
) -> bytes:
    """Wrap an already-encoded content PDU in a pduEnvelope, without decoding it.

    Equal to the reference encoding of the equivalent :class:`Envelope`.

    Args:
        stream: the warrant stream.
        sequence_number: 0 to 2**64 - 1.
        mediation_time: an aware datetime (when the server stored the PDU).
        content_kind: ``"cmII"``, ``"cmCC"`` or ``"notice"``.
        content_der: the standalone DER of an ``IasProtocol``,
            ``IAS-CC-APDU`` or ``CompletenessNotice`` (one SEQUENCE, ``0x30``).
        clock_status: the server clock's state, if known.
        redelivered: the envelope was sent before.

    Returns:
        The DeliveryMessage encoding, starting with ``0xA0``.

    Raises:
        PDUError: a bad argument, or ``content_der`` is not one whole DER
        SEQUENCE that starts like a ``content_kind``.
    """
    tag = KIND_TAG.get(content_kind)
    if tag is None:
        raise PDUError(f"content_kind: must be one of {', '.join(CONTENT_KINDS)}")
    if not isinstance(stream, StreamId):
        raise PDUError(f"stream: must be a StreamId, got {type(stream).__name__}")
    check_range("sequenceNumber", sequence_number, MAX_SEQUENCE)
    mediation_time = utc(mediation_time, "mediationTime")
    if clock_status is not None and not isinstance(clock_status, ClockStatus):
        raise PDUError(f"clockStatus: must be a ClockStatus, got {clock_status!r}")
    if not isinstance(content_der, bytes | bytearray | memoryview):
        raise PDUError("content_der: must be bytes")
    content = memoryview(content_der)
    end = len(content)
    if end < 3 or content[0] != 0x30:
        raise PDUError("content_der: not a DER SEQUENCE", 0)
    _tag, start, size = read_header(content, 0, end)
    stop = start + size
    if stop != end:
        raise PDUError(f"content_der: {end - stop} bytes after the SEQUENCE", stop)
    if start >= end or content[start] not in FIRST_TAGS[content_kind]:
        raise PDUError(f"content_der: does not start like a {content_kind} PDU", start)
    return frame(
        stream,
        sequence_number,
        mediation_time,
        clock_status,
        bool(redelivered),
        bytes((tag,)),
        content[1:],
    )


# Decoding ----------------------------------------------------------------------


def _reference_content(kind: str, der: bytes, base: int) -> EnvelopeContent:
    """Decode a cmII or notice content with the reference codec; offsets made absolute."""
    try:
        if kind == CMII:
            return fast_cmii.decode_cmii(der)  # once per shape by the reference, then the time only
        return codec.decode_notice(der)
    except PDUError as exc:
        raise PDUError(exc.message, base + (exc.offset or 0)) from None


_NEW = object.__new__


def decode_envelope(data: Buffer) -> Envelope:
    """Decode one DeliveryMessage ``pduEnvelope`` (exactly, no trailing bytes).

    Args:
        data: the encoding, starting with ``0xA0``.

    Returns:
        The record, equal to what the reference codec decodes.

    Raises:
        PDUError: anything else, with the byte offset where it was found.
    """
    # guarded() written out: this is the per-packet call.
    try:
        if data.__class__ is not bytes:
            data = as_bytes(data)
        fields = read_envelope_usual(data) or read_envelope(data)
        stream, sequence, time, clock, redelivered, kind, content, start, stop = fields
        if (kind == CMCC) != (stream.kind is StreamKind.CMCC):
            raise PDUError(f"content: {kind} cannot ride in a {stream.kind.value} stream", content)
        if kind == CMCC:
            record: EnvelopeContent = read_cc_usual(data, start, stop) or read_cc(data, start, stop)
        elif kind == CMII:  # a header report of a remembered shape: without the DER's copy
            try:
                record = fast_cmii.decode_cmii_in(data, content, stop)
            except PDUError as exc:
                raise PDUError(exc.message, content + (exc.offset or 0)) from None
        else:
            record = _reference_content(kind, b"\x30" + data[content + 1 : stop], content)
        # read_envelope checked the range, the time (aware UTC) and, above, the
        # stream kind: everything Envelope.__post_init__ would check again.
        # Built without Envelope.__post_init__, whose checks (range, aware UTC
        # time, stream kind) read_envelope and the line above have made: they
        # would cost 1.2 us of a 5 us decode. Records are plain frozen
        # dataclasses, so filling the instance dict is what __init__ does.
        envelope = _NEW(Envelope)
        values = envelope.__dict__
        values["stream"] = stream
        values["sequence_number"] = sequence
        values["mediation_time"] = time
        values["content"] = record
        values["clock_status"] = clock
        values["redelivered"] = redelivered
        return envelope
    except PDUError as exc:
        if exc.offset is None:
            raise PDUError(exc.message, 0) from None
        raise
    except Exception as exc:  # a safety net: the readers check before they index
        raise PDUError(f"pduEnvelope: undecodable ({type(exc).__name__})", 0) from None


def _split(data: bytes) -> SplitEnvelope:
    stream, sequence, time, clock, redelivered, kind, content, _start, stop = read_envelope(data)
    der = b"\x30" + data[content + 1 : stop]
    return SplitEnvelope(stream, sequence, time, kind, der, clock, redelivered)


def split_envelope(data: Buffer) -> SplitEnvelope:
    """An envelope's header fields and its content as a standalone DER SEQUENCE.

    The header is validated like :func:`decode_envelope`; the content is
    only framed (one TLV of a known kind), not decoded. Extension fields of
    a later version are dropped.

    Args:
        data: a DeliveryMessage ``pduEnvelope`` encoding.

    Returns:
        A :class:`SplitEnvelope`; its ``content_der`` starts with ``0x30``.

    Raises:
        PDUError: bad framing or header fields, with the byte offset.
    """
    return guarded("pduEnvelope", _split, data)


def _decode_cc(data: bytes) -> CCApdu:
    size = len(data)
    start, end = expect(data, 0, size, 0x30, "IAS-CC-APDU")
    if end != size:
        raise PDUError(f"IAS-CC-APDU: {size - end} bytes after the PDU", end)
    return read_cc(data, start, end)


def decode_cc(data: Buffer) -> CCApdu:
    """Decode one standalone ``IAS-CC-APDU`` (exactly, no trailing bytes).

    Args:
        data: the encoding, starting with ``0x30``.

    Returns:
        The record, equal to what the reference codec decodes.

    Raises:
        PDUError: not strict DER of the type, with the byte offset.
    """
    return guarded("IAS-CC-APDU", _decode_cc, data)


def decode_content(kind: str, der: Buffer) -> EnvelopeContent:
    """Decode a standalone content PDU, as :func:`split_envelope` returns it.

    Args:
        kind: ``"cmII"``, ``"cmCC"`` or ``"notice"``.
        der: its standalone DER SEQUENCE.

    Returns:
        The content record.

    Raises:
        PDUError: an unknown kind or a bad encoding.
    """
    if kind == CMCC:
        return decode_cc(der)
    if kind not in KIND_TAG:
        raise PDUError(f"content_kind: must be one of {', '.join(CONTENT_KINDS)}")
    return guarded(kind, lambda raw: _reference_content(kind, raw, 0), der)


def encode(record: codec.Record) -> bytes:
    """:func:`mediation.pdu.codec.encode`, on the hot path for envelopes and CC APDUs.

    Args:
        record: any record the reference codec encodes.

    Returns:
        Its DER encoding, byte-identical to the reference.

    Raises:
        PDUError: as the reference codec.
    """
    if isinstance(record, Envelope):
        return encode_envelope(record)
    if isinstance(record, CCApdu):
        return encode_cc(record)
    return codec.encode(record)


def decode(data: Buffer) -> codec.Record:
    """:func:`mediation.pdu.codec.decode`, on the hot path for envelopes and CC APDUs.

    Args:
        data: one PDU of any kind.

    Returns:
        The record, equal to what the reference codec decodes.

    Raises:
        PDUError: as the reference codec (stricter: DER only on the hot path).
    """
    data = as_bytes(data)
    if data[:1] == b"\xa0":
        return decode_envelope(data)
    if codec.kind_of(data) == codec.CMCC:
        return decode_cc(data)
    return codec.decode(data)
