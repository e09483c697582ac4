"""The text of a signalling report's first message, without the reference codec.

The server's gate (mediation/server/tap_gate.py, ``link_frame``) reads the
text of every Access-Signaling-Message-Report a tap sends to a MAC warrant,
to check a link-layer frame's MACs. The reference codec (asn1tools) took
about 100 us a report: a sixth of the tap link's ingress at saturation.

The tap's core writes one layout (mediation/tap/builder.py; IMPLICIT TAGS, DER)::

    30 L  06 09 <the CmII module OID>  A5 L  80 caseId  81 iAPSystemId  82 timestamp
          A4 L  30 L  80 01 messageType  81 L message

(no ``accessSessionID``, one message). On that layout this reader makes
every check the reference makes: strict DER lengths at every depth
(:func:`mediation.pdu.fast_der.expect`), the module OID, ``caseId`` of 1 to
25 and ``iAPSystemId`` of at least 1 visible characters, the time
(:func:`mediation.pdu.fast_der.read_time`), a known ``messageType``, text
that is UTF-8, nothing after any part. Anything else, and any check that
fails, goes to the reference codec, which decides: the answer is always
the reference's (tests/test_pdu_fast_signaling.py proves it).
"""

from __future__ import annotations

from mediation.pdu import codec
from mediation.pdu.cmii import AccessSignalingMessageReport
from mediation.pdu.errors import PDUError
from mediation.pdu.fast_der import expect, read_time
from mediation.pdu.tlv import MAX_PDU_LENGTH

_OID = bytes.fromhex("060b2a864886f8490201010000")  # 1.2.840.113737.2.1.1.0.0
_REPORT, _MESSAGES = 0xA5, 0xA4  # access-Signaling-Message-Report [5], signalingMsg [4]
_VISIBLE = bytes(range(0x20, 0x7F))


def first_message(der: bytes) -> str | None:
    """``signaling_msg[0].message`` of the report ``der`` is, as the reference decodes it.

    Args:
        der: one standalone ``IasProtocol`` PDU.

    Returns:
        The first signalling message's text; None when the reference
        refuses ``der``, or it is another message, or it has no signalling message.
    """
    text = _read(der)
    if text is not None:
        return text
    try:
        report = codec.decode(der)
    except PDUError:
        return None
    if not isinstance(report, AccessSignalingMessageReport) or not report.signaling_msg:
        return None
    return report.signaling_msg[0].message


def _read(der: bytes) -> str | None:
    """The text, when ``der`` has the tap's layout and passes every check; else None."""
    size = len(der)
    if size > MAX_PDU_LENGTH:
        return None
    try:
        start, end = expect(der, 0, size, 0x30, "IasProtocol")
        if end != size or not der.startswith(_OID, start):
            return None
        body, body_end = expect(der, start + len(_OID), end, _REPORT, "report")
        case, case_end = expect(der, body, body_end, 0x80, "caseId")
        iap, iap_end = expect(der, case_end, body_end, 0x81, "iAPSystemId")
        time, time_end = expect(der, iap_end, body_end, 0x82, "timestamp")
        group, group_end = expect(der, time_end, body_end, _MESSAGES, "signalingMsg")
        item, item_end = expect(der, group, group_end, 0x30, "InterceptedSignalingMessage")
        kind, kind_end = expect(der, item, item_end, 0x80, "messageType")
        text, text_end = expect(der, kind_end, item_end, 0x81, "message")
        if body_end != end or group_end != body_end:
            return None
        if item_end != group_end or text_end != item_end:
            return None
        if kind_end - kind != 1 or der[kind] > 4:
            return None
        if not (1 <= case_end - case <= 25 and iap_end > iap):
            return None
        if der[case:case_end].translate(None, _VISIBLE):  # octets left: not visible
            return None
        if der[iap:iap_end].translate(None, _VISIBLE):
            return None
        read_time(der, time, time_end, "timestamp")
        return der[text:text_end].decode("utf-8")
    except (PDUError, UnicodeDecodeError):
        return None
