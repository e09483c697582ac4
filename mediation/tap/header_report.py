"""data-Header-Report encodings per flow, with only the time spliced in.

The reference codec (:func:`mediation.pdu.encode`, asn1tools) takes about
80 microseconds for a header report; the tap sends one for every target
packet. Within one flow and direction, successive reports differ only in
their ``timestamp [2]``. So the first report of a flow is encoded by the
reference codec, cut around its timestamp, and later ones are that
template with a new GeneralizedTime and recomputed length octets: a few
microseconds, and byte-identical to the reference (tests/test_tap_builder.py
checks every report against it).

Layout relied on (``IasProtocol``, IMPLICIT TAGS, DER)::

    30 L  06 .. (module OID)  aa L  80 caseId  81 iAPSystemId  82 timestamp  a3 ..  a4 ..
"""

from __future__ import annotations

import datetime as dt

from mediation.pdu import HeaderReport, encode
from mediation.pdu.fast_der import generalized_time, length
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

    __slots__ = ("_head", "_oid", "_tail")

    def __init__(self, report: HeaderReport) -> None:
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
        self._oid = der[body:oid_end]
        self._head = der[msg_at:time_start]
        self._tail = der[time_at + time_len : msg_at + msg_len]

    def render(self, when: dt.datetime) -> bytes:
        """The report's DER with ``timestamp`` set to ``when`` (aware UTC)."""
        gt = generalized_time(when)
        inner = self._head + b"\x82" + length(len(gt)) + gt + self._tail
        body = self._oid + b"\xaa" + length(len(inner)) + inner
        return b"\x30" + length(len(body)) + body
