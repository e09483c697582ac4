"""mediation.pdu.fast_signaling against the reference codec: the first signalling message's text.

On every encoding, valid or broken, ``first_message`` answers what the
reference decode answers (the text, or None when it refuses, or for
another message); the tap's own layout is read without the reference.
"""

from __future__ import annotations

import dataclasses

import strategies as S
import test_tap_frames as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutation_support import altered

from mediation import pdu as P
from mediation.pdu import codec, fast_signaling
from mediation.tap.replay import Tap

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TEXT = "link-layer frame"
# The tap's layout: no accessSessionID, one message (often link-layer text).
TEXTS = st.one_of(S.utf8(), st.just("link-layer frame src=02:00:5e:00:53:01 ethertype=0x88cc"))
TAP_REPORTS = st.builds(
    P.AccessSignalingMessageReport,
    case_id=S.visible(1, 25),
    iap_system_id=S.visible(1, 20),
    timestamp=S.times,
    signaling_msg=st.builds(
        lambda kind, text: (P.InterceptedSignalingMessage(kind, text),),
        st.sampled_from(P.SignalingMessageType),
        TEXTS,
    ),
)
REPORTS = st.one_of(
    TAP_REPORTS, S.CMII_STRATEGIES[P.AccessSignalingMessageReport], S.cmii_messages()
)


def _reference(der: bytes) -> str | None:
    try:
        report = codec.decode(der)
    except P.PDUError:
        return None
    if not isinstance(report, P.AccessSignalingMessageReport) or not report.signaling_msg:
        return None
    return report.signaling_msg[0].message


def _same(der: bytes) -> None:
    assert fast_signaling.first_message(der) == _reference(der)


@PROPERTY
@given(TAP_REPORTS)
def test_the_tap_s_layout_is_read_directly_as_the_reference_reads_it(
    report: P.AccessSignalingMessageReport,
) -> None:
    der = codec.encode(report)
    assert fast_signaling._read(der) == report.signaling_msg[0].message  # no reference needed
    _same(der)


@PROPERTY
@given(REPORTS)
def test_every_cmii_message_answers_as_the_reference(message: P.CmIIMessage) -> None:
    _same(codec.encode(message))


@FUZZ
@given(REPORTS, st.data())
def test_altered_encodings_answer_as_the_reference(
    message: P.CmIIMessage, data: st.DataObject
) -> None:
    """One octet changed, cut short, one more, spliced: never an answer the reference lacks."""
    der = codec.encode(message)
    for variant in altered(der, data):
        _same(variant)


def test_what_the_reference_refuses_in_the_tap_s_layout_is_refused() -> None:
    """A bad caseId, IAP id, time, type or text: None, as from the reference."""
    good = P.AccessSignalingMessageReport(
        case_id="CASE-TEST-0001",
        iap_system_id="IAP-TEST",
        timestamp=F.T0,
        signaling_msg=(P.InterceptedSignalingMessage(P.SignalingMessageType.OTHER, TEXT),),
    )
    der = codec.encode(good)
    assert fast_signaling.first_message(der) == TEXT
    bad = [
        der.replace(b"CASE-TEST-0001", b"CASE-TEST-000\x7f"),  # not visible
        der.replace(b"IAP-TEST", b"IAP-TES\x00"),
        der.replace(b"Z\xa4", b"X\xa4"),  # not a GeneralizedTime
        der.replace(b"\x80\x01\x04", b"\x80\x01\x05"),  # no such messageType
        der.replace(b"frame", b"fram\xff"),  # not UTF-8
    ]
    for variant in bad:
        assert variant != der and _reference(variant) is None
        assert fast_signaling.first_message(variant) is None


def test_a_long_report_from_the_tap_s_core_is_read_directly() -> None:
    """A full-content link-layer report (its frame's octets in the text: a long-form length)."""
    tap = Tap.for_warrant(F.warrant(F.TARGET_MAC, case_id="CASE-TEST-0001"))
    frame = F.eth("01:80:c2:00:00:0e", F.TARGET_MAC, 0x88CC, bytes(1400))
    [pdu] = tap.process(frame, F.T0)
    assert len(pdu.der) > 2000
    text = fast_signaling._read(pdu.der)
    assert text is not None and text.startswith("link-layer frame ")
    assert text == _reference(pdu.der)
    assert dataclasses.is_dataclass(codec.decode(pdu.der))


@FUZZ
@given(st.binary(max_size=60), st.integers(0, 80))
def test_any_octets_after_the_module_oid_answer_as_the_reference(tail: bytes, size: int) -> None:
    """Lengths that run short or long of the data included: never an error, never a new answer."""
    oid = bytes.fromhex("060b2a864886f8490201010000")
    _same(b"\x30" + bytes((size,)) + oid + tail)
    _same(b"\x30" + bytes((len(oid) + len(tail),)) + oid + tail)
