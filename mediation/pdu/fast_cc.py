"""Hand-written DER for the contents of ``IAS-CC-APDU`` (the hot path).

The contents are the same whether the APDU stands alone (``0x30``) or sits
in an envelope as ``cmCC [1]`` (``0xA1``), so both use these functions; the
public API is in :mod:`mediation.pdu.fast`.

The correlation information of a stream is the same in every packet, so
its encoding (and its decoded record) is cached, keyed by the record (and
by the raw bytes). Records are frozen, so sharing one is safe.
"""

from __future__ import annotations

from mediation.pdu.cmcc import CCApdu, CCDeliveryHeader, CorrelationInfo, PacketDirection
from mediation.pdu.cmii import CallID, ContentIdentifier
from mediation.pdu.errors import PDUError
from mediation.pdu.fast_der import (
    Unsupported,
    expect,
    generalized_time,
    integer,
    length,
    read_integer,
    read_time,
    tlv,
)

# Bounded caches: one entry per live stream; cleared whole when full, which
# costs one re-encode per stream and keeps memory flat under churn.
CACHE_LIMIT = 4096
_INFO_BYTES: dict[CorrelationInfo, bytes] = {}
_INFO_RECORDS: dict[bytes, CorrelationInfo] = {}

# ENUMERATED { fromSubject(0), toSubject(1) }, as the whole [2] TLV.
_DIRECTION_TLV = {
    PacketDirection.FROM_SUBJECT: b"\x82\x01\x00",
    PacketDirection.TO_SUBJECT: b"\x82\x01\x01",
}
_DIRECTION_OF = {0: PacketDirection.FROM_SUBJECT, 1: PacketDirection.TO_SUBJECT}


def _text(value: str, codec: str) -> bytes:
    if not isinstance(value, str):
        raise Unsupported
    return value.encode(codec)


def content_identifier_tlv(cid: ContentIdentifier) -> bytes:
    """``ContentIdentifier`` as its alternative's TLV (without an outer explicit tag).

    Args:
        cid: the content identifier.

    Returns:
        ``[0]`` correlationID or ``[1]`` callID, whole.

    Raises:
        Unsupported: a value of an unexpected Python type.
    """
    value = cid.value
    if cid.alternative == "correlationID":
        if not isinstance(value, bytes | bytearray):
            raise Unsupported
        return tlv(b"\x80", bytes(value))
    if cid.alternative == "callID" and isinstance(value, CallID):
        body = tlv(b"\x80", _text(value.main, "utf-8"))
        if value.leg is not None:
            body += tlv(b"\x81", _text(value.leg, "utf-8"))
        return tlv(b"\xa1", body)
    raise Unsupported


# The last correlation information encoded, checked by identity first (a tap
# reuses one record per stream, and hashing it costs 0.17 us).
_LAST_INFO: list = [None, b""]


def _info_tlv(info: CorrelationInfo) -> bytes:
    last = _LAST_INFO
    if info is last[0]:
        return last[1]
    cached = _INFO_BYTES.get(info)
    if cached is not None:
        last[0], last[1] = info, cached
        return cached
    body = b""
    if info.case_id is not None:
        body += tlv(b"\x80", _text(info.case_id, "ascii"))
    if info.iap_id is not None:
        body += tlv(b"\x81", _text(info.iap_id, "ascii"))
    # contentIdentifier [2] is a CHOICE, so its tag is explicit.
    body += tlv(b"\xa2", content_identifier_tlv(info.content_identifier))
    encoded = tlv(b"\xa0", body)
    if len(_INFO_BYTES) >= CACHE_LIMIT:
        _INFO_BYTES.clear()
    _INFO_BYTES[info] = encoded
    last[0], last[1] = info, encoded
    return encoded


def header_tlv(header: CCDeliveryHeader) -> bytes:
    """``ccDeliveryHeader [0]`` as a whole TLV.

    Args:
        header: the CC delivery header.

    Returns:
        Its encoding, tag and length included.

    Raises:
        Unsupported: a value of an unexpected Python type.
    """
    body = _info_tlv(header.correlation_info)
    if header.time_stamp is not None:
        body += tlv(b"\x81", generalized_time(header.time_stamp))
    if header.packet_direction is not None:
        body += _DIRECTION_TLV[header.packet_direction]
    if header.sequence_number is not None:
        body += tlv(b"\x83", integer(header.sequence_number))
    return tlv(b"\xa0", body)


def cc_contents(apdu: CCApdu) -> bytes:
    """The contents octets of an ``IAS-CC-APDU`` (what follows its tag and length).

    Args:
        apdu: the CC record.

    Returns:
        The optional header TLV and the payload TLV.

    Raises:
        Unsupported: a value of an unexpected Python type.
    """
    payload = apdu.payload
    if payload.__class__ is not bytes and not isinstance(payload, bytes | bytearray):
        raise Unsupported
    n = len(payload)
    if apdu.header is None:
        return b"\x81" + length(n) + payload
    return header_tlv(apdu.header) + b"\x81" + length(n) + payload


# Decoding --------------------------------------------------------------------


