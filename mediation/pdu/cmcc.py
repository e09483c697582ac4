"""CmCC records: ``IAS-CC-APDU``, one intercepted packet."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum

from mediation.pdu.cmii import ContentIdentifier
from mediation.pdu.convert import asn1, check_visible, utc


class PacketDirection(enum.Enum):
    FROM_SUBJECT = "fromSubject"
    TO_SUBJECT = "toSubject"


@dataclasses.dataclass(frozen=True)
class CorrelationInfo:
    content_identifier: ContentIdentifier = asn1("contentIdentifier")
    case_id: str | None = asn1("caseId", None)
    iap_id: str | None = asn1("iapId", None)

    def __post_init__(self) -> None:
        if self.case_id is not None:
            check_visible("caseId", self.case_id, 1, 25)
        if self.iap_id is not None:
            check_visible("iapId", self.iap_id, 1, 15)


@dataclasses.dataclass(frozen=True)
class CCDeliveryHeader:
    correlation_info: CorrelationInfo = asn1("correlationInfo")
    time_stamp: dt.datetime | None = asn1("timeStamp", None)
    packet_direction: PacketDirection | None = asn1("packetDirection", None)
    sequence_number: int | None = asn1("sequenceNumber", None)

    def __post_init__(self) -> None:
        if self.time_stamp is not None:
            object.__setattr__(self, "time_stamp", utc(self.time_stamp, "timeStamp"))


@dataclasses.dataclass(frozen=True)
class CCApdu:
    """``IAS-CC-APDU``: the intercepted packet and its optional header."""

    payload: bytes = asn1("payload")
    header: CCDeliveryHeader | None = asn1("ccDeliveryHeader", None)
