"""The hot path (mediation.pdu.fast) against the reference codec.

Encoding is byte-identical for every valid record; decoding gives equal
records; the splice API agrees with encoding whole envelopes; and broken
input of any kind fails with a PDUError carrying an offset, never with
another exception, and never decodes to something the reference would not.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import pytest
import strategies as S
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mediation import pdu as P
from mediation.pdu import codec, fast, fast_cc, fast_envelope
from mediation.pdu.codec import encode_notice

KINDS = ["cmII", "cmCC", "notice"]
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

T = dt.datetime(2026, 11, 23, 0, 11, 0, 500000, tzinfo=dt.UTC)
STREAM = P.StreamId("w-3f9a1c", P.StreamKind.CMCC)
INFO = P.CorrelationInfo(P.ContentIdentifier.correlation(b"\x01\x02"), "CASE-0001", "IAP-1")


@contextlib.contextmanager
def no_fallback() -> Iterator[None]:
    """Fail if the fast encoder hands a value over to the reference codec."""
    with mock.patch.object(fast, "_reference_encode", side_effect=AssertionError("fell back")):
        yield


def reference_content_der(content: object) -> bytes:
    """The reference codec's standalone DER of an envelope's content."""
    if isinstance(content, P.CompletenessNotice):
        return encode_notice(content)
    return P.encode(content)


def cc_envelope(payload: bytes = b"\x45" + bytes(63), **fields: object) -> P.Envelope:
    header = P.CCDeliveryHeader(INFO, T, P.PacketDirection.TO_SUBJECT, 9)
    values = {"mediation_time": T, "clock_status": P.ClockStatus.SYNCHRONISED, **fields}
    return P.Envelope(STREAM, 5, content=P.CCApdu(payload, header), **values)


# Encoding: byte for byte ---------------------------------------------------------


@PROPERTY
@given(S.cc_apdus())
def test_encode_cc_is_byte_identical(apdu: P.CCApdu) -> None:
    with no_fallback():
        assert fast.encode_cc(apdu) == P.encode(apdu)


@pytest.mark.parametrize("kind", KINDS)
def test_encode_envelope_is_byte_identical(kind: str) -> None:
    @PROPERTY
    @given(S.envelopes(kind))
    def check(envelope: P.Envelope) -> None:
        with no_fallback():
            assert fast.encode_envelope(envelope) == P.encode(envelope)

    check()


@pytest.mark.parametrize("kind", KINDS)
def test_encode_envelope_raw_equals_reference(kind: str) -> None:
    @PROPERTY
    @given(S.envelopes(kind))
    def check(envelope: P.Envelope) -> None:
        content_kind, der = fast.encode_content(envelope.content)
        assert content_kind == kind
        assert der == reference_content_der(envelope.content)
        raw = fast.encode_envelope_raw(
            envelope.stream,
            envelope.sequence_number,
            envelope.mediation_time,
            content_kind,
            der,
            envelope.clock_status,
            envelope.redelivered,
        )
        assert raw == P.encode(envelope)

    check()


@PROPERTY
@given(S.records())
def test_encode_any_record_is_byte_identical(record: object) -> None:
    assert fast.encode(record) == P.encode(record)


# Decoding: equal records -----------------------------------------------------------


@PROPERTY
@given(S.cc_apdus())
def test_decode_cc_equals_reference(apdu: P.CCApdu) -> None:
    data = P.encode(apdu)
    decoded = fast.decode_cc(data)
    assert decoded == P.decode(data) == apdu
    # Built without __init__: exactly the fields __init__ would have set.
    assert vars(decoded).keys() == vars(apdu).keys()
    if apdu.header is not None:
        assert vars(decoded.header) == vars(apdu.header)
    assert type(decoded.payload) is bytes
    assert fast.decode_cc(bytearray(data)) == decoded
    assert fast.decode_cc(memoryview(data)) == decoded


@pytest.mark.parametrize("kind", KINDS)
def test_decode_envelope_equals_reference(kind: str) -> None:
    @PROPERTY
    @given(S.envelopes(kind))
    def check(envelope: P.Envelope) -> None:
        encoded = P.encode(envelope)
        decoded = fast.decode_envelope(encoded)
        assert decoded == P.decode(encoded) == envelope
        assert vars(decoded).keys() == vars(envelope).keys()  # built without __init__
        assert type(decoded.content) is type(envelope.content)
        assert fast.decode(encoded) == decoded

    check()


@pytest.mark.parametrize("kind", KINDS)
@PROPERTY
@given(data=st.data())
def test_split_envelope_gives_header_and_standalone_content(kind: str, data: st.DataObject) -> None:
    envelope = data.draw(S.envelopes(kind))
    encoded = P.encode(envelope)
    split = fast.split_envelope(encoded)
    assert split.stream == envelope.stream
    assert split.sequence_number == envelope.sequence_number
    assert split.mediation_time == envelope.mediation_time
    assert split.clock_status == envelope.clock_status
    assert split.redelivered == envelope.redelivered
    assert split.content_kind == kind
    assert split.content_der == reference_content_der(envelope.content)
    assert fast.decode_content(split.content_kind, split.content_der) == envelope.content
    assert fast.encode_envelope_raw(*split) == encoded


@PROPERTY
@given(S.records())
def test_decode_any_pdu_equals_reference(record: object) -> None:
    data = P.encode(record)
    assert fast.decode(data) == P.decode(data)


# Broken input: PDUError with an offset, and nothing the reference would refuse ----------


Mutation = Callable[[bytes], bytes]


def _at(fraction: float, data: bytes) -> int:
    """A position in ``data`` (the encoding's size is not known when drawing)."""
    return min(int(fraction * len(data)), len(data) - 1)


_FRACTIONS = st.floats(0, 1, exclude_max=True)
# Each draws its parameters first, then applies them to whatever encoding it gets.
MUTATIONS: st.SearchStrategy[Mutation] = st.one_of(
    _FRACTIONS.map(lambda f: lambda d: d[: _at(f, d)]),  # truncated
    st.tuples(_FRACTIONS, st.integers(0, 255)).map(  # one octet changed
        lambda m: lambda d: d[: _at(m[0], d)] + bytes((m[1],)) + d[_at(m[0], d) + 1 :]
    ),
    st.tuples(_FRACTIONS, st.binary(min_size=1, max_size=3)).map(  # octets inserted
        lambda m: lambda d: d[: _at(m[0], d)] + m[1] + d[_at(m[0], d) :]
    ),
    st.tuples(_FRACTIONS, st.integers(1, 3)).map(  # octets removed
        lambda m: lambda d: d[: _at(m[0], d)] + d[_at(m[0], d) + m[1] :]
    ),
    st.binary(min_size=1, max_size=4).map(lambda tail: lambda d: d + tail),  # trailing junk
)


def _check_refusal(exc: P.PDUError, data: bytes) -> None:
    assert isinstance(exc.offset, int)
    assert 0 <= exc.offset <= len(data)


@FUZZ
@given(S.envelopes(), MUTATIONS)
def test_broken_envelope_fails_only_with_pdu_error(envelope: P.Envelope, mutate: Mutation) -> None:
    mutated = mutate(P.encode(envelope))
    try:
        decoded = fast.decode_envelope(mutated)
    except P.PDUError as exc:
        _check_refusal(exc, mutated)
    else:
        assert codec.decode_delivery(mutated) == decoded
    try:
        fast.split_envelope(mutated)
    except P.PDUError as exc:
        _check_refusal(exc, mutated)


@FUZZ
@given(S.cc_apdus(), MUTATIONS)
def test_broken_cc_apdu_fails_only_with_pdu_error(apdu: P.CCApdu, mutate: Mutation) -> None:
    mutated = mutate(P.encode(apdu))
    try:
        decoded = fast.decode_cc(mutated)
    except P.PDUError as exc:
        _check_refusal(exc, mutated)
    else:
        assert codec.decode_cc(mutated) == decoded


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_fail_only_with_pdu_error(junk: bytes) -> None:
    for decoder in (fast.decode_envelope, fast.split_envelope, fast.decode_cc, fast.decode):
        with contextlib.suppress(P.PDUError):
            decoder(junk)


# DER details ----------------------------------------------------------------------------


def test_times_written_as_asn1tools_der_writes_them() -> None:
    cases = {
        T.replace(second=0, microsecond=0): b"20261123001100Z",
        T: b"20261123001100.5Z",
        T.replace(microsecond=120000): b"20261123001100.12Z",
        T.replace(second=59, microsecond=1): b"20261123001159.000001Z",
    }
    for time, text in cases.items():
        data = fast.encode_envelope(cc_envelope(mediation_time=time))
        assert b"\x82" + bytes((len(text),)) + text in data
        assert data == P.encode(cc_envelope(mediation_time=time))


def test_years_before_1000_are_refused_before_encoding() -> None:
    # GeneralizedTime has four-digit years; asn1tools would write 999 unpadded,
    # which neither decoder reads back, so the record refuses it up front.
    with pytest.raises(P.PDUError, match="year 999"):
        cc_envelope(mediation_time=dt.datetime(999, 3, 4, 5, 6, tzinfo=dt.UTC))


@pytest.mark.parametrize("size", [0, 127, 128, 255, 256, 65535, 65536])
def test_length_forms_match_reference(size: int) -> None:
    envelope = cc_envelope(payload=bytes(size))
    data = fast.encode_envelope(envelope)
    assert data == P.encode(envelope)
    assert fast.decode_envelope(data) == envelope


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        (b"\x30\x04\x81\x81\x01\x01", 3),  # payload length 1 in one long-form octet
        (b"\x30\x05\x81\x82\x00\x01\x01", 3),  # ... in two
        (b"\x30\x06\x81\x83\x00\x00\x01\x01", 3),  # ... in three (the tlv.read_header path)
        (b"\x30\x81\x03\x81\x01\x01", 1),  # the SEQUENCE's own length
    ],
)
def test_non_minimal_length_is_refused_with_its_offset(data: bytes, offset: int) -> None:
    assert fast.decode_cc(b"\x30\x03\x81\x01\x01") == P.CCApdu(b"\x01")
    with pytest.raises(P.PDUError, match="shortest form") as caught:
        fast.decode_cc(data)
    assert caught.value.offset == offset


