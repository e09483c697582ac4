"""cmii.jsonl lines made from remembered text equal the ones json.dumps made of the view.

The old way (``CaseOutputs.store`` before lea/jsonline.py) is written out
here as the reference: the envelope's JSON view, ``retrieved`` and
``receivedTime`` added, ``json.dumps`` with compact separators.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import json

import strategies as S
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mediation import pdu as P
from mediation.lea import jsonline
from mediation.lea.jsonline import JsonLines
from mediation.pdu import fast, fast_cmii
from mediation.pdu.jsonview import iso_time, to_json

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
AT = dt.datetime(2026, 11, 23, 0, 11, 0, 500000, tzinfo=dt.UTC)


def _reference(envelope: P.Envelope, retrieved: bool, at: dt.datetime) -> bytes:
    line = to_json(envelope)
    line["retrieved"] = retrieved
    line["receivedTime"] = iso_time(at)
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


def _report(case_id: str) -> P.HeaderReport:
    return P.HeaderReport(
        case_id=case_id,
        iap_system_id="IAP-TEST",
        timestamp=AT,
        content_identifier=P.ContentIdentifier.correlation(b"\x01"),
        header_set=P.HeaderSet(
            P.Value.integer(1),
            P.IPAddress(ipaddress.ip_address("192.0.2.10")),
            P.IPAddress(ipaddress.ip_address("198.51.100.20")),
        ),
    )


@PROPERTY
@given(st.lists(S.envelopes(), min_size=1, max_size=4), st.booleans())
def test_any_envelope_gives_the_line_of_the_view(
    envelopes: list[P.Envelope], retrieved: bool
) -> None:
    lines = JsonLines()
    for envelope in envelopes * 2:  # the second round is made from remembered text
        assert lines.line(envelope, retrieved=retrieved, at=AT) == _reference(
            envelope, retrieved, AT
        )


@PROPERTY
@given(
    S.cmii_messages(),
    st.lists(st.tuples(S.times, S.times, S.times), min_size=1, max_size=5),
    st.booleans(),
)
def test_decoded_header_reports_of_one_shape_give_the_lines_of_the_view(
    message: P.CmIIMessage,
    times: list[tuple[dt.datetime, dt.datetime, dt.datetime]],
    redelivered: bool,
) -> None:
    """As the receiver gets them: decoded by the hot path, sharing all but their time."""
    fast_cmii.forget_shapes()
    lines = JsonLines()
    stream = P.StreamId("w-3f9a1c", P.StreamKind.CMII)
    for n, (stamp, mediated, arrived) in enumerate(times):
        content = dataclasses.replace(message, timestamp=stamp)
        sent = P.Envelope(stream, n, mediated, content, redelivered=redelivered)
        decoded = fast.decode_envelope(P.encode(sent))
        assert lines.line(decoded, retrieved=False, at=arrived) == _reference(sent, False, arrived)


def test_a_text_holding_the_mark_is_serialised_whole(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A peer's string that reads like the stand-in cannot misplace the time stamp."""
    monkeypatch.setattr(jsonline, "_MARK", "CASE-TEST-0001")
    monkeypatch.setattr(jsonline, "_MARK_JSON", json.dumps("CASE-TEST-0001"))
    report = _report("CASE-TEST-0001")
    envelope = P.Envelope(P.StreamId("w-3f9a1c", P.StreamKind.CMII), 7, AT, report)
    lines = JsonLines()
    for _ in range(2):
        assert lines.line(envelope, retrieved=True, at=AT) == _reference(envelope, True, AT)
    assert list(lines._contents.values()) == [None]  # remembered as "serialise it whole"


def test_remembered_shapes_are_bounded() -> None:
    lines = JsonLines(limit=4)
    stream = P.StreamId("w-3f9a1c", P.StreamKind.CMII)
    for n in range(20):
        envelope = P.Envelope(stream, n, AT, _report(f"CASE-TEST-{n:04d}"))
        assert lines.line(envelope, retrieved=False, at=AT) == _reference(envelope, False, AT)
        assert len(lines._contents) <= 4


@PROPERTY
@given(
    st.lists(st.booleans(), min_size=1, max_size=6), st.sampled_from([AT, AT.replace(year=2027)])
)
def test_lines_of_one_wake_up_say_each_whether_retrieved(
    retrieved: list[bool], at: dt.datetime
) -> None:
    """The text after the content is remembered per arrival time: ``retrieved`` too."""
    lines = JsonLines()
    envelope = P.Envelope(
        P.StreamId("w-3f9a1c", P.StreamKind.CMII), 7, AT, _report("CASE-TEST-0001")
    )
    for flag in retrieved:
        assert lines.line(envelope, retrieved=flag, at=at) == _reference(envelope, flag, at)


@settings(max_examples=500, deadline=None)
@given(st.datetimes(min_value=dt.datetime(1000, 1, 1), timezones=st.just(dt.UTC)))
def test_iso_time_is_strftimes_text(value: dt.datetime) -> None:
    """The fast form (two-digit fields from a table) against strftime's."""
    assert iso_time(value) == value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
