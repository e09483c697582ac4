"""The receiver's shortcuts in the hot-path readers give what a full read gives.

A time read again is looked up, not parsed (``fast_der.read_time``'s
cache): the value must equal a fresh parse, a refused time must stay
refused however often it comes, and the cache must stay bounded whatever
a peer sends. A header report of a remembered shape is found by its
octets before and after the time stamp (``fast_cmii``'s prefixes and
tails): it must decode as the reference decodes it, and a cut or altered
one must be refused as the reference refuses it. An envelope of the usual
layout is read in one pass (``fast_usual.read_envelope_usual``), and so is
its CC (``read_cc_usual``): each must give the full reader's result or
error, or stand aside.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from unittest import mock

import pytest
import strategies as S
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutation_support import altered

from mediation import pdu as P
from mediation.pdu import codec, fast, fast_cc, fast_cmii, fast_der, fast_envelope, fast_usual
from mediation.pdu.errors import PDUError

PROPERTY = settings(max_examples=200, deadline=None)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.lists(S.utc_times(), min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_a_time_read_again_equals_a_fresh_parse(times: list[dt.datetime], rnd) -> None:
    encoded = [fast_der.generalized_time(t) for t in times]
    order = encoded * 3
    rnd.shuffle(order)
    for contents in order:
        framed = b"\x82" + bytes((len(contents),)) + contents + b"\x00"
        got = fast_der.read_time(framed, 2, 2 + len(contents), "t")
        assert got == fast_der._parse_time(framed, 2, 2 + len(contents), "t")
        assert got.tzinfo is dt.UTC


@pytest.mark.parametrize(
    "contents",
    [b"20261301000000Z", b"20261203234500.10Z", b"20261203234500", b"2026120323450aZ"],
)
def test_a_refused_time_is_refused_every_time(contents: bytes) -> None:
    for _ in range(3):
        with pytest.raises(PDUError, match="t: "):
            fast_der.read_time(contents, 0, len(contents), "t")
    assert contents not in fast_der._TIMES


def test_the_time_cache_is_bounded() -> None:
    start = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    for n in range(fast_der.TIMES_KEPT * 2 + 5):
        contents = fast_der.generalized_time(start + dt.timedelta(microseconds=n))
        assert fast_der.read_time(contents, 0, len(contents), "t") == start + dt.timedelta(
            microseconds=n
        )
        assert len(fast_der._TIMES) <= fast_der.TIMES_KEPT


# CmII: a remembered prefix and tail find the shape without reading it --------


def _cmii_same(data: bytes) -> None:
    """fast_cmii decodes what the reference decodes, or refuses alike."""
    try:
        expected: object = codec.decode_cmii(data)
    except PDUError as exc:
        expected = (exc.message, exc.offset)
    try:
        got: object = fast_cmii.decode_cmii(data)
    except PDUError as exc:
        got = (exc.message, exc.offset)
    assert got == expected
    assert type(got) is type(expected)
    if data[:1] == b"\x30":  # inside an envelope: another tag, octets around it
        try:
            embedded = b"\x01\xa0" + data[1:] + b"\xff"
            inside: object = fast_cmii.decode_cmii_in(embedded, 1, len(data) + 1)
        except PDUError as exc:
            inside = (exc.message, exc.offset)
        assert inside == expected
        assert type(inside) is type(expected)


@PROPERTY
@given(S.cmii_messages(), st.lists(S.times, min_size=1, max_size=4))
def test_a_remembered_prefix_and_tail_decode_as_the_reference(
    message: P.CmIIMessage, times: list[dt.datetime]
) -> None:
    fast_cmii.forget_shapes()
    fast_cmii.decode_cmii(codec.encode(message))  # remembered
    for when in times:
        again = codec.encode(dataclasses.replace(message, timestamp=when))
        shape = fast_cmii._shape(again)
        assert shape is not None
        prefix, tail = again[: shape[1]], again[shape[2] :]
        if (prefix, tail) in fast_cmii._tails:  # same time length: found without _shape
            with mock.patch.object(fast_cmii, "_shape", side_effect=AssertionError("read")):
                _cmii_same(again)
        _cmii_same(again)


@PROPERTY
@given(S.cmii_messages(), st.data())
def test_cut_messages_of_a_remembered_prefix_are_refused_as_the_reference(
    message: P.CmIIMessage, data: st.DataObject
) -> None:
    fast_cmii.forget_shapes()
    der = codec.encode(message)
    fast_cmii.decode_cmii(der)
    for cut in {data.draw(st.integers(1, len(der) - 1)), len(der) - 1, len(der) - 2}:
        _cmii_same(der[:cut])
        _cmii_same(der[:cut] + bytes(len(der) - cut))  # the right length, wrong octets


def test_remembered_prefixes_and_tails_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    fast_cmii.forget_shapes()
    monkeypatch.setattr(fast_cmii, "MAX_SHAPES", 4)
    base = codec.encode(_header_report())
    for n in range(10):
        report = dataclasses.replace(_header_report(), timestamp=T0 + dt.timedelta(seconds=n))
        report = dataclasses.replace(report, case_id=f"CASE-TEST-{n:04d}")
        assert fast_cmii.decode_cmii(codec.encode(report)) == report
        assert len(fast_cmii._tails) <= 4
        assert len(fast_cmii._prefixes) <= fast_cmii.RECENT_PREFIXES
    assert fast_cmii.decode_cmii(base) == _header_report()


T0 = dt.datetime(2026, 12, 3, 23, 45, 0, 123456, tzinfo=dt.UTC)


def _header_report() -> P.HeaderReport:
    headers = P.HeaderSet(
        P.Value.integer(1),
        P.IPAddress(ipaddress.ip_address("192.0.2.10")),
        P.IPAddress(ipaddress.ip_address("198.51.100.20")),
        "5004",
        "40000",
    )
    return P.HeaderReport(
        case_id="CASE-TEST-0001",
        iap_system_id="IAP-TEST",
        timestamp=T0,
        content_identifier=P.ContentIdentifier.correlation(b"\x01\x02"),
        header_set=headers,
    )


# Envelopes: the usual layout read in one pass ----------------------------------


def _usual_agrees(data: bytes) -> bool:
    """read_envelope_usual gives read_envelope's fields or error, or stands aside (None)."""
    try:
        expected: object = fast_envelope.read_envelope(data)
    except PDUError as exc:
        expected = (exc.message, exc.offset)
    try:
        got = fast_usual.read_envelope_usual(data)
    except PDUError as exc:
        got = (exc.message, exc.offset)
    assert got is None or got == expected
    return got is not None