def test_indefinite_length_is_refused() -> None:
    with pytest.raises(P.PDUError, match="indefinite") as caught:
        fast.decode_cc(b"\x30\x80\x81\x01\x01\x00\x00")
    assert caught.value.offset == 1


def test_huge_claimed_length_allocates_nothing() -> None:
    with pytest.raises(P.PDUError) as caught:
        fast.decode_envelope(b"\xa0\x84\x7f\xff\xff\xff\xa0")
    assert caught.value.offset == 0


_TIME = b"\x82\x1120261123001100.5Z"  # mediationTime, outside the content


@pytest.mark.parametrize(
    ("before", "after", "inside", "message"),
    [
        (b"\x84\x01\xff", b"\x84\x01\x01", False, "BOOLEAN"),  # DER TRUE is 0xFF
        (_TIME, b"\x82\x0f202611230011.5Z", False, "GeneralizedTime"),  # no seconds
        (_TIME, b"\x82\x1220261123001100.50Z", False, "GeneralizedTime"),  # trailing zero
        (_TIME, b"\x82\x1020261123001100.Z", False, "GeneralizedTime"),  # empty fraction
        (_TIME, b"\x82\x1120261323001100.5Z", False, "no such date"),
        (b"\x83\x01\x09", b"\x83\x02\x00\x09", True, "shortest form"),  # header's [3]
        (b"\x82\x01\x01", b"\x82\x01\x02", True, "packetDirection"),
    ],
)
def test_non_der_values_are_refused(
    before: bytes, after: bytes, inside: bool, message: str
) -> None:
    data = P.encode(cc_envelope(payload=b"\x45", redelivered=True))
    assert data.count(before) >= 1 and data[1] < 0x80
    changed = bytearray(data.replace(before, after, 1))
    grown = len(after) - len(before)
    changed[1] += grown
    if inside:  # [5], cmCC [1] and ccDeliveryHeader [0] grow too
        content = data.index(b"\xa5")
        for at in (content + 1, content + 3, content + 5):
            changed[at] += grown
    with pytest.raises(P.PDUError, match=message):
        fast.decode_envelope(bytes(changed))


