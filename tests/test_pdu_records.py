"""Typed records round-trip through the reference (asn1tools) codec."""

from __future__ import annotations

import dataclasses
import datetime as dt
import pickle

import pytest

from mediation import pdu as P

T = dt.datetime(2026, 11, 23, 0, 11, 0, 500000, tzinfo=dt.UTC)
STREAM = P.StreamId("w-3f9a1c", P.StreamKind.CMII)


def header_report() -> P.HeaderReport:
    return P.HeaderReport(
        case_id="CASE-0001",
        iap_system_id="IAP-1",
        timestamp=T,
        content_identifier=P.ContentIdentifier.correlation(b"\x01\x02"),
        header_set=P.HeaderSet(
            stream_id=P.Value.integer(1),
            source_ip=P.IPAddress("192.0.2.10", P.Allocation.DYNAMIC),
            destination_ip=P.IPAddress("2001:db8::1"),
            source_port="5353",
            destination_port="53",
        ),
    )


def cc_apdu() -> P.CCApdu:
    info = P.CorrelationInfo(P.ContentIdentifier.correlation(b"\x01"), "CASE-0001", "IAP-1")
    header = P.CCDeliveryHeader(info, T, P.PacketDirection.TO_SUBJECT, 9)
    return P.CCApdu(payload=b"\x45" + bytes(19), header=header)


RECORDS = [
    header_report(),
    cc_apdu(),
    P.Envelope(P.StreamId("w-3f9a1c", P.StreamKind.CMCC), 5, T, cc_apdu(), redelivered=True),
    P.Envelope(STREAM, 6, T, header_report(), P.ClockStatus.SYNCHRONISED),
    P.Envelope(STREAM, 7, T, P.CompletenessNotice(P.CompletenessEvent.TAP_LOST, T, source="t")),
    P.Keepalive(1, T),
    P.KeepaliveAnswer(1, T),
    P.Acknowledgement(STREAM, 10),
    P.ReplayRequest(3, STREAM, (P.SequenceRange(1, 4),)),
    P.ReplayResult(3, STREAM, 4, (P.SequenceRange(2, 2),), "past retention"),
    P.ReceiverReport(STREAM, T, 8, (P.SequenceRange(2, 3),), 9),
    P.ChainCheckpoint(STREAM, 9, bytes(32), T, b"s" * 64, b"k" * 32),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_round_trip(record: object) -> None:
    data = P.encode(record)
    back = P.decode(data)
    assert back == record
    assert type(back) is type(record)
    assert P.encode(back) == data


def test_header_report_bytes_start_with_cmii_oid() -> None:
    data = P.encode(header_report())
    # SEQUENCE, then OBJECT IDENTIFIER 1.2.840.113737.2.1.1.0.0, then [10] (explicit CHOICE).
    assert data[2:15] == bytes.fromhex("060b2a864886f8490201010000")
    assert data[15] == 0xAA


def test_times_keep_microseconds_and_whole_seconds() -> None:
    at_zero_seconds = T.replace(second=0, microsecond=0)
    data = P.encode(P.Keepalive(1, at_zero_seconds))
    assert b"20261123001100Z" in data  # seconds present even when zero
    assert P.decode(P.encode(P.Keepalive(1, T))).sent_time == T


def test_naive_time_is_refused() -> None:
    with pytest.raises(P.PDUError, match="timezone-aware"):
        P.Keepalive(1, T.replace(tzinfo=None))


def test_case_identity_bounds() -> None:
    with pytest.raises(P.PDUError, match="caseId: must be 1 to 25"):
        P.HeaderReport(**{**header_report().__dict__, "case_id": "X" * 26})


def test_unknown_later_message_is_skipped_not_fatal() -> None:
    msg = P.decode(bytes.fromhex("af0100"))
    assert isinstance(msg, P.UnknownDeliveryMessage)
    assert msg.tag == 15


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        (b"", 0),
        (b"\x30", 1),
        (bytes.fromhex("3084ffffffff"), 0),
        (bytes.fromhex("3003060100"), 5),
    ],
)
def test_bad_input_names_offset(data: bytes, offset: int) -> None:
    with pytest.raises(P.PDUError) as info:
        P.decode(data)
    assert info.value.offset == offset


def test_a_stream_id_hashes_as_its_fields_and_survives_a_pickle() -> None:
    """Its hash is computed once (the hot path's dict key), equal to the generated one's."""
    sid = P.StreamId("w-3f9a1c", P.StreamKind.CMCC)
    assert hash(sid) == hash(("w-3f9a1c", P.StreamKind.CMCC))
    # Rebuilt on unpickling, not copied (a string's hash differs between processes).
    assert b"_hash" not in pickle.dumps(sid)
    again = pickle.loads(pickle.dumps(sid))
    assert again == sid and hash(again) == hash(sid) and {sid: 1}[again] == 1
    assert "_hash" not in repr(sid) and dataclasses.asdict(sid) == {
        "warrant_handle": "w-3f9a1c",
        "kind": P.StreamKind.CMCC,
    }
