"""data-Header-Report and CC encodings per flow, with only what changes spliced in.

The reference codec (:func:`mediation.pdu.encode`, asn1tools) takes about
80 microseconds for a header report; the tap sends one for every target
packet. Within one flow and direction, successive reports differ only in
their ``timestamp [2]``. So a flow's template is cut around its timestamp,
and each report is that template with a new GeneralizedTime and
recomputed length octets: a few microseconds, and byte-identical to the
reference (tests/test_tap_builder.py checks every report against it).

The template itself is written here by hand for the reports the tap
builds (a correlation ID, an integer, text or octets stream ID, addresses
with their allocation), so a tap never compiles the IAS schema for its
header reports: asn1tools' compile is ~0.2 s of CPU, which a tap paid at
its first matched packet, while the packets captured meanwhile waited
(docs/tap.md, "Start-up"). Any other shape goes to the reference codec
(tests/test_tap_header_report.py proves the two identical).

Layout relied on (``IasProtocol``, IMPLICIT TAGS, DER)::

    30 L  06 .. (module OID)  aa L  80 caseId  81 iAPSystemId  82 timestamp  a3 ..  a4 ..
"""

from __future__ import annotations

import datetime as dt

from mediation.pdu import (
    CCApdu,
    CCDeliveryHeader,
    CorrelationInfo,
    HeaderReport,
    IPAddress,
    Value,
    encode,
)
from mediation.pdu.cmcc import PacketDirection
from mediation.pdu.fast_der import generalized_time, integer, length
from mediation.pdu.fast_envelope import CMCC, CMII
from mediation.pdu.schema import CMII_OID
from mediation.pdu.taplink import encode_pdu, pdu_head
from mediation.pdu.tlv import read_header

_SEQUENCE, _OID, _HEADER_REPORT = 0x30, 0x06, 0xAA
_CASE_ID, _IAP, _TIMESTAMP = 0x80, 0x81, 0x82


class HeaderReportTemplate:
    """A header report's DER with a hole where its timestamp goes.

    Args:
        report: a complete report; its timestamp is only a placeholder.

    Raises:
        PDUError: the report does not encode.
        ValueError: the encoding does not have the layout above (a change
            of the CmII module would show up here, in tests, first).
    """

    __slots__ = ("_head", "_oid", "_prefixes", "_record", "_tail")

    def __init__(self, report: HeaderReport) -> None:
        parts = _by_hand(report)
        if parts is None:
            parts = _from_reference(report)
        self._oid, self._head, self._tail = parts
        # Everything before the time's octets depends only on their number
        # (15 to 22): built once per length, each report is then two joins.
        self._prefixes: dict[int, bytes] = {}
        # The last time's tap-link record: a flow's frames of one replay step or
        # capture block share one time object, so the same record (held: the
        # object's id cannot be reused while it is).
        self._record: tuple[object, bytes] = (None, b"")

    def record(self, when: dt.datetime) -> bytes:
        """The report as a tap-link ``TapPdu`` record (``encode_pdu(CMII, when, ...)``).

        Byte-identical to encoding :meth:`render`'s DER (tests/test_tap_records_same.py).
        """
        last = self._record
        if when is last[0]:
            return last[1]
        record = encode_pdu(CMII, when, self.render(when))
        self._record = (when, record)
        return record

    def render(self, when: dt.datetime, gt: bytes | None = None) -> bytes:
        """The report's DER with ``timestamp`` set to ``when`` (aware UTC).

        ``gt`` is ``generalized_time(when)`` if the caller has it already.
        """
        if gt is None:
            gt = generalized_time(when)
        prefix = self._prefixes.get(len(gt))
        if prefix is None:
            prefix = self._prefixes[len(gt)] = self._prefix(len(gt))
        return prefix + gt + self._tail

    def _prefix(self, size: int) -> bytes:
        """The octets before a time of ``size`` octets: the headers, caseId, iAPSystemId."""
        inner = len(self._head) + 1 + len(length(size)) + size + len(self._tail)
        body = self._oid + b"\xaa" + length(inner)
        return b"\x30" + length(len(body) + inner) + body + self._head + b"\x82" + length(size)