def test_later_version_fields_are_skipped_as_the_reference_skips_them() -> None:
    envelope = cc_envelope(payload=b"\x45")
    data = P.encode(envelope)
    assert data[1] < 0x7D  # short form, with room for three more octets
    extra = b"\x86\x01\x07"  # a field [6] added after the marker
    extended = bytes((0xA0, data[1] + len(extra))) + data[2:] + extra
    assert fast.decode_envelope(extended) == codec.decode_delivery(extended) == envelope
    assert fast.split_envelope(extended).content_der == fast.encode_cc(envelope.content)
    repeated = bytes((0xA0, data[1] + 3)) + data[2:] + b"\x81\x01\x07"  # [1] again
    with pytest.raises(P.PDUError, match="repeated"):
        fast.decode_envelope(repeated)


def test_unknown_clock_status_reads_as_absent_like_the_reference() -> None:
    data = P.encode(cc_envelope()).replace(b"\x83\x01\x00", b"\x83\x01\x05", 1)
    assert fast.decode_envelope(data).clock_status is None
    assert fast.decode_envelope(data) == codec.decode_delivery(data)


def test_unknown_content_kind_is_refused() -> None:
    data = P.encode(cc_envelope())
    content = data.index(b"\xa5")
    unknown = data[: content + 2] + b"\xa3" + data[content + 3 :]
    with pytest.raises(P.PDUError, match="unknown to this version") as caught:
        fast.decode_envelope(unknown)
    assert caught.value.offset == content + 2


def test_not_bytes_is_a_pdu_error() -> None:
    with pytest.raises(P.PDUError):
        fast.decode_envelope("a0")  # type: ignore[arg-type]