def _content_identifier(data: bytes, pos: int, end: int) -> ContentIdentifier:
    """The one alternative inside an explicit ``ContentIdentifier`` tag."""
    if pos >= end:
        raise PDUError("contentIdentifier: empty", pos)
    if data[pos] == 0x80:
        start, stop = expect(data, pos, end, 0x80, "correlationID")
        value = ContentIdentifier("correlationID", data[start:stop])
    elif data[pos] == 0xA1:
        start, stop = expect(data, pos, end, 0xA1, "callID")
        main_start, at = expect(data, start, stop, 0x80, "callID.main")
        main = data[main_start:at].decode("utf-8")
        leg = None
        if at < stop and data[at] == 0x81:
            leg_start, at = expect(data, at, stop, 0x81, "callID.leg")
            leg = data[leg_start:at].decode("utf-8")
        if at != stop:
            raise PDUError("callID: unexpected field", at)
        value = ContentIdentifier("callID", CallID(main, leg))
    else:
        raise PDUError(f"contentIdentifier: unknown alternative 0x{data[pos]:02x}", pos)
    if stop != end:
        raise PDUError("contentIdentifier: more than one value in an explicit tag", stop)
    return value


def _correlation_info(data: bytes, pos: int, end: int) -> CorrelationInfo:
    case_id = iap_id = None
    if pos < end and data[pos] == 0x80:
        start, pos = expect(data, pos, end, 0x80, "caseId")
        case_id = data[start:pos].decode("ascii")
    if pos < end and data[pos] == 0x81:
        start, pos = expect(data, pos, end, 0x81, "iapId")
        iap_id = data[start:pos].decode("ascii")
    start, stop = expect(data, pos, end, 0xA2, "contentIdentifier")
    if stop != end:
        raise PDUError("correlationInfo: unexpected field", stop)
    return CorrelationInfo(_content_identifier(data, start, stop), case_id, iap_id)


def _header(data: bytes, pos: int, end: int) -> CCDeliveryHeader:
    # Fields are read inline when they have the expected tag and a short-form
    # length that fits, as in fast_envelope.read_envelope; else by expect().
    if end - pos > 1 and data[pos] == 0xA0 and (n := data[pos + 1]) < 0x80 and pos + 2 + n <= end:
        start = pos + 2
        stop = start + n
    else:
        start, stop = expect(data, pos, end, 0xA0, "correlationInfo")
    raw = data[start:stop]
    info = _INFO_RECORDS.get(raw)
    if info is None:
        try:
            info = _correlation_info(data, start, stop)
        except PDUError as exc:
            raise PDUError(exc.message, start if exc.offset is None else exc.offset) from None
        except (UnicodeError, ValueError) as exc:
            raise PDUError(
                f"correlationInfo: invalid text: {exc.__class__.__name__}", start
            ) from None
        if len(_INFO_RECORDS) >= CACHE_LIMIT:
            _INFO_RECORDS.clear()
        _INFO_RECORDS[raw] = info
    pos = stop
    time_stamp = direction = sequence = None
    if pos < end and data[pos] == 0x81:
        if end - pos > 1 and (n := data[pos + 1]) < 0x80 and pos + 2 + n <= end:
            start = pos + 2
            pos = start + n
        else:
            start, pos = expect(data, pos, end, 0x81, "timeStamp")
        time_stamp = read_time(data, start, pos, "timeStamp")
    if pos < end and data[pos] == 0x82:
        if end - pos > 2 and data[pos + 1] == 1:
            start = pos + 2
            pos += 3
            direction = _DIRECTION_OF.get(data[start])
        else:
            start, pos = expect(data, pos, end, 0x82, "packetDirection")
            direction = _DIRECTION_OF.get(read_integer(data, start, pos, "packetDirection"))
        if direction is None:
            raise PDUError("packetDirection: unknown value", start)
    if pos < end and data[pos] == 0x83:
        if end - pos > 1 and (n := data[pos + 1]) < 0x80 and pos + 2 + n <= end:
            start = pos + 2
            pos = start + n
        else:
            start, pos = expect(data, pos, end, 0x83, "sequenceNumber")
        sequence = read_integer(data, start, pos, "sequenceNumber")
    if pos != end:
        raise PDUError("ccDeliveryHeader: unexpected field", pos)
    # read_time gives aware UTC: all CCDeliveryHeader.__post_init__ would check.
    # Built without __post_init__ (see fast.decode_envelope): every field is
    # already checked.
    header = _NEW(CCDeliveryHeader)
    fields = header.__dict__
    fields["correlation_info"] = info
    fields["time_stamp"] = time_stamp
    fields["packet_direction"] = direction
    fields["sequence_number"] = sequence
    return header


def read_cc(data: bytes, pos: int, end: int) -> CCApdu:
    """The ``IAS-CC-APDU`` whose contents are ``data[pos:end]``.

    Args:
        data: the whole PDU.
        pos: where the APDU's contents start.
        end: where they end.

    Returns:
        The record.

    Raises:
        PDUError: anything not strict DER of the type, with its offset.
    """
    header = None
    if pos < end and data[pos] == 0xA0:
        if end - pos > 1 and (n := data[pos + 1]) < 0x80 and pos + 2 + n <= end:
            start = pos + 2
            pos = start + n
        else:
            start, pos = expect(data, pos, end, 0xA0, "ccDeliveryHeader")
        header = _header(data, start, pos)
    start, stop = expect(data, pos, end, 0x81, "payload")
    if stop != end:
        raise PDUError("IAS-CC-APDU: unexpected data after the payload", stop)
    # The payload is bytes and the header checked: all CCApdu.__post_init__ would do.
    apdu = _NEW(CCApdu)
    fields = apdu.__dict__
    fields["payload"] = data[start:stop]
    fields["header"] = header
    return apdu


_NEW = object.__new__
