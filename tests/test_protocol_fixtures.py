"""Shared records and helpers for the protocol tests (no tests of its own)."""

from __future__ import annotations

import datetime as dt
import functools

from mediation import pdu as P
from mediation.pdu.codec import encode_notice
from mediation.protocol import ContentKind, StoredRecord

T = dt.datetime(2026, 11, 23, 0, 11, 0, 500000, tzinfo=dt.UTC)
T_US = int((T - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)).total_seconds() * 1_000_000)
CMII = P.StreamId("w-3f9a1c", P.StreamKind.CMII)
CMCC = P.StreamId("w-3f9a1c", P.StreamKind.CMCC)
OTHER = P.StreamId("w-000000", P.StreamKind.CMII)


def utc_now() -> dt.datetime:
    """A wall clock that stands still, so message octets are reproducible."""
    return T


@functools.cache
def cc_der(payload: int = 20) -> bytes:
    info = P.CorrelationInfo(P.ContentIdentifier.correlation(b"\x01"), "CASE-0001", "IAP-1")
    header = P.CCDeliveryHeader(info, T, P.PacketDirection.TO_SUBJECT, 9)
    return P.encode(P.CCApdu(payload=b"\x45" + bytes(payload - 1), header=header))


@functools.cache
def notice_der() -> bytes:
    notice = P.CompletenessNotice(P.CompletenessEvent.TAP_LOST, T, source="tap-1")
    return encode_notice(notice)


def record(
    seq: int,
    kind: ContentKind = ContentKind.CMCC,
    payload: int = 20,
    stream: P.StreamId | None = None,
) -> StoredRecord:
    """A log record of sequence ``seq``: CC content, or a notice for a CmII stream."""
    if stream is not None and stream.kind is P.StreamKind.CMII and kind is ContentKind.CMCC:
        kind = ContentKind.NOTICE
    der = notice_der() if kind is ContentKind.NOTICE else cc_der(payload)
    return StoredRecord(seq, T_US + seq, kind, P.ClockStatus.SYNCHRONISED, der)


def messages(data: bytes) -> list[P.DeliveryMessage]:
    """Decode octets of back-to-back delivery messages."""
    return [msg for _offset, msg in P.decode_all(data)]