def _from_reference(report: HeaderReport) -> tuple[bytes, bytes, bytes]:
    """(OID TLV, fields before the timestamp, fields after it), cut from the reference.

    Raises:
        PDUError: the report does not encode.
        ValueError: the encoding does not have the layout in the module docstring.
    """
    der = encode(report)
    tag, body, _body_len = read_header(der, 0)
    tag_oid, oid_at, oid_len = read_header(der, body)
    oid_end = oid_at + oid_len
    tag_msg, msg_at, msg_len = read_header(der, oid_end)
    tag_case, case_at, case_len = read_header(der, msg_at)
    tag_iap, iap_at, iap_len = read_header(der, case_at + case_len)
    time_start = iap_at + iap_len
    tag_time, time_at, time_len = read_header(der, time_start)
    found = (tag, tag_oid, tag_msg, tag_case, tag_iap, tag_time)
    if found != (_SEQUENCE, _OID, _HEADER_REPORT, _CASE_ID, _IAP, _TIMESTAMP):
        raise ValueError(f"unexpected data-Header-Report layout: tags {found}")
    return der[body:oid_end], der[msg_at:time_start], der[time_at + time_len : msg_at + msg_len]


def _tlv(tag: int, contents: bytes) -> bytes:
    return bytes((tag,)) + length(len(contents)) + contents


def _oid_der(dotted: str) -> bytes:
    """An OBJECT IDENTIFIER's TLV (base-128 arcs, the first two as 40 * a + b)."""
    arcs = [int(arc) for arc in dotted.split(".")]
    out = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        septets = [arc & 0x7F]
        arc >>= 7
        while arc:
            septets.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(septets))
    return _tlv(_OID, bytes(out))


_CMII_OID_DER = _oid_der(CMII_OID)
# IPAddress.allocationMethod: [1] CHOICE { static [0], dynamic [1], unknown [2], notApplicable [3] }
_ALLOCATION = {"static": 0x80, "dynamic": 0x81, "unknown": 0x82, "notApplicable": 0x83}
# Value alternatives written here ([1] UTF8String, [2] INTEGER, [3] OCTET STRING): no
# constraint of their own to check; VisibleString and NumericString go to the reference.


def _value(value: Value) -> bytes | None:
    """A Value CHOICE's inner TLV, or None to leave it to the reference."""
    kind, data = value.alternative, value.value
    if kind == "integer" and type(data) is int:
        return _tlv(0x82, integer(data))
    if kind == "stringUTF8" and type(data) is str:
        return _tlv(0x81, data.encode("utf-8"))
    if kind == "octets" and type(data) is bytes:
        return _tlv(0x83, data)
    return None


def _address(address: IPAddress) -> bytes | None:
    """An IPAddress SEQUENCE's contents, or None to leave it to the reference."""
    if address.ipv6_flow_label is not None or address.prefix_len is not None:
        return None
    ip = address.address
    choice = _tlv(0x81 if ip.version == 4 else 0x82, ip.packed)
    allocation = _ALLOCATION[address.allocation.value]
    return _tlv(0xA0, choice) + _tlv(0xA1, bytes((allocation, 0)))


def _by_hand(report: HeaderReport) -> tuple[bytes, bytes, bytes] | None:
    """The template's parts written directly, or None for a shape not written here.

    Byte-identical to :func:`_from_reference` (tests/test_tap_header_report.py).
    """
    cid, headers = report.content_identifier, report.header_set
    if cid.alternative != "correlationID" or type(cid.value) is not bytes:
        return None
    stream = _value(headers.stream_id)
    source, destination = _address(headers.source_ip), _address(headers.destination_ip)
    if stream is None or source is None or destination is None:
        return None
    fields = _tlv(0xA0, stream) + _tlv(0xA1, source) + _tlv(0xA2, destination)
    for tag, port in ((0x83, headers.source_port), (0x84, headers.destination_port)):
        if port is not None:
            if type(port) is not str:
                return None
            fields += _tlv(tag, port.encode("utf-8"))
    head = _tlv(_CASE_ID, report.case_id.encode("ascii"))
    head += _tlv(_IAP, report.iap_system_id.encode("ascii"))
    tail = _tlv(0xA3, _tlv(0x80, cid.value)) + _tlv(0xA4, fields)
    return _CMII_OID_DER, head, tail