# The splice API's own checks ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "der", "message"),
    [
        ("cmXX", b"\x30\x03\x81\x01\x01", "content_kind"),
        ("cmCC", b"\x31\x03\x81\x01\x01", "not a DER SEQUENCE"),
        ("cmCC", b"\x30\x03\x81\x01\x01\x00", "bytes after"),
        ("cmCC", b"\x30\x04\x81\x01\x01", "runs past"),
        ("cmII", b"\x30\x03\x81\x01\x01", "does not start like a cmII"),
        ("notice", b"\x30\x03\x81\x01\x01", "does not start like a notice"),
    ],
)
def test_encode_envelope_raw_refuses_bad_content(kind: str, der: bytes, message: str) -> None:
    with pytest.raises(P.PDUError, match=message):
        fast.encode_envelope_raw(STREAM, 1, T, kind, der)


def test_encode_envelope_raw_checks_its_header_fields() -> None:
    der = fast.encode_cc(P.CCApdu(b"\x01"))
    with pytest.raises(P.PDUError, match="sequenceNumber"):
        fast.encode_envelope_raw(STREAM, -1, T, "cmCC", der)
    with pytest.raises(P.PDUError, match="timezone-aware"):
        fast.encode_envelope_raw(STREAM, 1, T.replace(tzinfo=None), "cmCC", der)
    with pytest.raises(P.PDUError, match="clockStatus"):
        fast.encode_envelope_raw(STREAM, 1, T, "cmCC", der, "synchronised")  # type: ignore[arg-type]


# Odd values and caches -----------------------------------------------------------------


def test_unexpected_value_types_get_the_reference_answer() -> None:
    bytearray_payload = P.CCApdu(bytearray(b"\x01\x02"))
    with no_fallback():
        assert fast.encode_cc(bytearray_payload) == P.encode(bytearray_payload)
    with pytest.raises(P.PDUError):
        fast.encode_cc(P.CCApdu("text"))  # type: ignore[arg-type]
    with pytest.raises(P.PDUError):
        fast.encode_envelope(cc_envelope(payload=memoryview(b"\x01")))  # type: ignore[arg-type]


def test_caches_stay_correct_when_full() -> None:
    with (
        mock.patch.object(fast_cc, "CACHE_LIMIT", 2),
        mock.patch.object(fast_envelope, "CACHE_LIMIT", 2),
    ):
        for round_ in range(2):
            for n in range(5):
                info = P.CorrelationInfo(P.ContentIdentifier.correlation(bytes((n,))), "CASE-0001")
                stream = P.StreamId(f"w-{n:04d}", P.StreamKind.CMCC)
                apdu = P.CCApdu(bytes((round_,)), P.CCDeliveryHeader(info))
                envelope = P.Envelope(stream, n, T, apdu)
                data = fast.encode_envelope(envelope)
                assert data == P.encode(envelope)
                assert fast.decode_envelope(data) == envelope
        assert len(fast_envelope._STREAM_BYTES) <= 2
        assert len(fast_cc._INFO_RECORDS) <= 2


def _golden(stem_part: str) -> list[tuple[str, bytes]]:
    """The project's golden PDUs (``fixtures/golden``) whose name contains ``stem_part``."""
    folder = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
    found = []
    for path in sorted(folder.glob(f"*{stem_part}*.hex")):
        lines = path.read_text().splitlines()
        found.append((path.stem, bytes.fromhex("".join(ln for ln in lines if ln[:1] != "#"))))
    return found


@pytest.mark.parametrize(
    ("stem", "data"), _golden("envelope") + _golden("cc-apdu"), ids=lambda v: str(v)[:40]
)
def test_golden_pdus_decode_and_encode_back_byte_for_byte(stem: str, data: bytes) -> None:
    record = fast.decode(data)
    assert record == P.decode(data)
    assert fast.encode(record) == data


def test_a_year_before_1000_is_refused_as_the_reference_refuses_it() -> None:
    """Found by the fuzz test above: one octet turned mediationTime's year into 0001;
    the hand-written decoder took it, the reference refuses it."""
    envelope = P.Envelope(
        stream=P.StreamId("0000000", P.StreamKind.CMII),
        sequence_number=7,
        mediation_time=dt.datetime(2001, 1, 1, tzinfo=dt.UTC),
        content=P.CompletenessNotice(
            event=P.CompletenessEvent.WARRANT_ACTIVE,
            event_time=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
        ),
    )
    data = P.encode(envelope)
    at = data.index(b"2001010100")
    mutated = data[:at] + b"0001" + data[at + 4 :]
    with pytest.raises(P.PDUError, match="year 1 cannot be encoded"):
        codec.decode_delivery(mutated)
    with pytest.raises(P.PDUError, match="mediationTime: year 1 cannot be encoded"):
        fast.decode_envelope(mutated)
