"""envelope_bytes: one log record as the octets of its envelope."""

from __future__ import annotations

import datetime as dt
import enum
from typing import NamedTuple

import pytest
from test_protocol_fixtures import CMCC, CMII, T_US, T, cc_der, notice_der

from mediation import pdu as P
from mediation.protocol import ContentKind, ProtocolError, StoredRecord, envelope_bytes
from mediation.protocol.envelope import content_kind, decode_message, record_envelope


def test_cc_record_becomes_the_envelope_the_reference_codec_makes() -> None:
    data = envelope_bytes(
        CMCC, 5, T_US, ContentKind.CMCC, P.ClockStatus.SYNCHRONISED, cc_der(), True
    )
    expected = P.Envelope(CMCC, 5, T, P.decode(cc_der()), P.ClockStatus.SYNCHRONISED, True)
    assert data == P.encode(expected)


def test_notice_and_microsecond_time_and_no_clock() -> None:
    data = envelope_bytes(CMII, 2**64 - 1, T_US + 1, "notice", None, notice_der(), False)
    envelope = P.decode(data)
    assert isinstance(envelope.content, P.CompletenessNotice)
    assert envelope.mediation_time == T + dt.timedelta(microseconds=1)
    assert envelope.clock_status is None and not envelope.redelivered


class LogKind(enum.IntEnum):
    """Shaped like the evidence log's one-byte content kind."""

    CMII = 0
    CMCC = 1
    NOTICE = 2


class LogRecordTuple(NamedTuple):
    """Shaped like the evidence log's record."""

    seq: int
    received_us: int
    kind: LogKind
    clock: P.ClockStatus
    payload: bytes


def test_the_logs_own_records_and_kinds_are_taken_as_they_are() -> None:
    from_log = LogRecordTuple(3, T_US, LogKind.NOTICE, P.ClockStatus.UNKNOWN, notice_der())
    assert record_envelope(CMII, from_log, False) == envelope_bytes(
        CMII, 3, T_US, "notice", P.ClockStatus.UNKNOWN, notice_der(), False
    )
    assert content_kind(LogKind.CMCC) is ContentKind.CMCC
    with pytest.raises(ValueError):
        content_kind(7)


def test_record_adapter() -> None:
    stored = StoredRecord(3, T_US, ContentKind.CMCC, P.ClockStatus.UNKNOWN, cc_der())
    assert record_envelope(CMCC, stored, False) == envelope_bytes(
        CMCC, 3, T_US, ContentKind.CMCC, P.ClockStatus.UNKNOWN, cc_der(), False
    )


@pytest.mark.parametrize(
    ("kind", "der", "problem"),
    [
        (ContentKind.CMII, cc_der(), "not cmII"),
        (ContentKind.CMCC, b"\x30\x00", "record 1 of"),
        (ContentKind.NOTICE, cc_der(), "record 1 of"),
        ("cmXX", cc_der(), "record 1 of"),
    ],
)
def test_a_broken_record_is_a_value_error_not_a_protocol_error(kind, der, problem) -> None:
    with pytest.raises(ValueError, match=problem):
        envelope_bytes(CMCC, 1, T_US, kind, None, der, False)


def test_decode_message_turns_pdu_errors_into_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match="malformed delivery message"):
        decode_message(b"\x30\x00")
    with pytest.raises(ProtocolError, match="malformed delivery message"):
        decode_message(b"")
    with pytest.raises(ProtocolError, match="malformed delivery message"):
        decode_message(b"\xa0\x05\x00")
    assert decode_message(P.encode(P.Keepalive(1, T))) == P.Keepalive(1, T)