class CCTemplate:
    """A flow's ``IAS-CC-APDU`` for one direction, with holes for time, sequence and payload.

    Within a flow and direction, CC APDUs differ only in ``timeStamp [1]``,
    ``sequenceNumber [3]`` and the payload. The correlation info and the
    direction are cut once from the reference encoding; each packet then
    costs a few concatenations instead of two records, their checks and the
    generic encoder. Byte-identical to :func:`~mediation.pdu.fast.encode_cc`
    (tests/test_tap_builder.py checks it for any time and sequence number).

    Layout relied on (DER)::

        30 L  a0 L [ a0 .. correlationInfo  81 timeStamp  (82 direction)  83 seq ]  81 payload

    Args:
        info: the flow's correlation info.
        direction: the packets' direction, or ``None`` (left out).

    Raises:
        ValueError: the encoding does not have the layout above.
    """

    __slots__ = ("_direction", "_fixed", "_info", "_sizes")

    def __init__(self, info: CorrelationInfo, direction: PacketDirection | None) -> None:
        from mediation.pdu.fast import encode_cc  # once a flow: the fast codecs' module

        epoch = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
        der = encode_cc(CCApdu(b"", CCDeliveryHeader(info, epoch, direction, 1)))
        _tag, body, _n = read_header(der, 0)
        tag_header, at, header_len = read_header(der, body)
        tag_info, info_at, info_len = read_header(der, at)
        time_start = info_at + info_len
        tag_time, time_at, time_len = read_header(der, time_start)
        seq_start = time_at + time_len
        if direction is not None:
            _t, dir_at, dir_len = read_header(der, seq_start)
            seq_start = dir_at + dir_len
        found = (_tag, tag_header, tag_info, tag_time, der[seq_start])
        if found != (0x30, 0xA0, 0xA0, 0x81, 0x83) or at + header_len != len(der) - 2:
            raise ValueError(f"unexpected IAS-CC-APDU layout: tags {found}")
        info, direction = der[at:time_start], der[time_at + time_len : seq_start]
        self._info = info + b"\x81"  # the time's tag follows the correlation info
        self._direction = direction + b"\x83"  # the sequence number's tag follows it
        self._fixed = len(self._info) + len(self._direction)
        # The last record's octets around its time, sequence number and payload,
        # by their sizes (a flow's packets are mostly of one size): (sizes, parts).
        self._sizes: tuple[tuple[int, int, int], tuple[bytes, ...]] = ((0, 0, -1), ())

    def record(self, when: dt.datetime, sequence: int, payload: bytes) -> bytes:
        """The APDU for a packet as a tap-link ``TapPdu`` record, in one join.

        Byte-identical to ``encode_pdu(CMCC, when, self.render(generalized_time(when),
        sequence, payload))`` (tests/test_tap_records_same.py), without the DER's copy.
        """
        gt, number = generalized_time(when), integer(sequence)
        sizes = (len(gt), len(number), len(payload))
        last = self._sizes
        if sizes != last[0]:
            last = self._sizes = (sizes, self._record_parts(*sizes))
        before_head, before_time, before_number, before_payload = last[1]
        return b"".join((
            before_head, pdu_head(CMCC, when), before_time, gt,
            before_number, number, before_payload, payload,
        ))  # fmt: skip

    def _record_parts(self, time: int, number: int, payload: int) -> tuple[bytes, ...]:
        """A record's octets before the TapPdu's head, the time, the sequence number and
        the payload, for those sizes (the head's own size depends on the time's alone)."""
        head = 3 + 1 + len(length(time)) + time + 1  # kind, time, the pdu's tag: pdu_head
        time_size, number_size = length(time), length(number)
        header = self._fixed + len(time_size) + time + len(number_size) + number
        header_size, payload_size = length(header), length(payload)
        contents = 2 + len(header_size) + header + len(payload_size) + payload
        apdu_size = length(contents)
        der = 1 + len(apdu_size) + contents
        der_size = length(der)
        return (
            b"\x30" + length(head + len(der_size) + der),
            der_size + b"\x30" + apdu_size + b"\xa0" + header_size + self._info + time_size,
            self._direction + number_size,
            b"\x81" + payload_size,
        )

    def render(self, gt: bytes, sequence: int, payload: bytes) -> bytes:
        """The APDU's DER for a packet: ``gt`` is ``generalized_time`` of its time."""
        number = integer(sequence)
        time_size, number_size = length(len(gt)), length(len(number))
        header = self._fixed + len(time_size) + len(gt) + len(number_size) + len(number)
        header_size, payload_size = length(header), length(len(payload))
        contents = 2 + len(header_size) + header + len(payload_size) + len(payload)
        return b"".join((
            b"\x30", length(contents), b"\xa0", header_size,
            self._info, time_size, gt, self._direction, number_size, number,
            b"\x81", payload_size, payload,
        ))  # fmt: skip