@FUZZ
@given(S.envelopes(), st.data())
def test_the_usual_layout_reads_as_read_envelope(envelope: P.Envelope, data: st.DataObject) -> None:
    der = fast.encode_envelope(envelope)
    assert _usual_agrees(der)  # the stream is cached by the first read: the usual path took it
    for variant in altered(der, data):
        _usual_agrees(variant)
    for cut in {data.draw(st.integers(0, len(der) - 1)), len(der) - 1}:
        _usual_agrees(der[:cut])


@pytest.mark.parametrize("sequence", [0, 1, 127, 128, 255, 256, 2**31, 2**63 - 1, 2**63, 2**64 - 1])
def test_every_sequence_number_size_reads_as_read_envelope(sequence: int) -> None:
    envelope = P.Envelope(STREAM, sequence, T0, _header_report())
    der = fast.encode_envelope(envelope)
    assert _usual_agrees(der)
    assert fast.decode_envelope(der) == P.decode_delivery(der)


STREAM = P.StreamId("w-0000", P.StreamKind.CMII)


def _cc_usual_agrees(data: bytes, start: int, stop: int) -> bool:
    """read_cc_usual gives read_cc's record or error, or stands aside (None)."""
    try:
        expected: object = fast_cc.read_cc(data, start, stop)
    except PDUError as exc:
        expected = (exc.message, exc.offset)
    try:
        got = fast_usual.read_cc_usual(data, start, stop)
    except PDUError as exc:
        got = (exc.message, exc.offset)
    assert got is None or got == expected
    if isinstance(got, P.CCApdu):
        assert type(got.payload) is bytes and got.header.__class__ is P.CCDeliveryHeader
    return got is not None


@FUZZ
@given(S.cc_apdus(), st.data())
def test_the_usual_cc_reads_as_read_cc(apdu: P.CCApdu, data: st.DataObject) -> None:
    der = fast.encode_cc(apdu)
    fast.decode_cc(der)  # the correlation information is cached by the first read
    start = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    took = _cc_usual_agrees(der, start, len(der))
    sequence = apdu.header.sequence_number if apdu.header else None
    usual = apdu.header is not None and (sequence is None or 0 <= sequence < 2**63)
    if usual and der[start + 1] < 0x80:  # a header of under 128 octets: the usual layout
        assert took
    for variant in altered(der, data):
        if len(variant) > start:
            _cc_usual_agrees(variant, start, len(variant))
    for cut in {data.draw(st.integers(start, len(der) - 1)), len(der) - 1}:
        _cc_usual_agrees(der[:cut], start, cut)
