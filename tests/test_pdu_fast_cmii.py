"""CmII decoding on the hot path (mediation.pdu.fast_cmii) against the reference codec.

And the receiver's JSON view of what it decodes (jsonview.SharedPartsView)
against ``to_json``.

A message of a remembered shape with a new time stamp decodes to what the
reference decodes; broken or altered encodings never decode to something
the reference would not, and fail with the reference's PDUError; the cache
of shapes is bounded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import json

import pytest
import strategies as S
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutation_support import altered

from mediation import pdu as P
from mediation.pdu import codec, fast, fast_cmii
from mediation.pdu.jsonview import SharedPartsView, to_json

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T = dt.datetime(2026, 11, 23, 0, 11, 0, 500000, tzinfo=dt.UTC)


def _reference(data: bytes) -> P.CmIIMessage | P.PDUError:
    try:
        return codec.decode_cmii(data)
    except P.PDUError as exc:
        return exc


def _fast(data: bytes) -> P.CmIIMessage | P.PDUError:
    try:
        return fast_cmii.decode_cmii(data)
    except P.PDUError as exc:
        return exc


def _same(data: bytes) -> None:
    """The fast decoder says what the reference says: an equal record, or a refusal."""
    expected, got = _reference(data), _fast(data)
    if isinstance(expected, P.PDUError):
        assert isinstance(got, P.PDUError), f"fast accepted what the reference refuses: {got}"
        assert (got.message, got.offset) == (expected.message, expected.offset)
    else:
        assert got == expected
        assert type(got) is type(expected)


@PROPERTY
@given(S.cmii_messages(), st.lists(S.times, min_size=1, max_size=4))
def test_a_remembered_shape_with_new_times_decodes_as_the_reference(
    message: P.CmIIMessage, times: list[dt.datetime]
) -> None:
    fast_cmii.forget_shapes()
    _same(codec.encode(message))  # remembered
    for when in times:
        again = codec.encode(dataclasses.replace(message, timestamp=when))
        assert fast_cmii._shape(again) is not None
        _same(again)


@FUZZ
@given(S.cmii_messages(), st.data())
def test_altered_encodings_decode_as_the_reference_or_fail_alike(
    message: P.CmIIMessage, data: st.DataObject
) -> None:
    fast_cmii.forget_shapes()
    der = codec.encode(message)
    _same(der)
    for variant in altered(der, data):
        _same(variant)


def test_time_stamps_only_der_allows_are_left_to_the_reference() -> None:
    """A trailing zero in the fraction is not DER: refused exactly as the reference refuses."""
    fast_cmii.forget_shapes()
    report = codec.encode(_report(T))
    fast_cmii.decode_cmii(report)
    text = b"20261123001100.5Z"
    assert text in report
    bad = report.replace(b"\x82\x11" + text, b"\x82\x12" + b"20261123001100.50Z")
    bad = bad[:1] + bytes((bad[1] + 1,)) + bad[2:]  # the outer length grows by one
    bad = _grow_message_length(bad)
    assert fast_cmii._shape(bad) is not None
    assert isinstance(_reference(bad), P.PDUError)
    _same(bad)


def test_the_shape_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    fast_cmii.forget_shapes()
    monkeypatch.setattr(fast_cmii, "MAX_SHAPES", 4)
    for n in range(10):
        report = _report(T, port=str(1000 + n))
        assert fast_cmii.decode_cmii(codec.encode(report)) == report
        assert len(fast_cmii._shapes) <= 4


def test_envelopes_take_cmii_content_through_the_cache() -> None:
    """fast.decode_envelope decodes header reports as the reference does, hit or miss."""
    fast_cmii.forget_shapes()
    stream = P.StreamId("w-3f9a1c", P.StreamKind.CMII)
    for n in range(3):
        envelope = P.Envelope(stream, n, T, _report(T + dt.timedelta(microseconds=n * 7)))
        data = P.encode(envelope)
        assert fast.decode_envelope(data) == P.decode_delivery(data)
    assert len(fast_cmii._shapes) == 1


def _report(when: dt.datetime, port: str = "5004") -> P.HeaderReport:
    headers = P.HeaderSet(
        P.Value.integer(1),
        P.IPAddress(ipaddress.ip_address("192.0.2.10")),
        P.IPAddress(ipaddress.ip_address("198.51.100.20")),
        port,
        "40000",
    )
    return P.HeaderReport(
        case_id="CASE-TEST-0001",
        iap_system_id="IAP-TEST",
        timestamp=when,
        content_identifier=P.ContentIdentifier.correlation(b"\x01\x02"),
        header_set=headers,
    )


def _grow_message_length(data: bytes) -> bytes:
    """Add one to the length of the message TLV after the OID (short-form lengths)."""
    at = 2 + 2 + data[3]  # 30 L 06 L oid..
    return data[: at + 1] + bytes((data[at + 1] + 1,)) + data[at + 2 :]


# The JSON view that shares parts (pdu/jsonview.SharedPartsView) -----------------------


@PROPERTY
@given(st.lists(S.envelopes(), min_size=1, max_size=4))
def test_the_shared_parts_view_equals_to_json(envelopes: list[P.Envelope]) -> None:
    view = SharedPartsView()
    for envelope in envelopes * 2:  # the second round reuses what the first made
        assert json.dumps(view.to_json(envelope)) == json.dumps(to_json(envelope))


def test_the_shared_parts_view_reuses_the_parts_of_decoded_header_reports() -> None:
    fast_cmii.forget_shapes()
    view = SharedPartsView(limit=8)
    stream = P.StreamId("w-3f9a1c", P.StreamKind.CMII)
    for n in range(20):
        envelope = P.Envelope(stream, n, T, _report(T + dt.timedelta(seconds=n)))
        decoded = fast.decode_envelope(P.encode(envelope))
        assert json.dumps(view.to_json(decoded)) == json.dumps(to_json(envelope))
        assert len(view._parts) <= 8
    # one content identifier and one header set, shared by every report of the flow
    assert len(view._parts) == 2
