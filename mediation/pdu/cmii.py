"""CmII records: the twelve ``IasProtocol`` messages and their parts.

Field names are the ASN.1 names in snake case; each field says which ASN.1
component it is. Times are aware UTC datetimes with microseconds.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import ipaddress
from typing import Any, ClassVar

from mediation.pdu.convert import Choice, asn1, check_visible, from_asn1, utc
from mediation.pdu.errors import PDUError

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address


class Value(Choice):
    """T1.IAS ``Value``: a string, number or octets."""

    ALTERNATIVES: ClassVar[dict[str, Any]] = {
        "stringVS": str,
        "stringUTF8": str,
        "integer": int,
        "octets": bytes,
        "numeric": str,
    }

    @classmethod
    def text(cls, text: str) -> Value:
        """A VisibleString value (ASCII); UTF-8 text uses ``utf8``."""
        return cls("stringVS", text)

    @classmethod
    def utf8(cls, text: str) -> Value:
        return cls("stringUTF8", text)

    @classmethod
    def integer(cls, number: int) -> Value:
        return cls("integer", number)

    @classmethod
    def octets(cls, data: bytes) -> Value:
        return cls("octets", data)

    @classmethod
    def numeric(cls, digits: str) -> Value:
        return cls("numeric", digits)


class Allocation(enum.Enum):
    """How an address was allocated (``IPAddress.allocationMethod``)."""

    STATIC = "static"
    DYNAMIC = "dynamic"
    UNKNOWN = "unknown"
    NOT_APPLICABLE = "notApplicable"


@dataclasses.dataclass(frozen=True)
class IPAddress:
    """T1.IAS ``IPAddress``: a binary IPv4 or IPv6 address and how it was allocated."""

    address: IPv4 | IPv6
    allocation: Allocation = Allocation.UNKNOWN
    ipv6_flow_label: str | None = None
    prefix_len: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.address, str):
            try:
                object.__setattr__(self, "address", ipaddress.ip_address(self.address))
            except ValueError:
                raise PDUError(f"iPAddress: {self.address!r} is not an IP address") from None

    def to_asn1(self) -> dict:
        alt = "ipV4" if self.address.version == 4 else "ipV6"
        out: dict[str, Any] = {
            "address": (alt, self.address.packed),
            "allocationMethod": (self.allocation.value, None),
        }
        if self.ipv6_flow_label is not None:
            out["iPv6FlowLabel"] = self.ipv6_flow_label
        if self.prefix_len is not None:
            out["prefixLen"] = self.prefix_len
        return out

    @classmethod
    def from_asn1(cls, value: dict) -> IPAddress:
        alt, packed = value["address"]
        size = {"ipV4": 4, "ipV6": 16}.get(alt)
        if size is None or len(packed) != size:
            raise PDUError(f"iPAddress: {alt} address of {len(packed)} octets")
        address = IPv4(packed) if size == 4 else IPv6(packed)
        allocation, _null = value["allocationMethod"]
        if allocation is None:
            raise PDUError("iPAddress: unknown allocationMethod")
        return cls(
            address=address,
            allocation=Allocation(allocation),
            ipv6_flow_label=value.get("iPv6FlowLabel"),
            prefix_len=value.get("prefixLen"),
        )


class AccessType(Choice):
    """``AccessMethod.accessType``: NULL alternatives, or ``other`` with text."""

    ALTERNATIVES: ClassVar[dict[str, Any]] = {
        "dialUp": type(None),
        "dsl": type(None),
        "lan": type(None),
        "cable": type(None),
        "wiFi": type(None),
        "wiMax": type(None),
        "other": str,
    }


@dataclasses.dataclass(frozen=True)
class AccessMethod:
    access_type: AccessType | None = asn1("accessType", None)
    access_equipment_id: str | None = asn1("accessEquipmentID", None)
    part_of_multiple_login: bool = False

    def to_asn1(self) -> dict:
        out: dict[str, Any] = {}
        if self.access_type is not None:
            out["accessType"] = (self.access_type.alternative, self.access_type.value)
        if self.access_equipment_id is not None:
            out["accessEquipmentID"] = self.access_equipment_id
        if self.part_of_multiple_login:
            out["partOfMultipleLogin"] = None
        return out

    @classmethod
    def from_asn1(cls, value: dict) -> AccessMethod:
        access_type = None
        if "accessType" in value:
            access_type = from_asn1(AccessType, value["accessType"])
        return cls(
            access_type=access_type,
            access_equipment_id=value.get("accessEquipmentID"),
            part_of_multiple_login="partOfMultipleLogin" in value,
        )


@dataclasses.dataclass(frozen=True)
class Location:
    location_type: str = asn1("locationType")
    location: str = asn1("location")


class SignalProtocol(Choice):
    ALTERNATIVES: ClassVar[dict[str, Any]] = {"radius": type(None), "other": str}


@dataclasses.dataclass(frozen=True)
class ProtocolSignal:
    protocol: SignalProtocol = asn1("protocol")
    signal: tuple[Value, ...] = asn1("signal")


class SignalingMessageType(enum.Enum):
    RADIUS = "radius"
    DIAMETER = "diameter"
    XML = "xml"
    ASNDOT1 = "asndot1"
    OTHER = "other"


@dataclasses.dataclass(frozen=True)
class InterceptedSignalingMessage:
    message_type: SignalingMessageType = asn1("messageType")
    message: str = asn1("message")


@dataclasses.dataclass(frozen=True)
class CallID:
    main: str = asn1("main")
    leg: str | None = asn1("leg", None)


class ContentIdentifier(Choice):
    """Ties CC packets to the CmII that announced their stream."""

    ALTERNATIVES: ClassVar[dict[str, Any]] = {"correlationID": bytes, "callID": CallID}

    @classmethod
    def correlation(cls, data: bytes) -> ContentIdentifier:
        return cls("correlationID", data)


@dataclasses.dataclass(frozen=True)
class HeaderSet:
    stream_id: Value = asn1("streamID")
    source_ip: IPAddress = asn1("sourceIPaddress")
    destination_ip: IPAddress = asn1("destinationIPaddress")
    source_port: str | None = asn1("sourcePortNumber", None)
    destination_port: str | None = asn1("destinationPortNumber", None)


@dataclasses.dataclass(frozen=True)
class StreamSet:
    stream_id: Value = asn1("streamID")
    source_ip: IPAddress = asn1("sourceIPaddress")
    destination_ip: IPAddress = asn1("destinationIPaddress")
    packet_count: int = asn1("packetCount")
    source_port: str | None = asn1("sourcePortNumber", None)
    destination_port: str | None = asn1("destinationPortNumber", None)


@dataclasses.dataclass(frozen=True)
class SepCCCPair:
    xmit: str = asn1("sepXmitCCC")
    recv: str = asn1("sepRecvCCC")


class CCCIdentity(Choice):
    ALTERNATIVES: ClassVar[dict[str, Any]] = {
        "combCCC": str,
        "sepCCCpair": SepCCCPair,
        "indXmitCCC": str,
        "indRecvCCC": str,
        "indCCC": str,
    }


@dataclasses.dataclass(frozen=True)
class CCAddress:
    lea_ip: IPv4 | IPv6 = asn1("leaIPAddress")
    lea_port: str = asn1("leaPortNumber")

    def to_asn1(self) -> dict:
        alt = "ipV4" if self.lea_ip.version == 4 else "ipV6"
        return {"leaIPAddress": (alt, self.lea_ip.packed), "leaPortNumber": self.lea_port}

    @classmethod
    def from_asn1(cls, value: dict) -> CCAddress:
        alt, packed = value["leaIPAddress"]
        size = {"ipV4": 4, "ipV6": 16}.get(alt)
        if size is None or len(packed) != size:
            raise PDUError(f"leaIPAddress: {alt} address of {len(packed)} octets")
        address = IPv4(packed) if size == 4 else IPv6(packed)
        return cls(lea_ip=address, lea_port=value["leaPortNumber"])


class DeliveryIdentifier(Choice):
    ALTERNATIVES: ClassVar[dict[str, Any]] = {"cccId": CCCIdentity, "ccAddress": CCAddress}


class CCDeliveryFormat(Choice):
    ALTERNATIVES: ClassVar[dict[str, Any]] = {
        "scteDatagram": type(None),
        "atis-678-ASN1": str,
        "iasDatagram": type(None),
    }


@dataclasses.dataclass(frozen=True)
class LEACmCDelivery:
    content_identifier: ContentIdentifier = asn1("contentIdentifier")
    delivery_identifier: DeliveryIdentifier = asn1("deliveryIdentifier")
    cc_delivery_format: CCDeliveryFormat = asn1("ccDeliveryFormat")


# The messages ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class CmIIMessage:
    """Fields every CmII message starts with. Subclasses name their alternative."""

    ALTERNATIVE: ClassVar[str] = ""

    case_id: str = asn1("caseId")
    iap_system_id: str = asn1("iAPSystemId")
    timestamp: dt.datetime = asn1("timestamp")

    def __post_init__(self) -> None:
        check_visible("caseId", self.case_id, 1, 25)
        check_visible("iAPSystemId", self.iap_system_id, 1, None)
        object.__setattr__(self, "timestamp", utc(self.timestamp, "timestamp"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class AccessAttempt(CmIIMessage):
    ALTERNATIVE: ClassVar[str] = "access-Attempt"
    subscriber_identity: Value = asn1("subscriberIdentity")
    access_method: AccessMethod | None = asn1("accessMethod", None)
    network_access_node_identity: Value | None = asn1("networkAccessNodeIdentity", None)
    protocol_signal: ProtocolSignal | None = asn1("protocolSignal", None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AccessAccepted(CmIIMessage):
    ALTERNATIVE: ClassVar[str] = "access-Accepted"
    subscriber_identity: Value = asn1("subscriberIdentity")
    access_method: AccessMethod | None = asn1("accessMethod", None)
    network_access_node_identity: Value | None = asn1("networkAccessNodeIdentity", None)
    ip_address: IPAddress | None = asn1("iPAddress", None)
    access_session_id: Value = asn1("accessSessionID")
    access_session_characteristics: Value | None = asn1("accessSessionCharacteristics", None)
    location: Location | None = asn1("location", None)
    protocol_signal: ProtocolSignal | None = asn1("protocolSignal", None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AccessFailed(CmIIMessage):
    ALTERNATIVE: ClassVar[str] = "access-Failed"
    subscriber_identity: Value = asn1("subscriberIdentity")
    ip_address: IPAddress | None = asn1("iPAddress", None)
    reason_for_termination: Value | None = asn1("reasonForTermination", None)
    protocol_signal: ProtocolSignal | None = asn1("protocolSignal", None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AccessRejected(AccessFailed):
    ALTERNATIVE: ClassVar[str] = "access-Rejected"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AccessSessionEnd(CmIIMessage):
    ALTERNATIVE: ClassVar[str] = "access-Session-End"
    subscriber_identity: Value = asn1("subscriberIdentity")
    ip_address: IPAddress | None = asn1("iPAddress", None)
    access_session_id: Value = asn1("accessSessionID")
    reason_for_termination: Value | None = asn1("reasonForTermination", None)
    protocol_signal: ProtocolSignal | None = asn1("protocolSignal", None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AccessSignalingMessageReport(CmIIMessage):
    ALTERNATIVE: ClassVar[str] = "access-Signaling-Message-Report"
    access_session_id: Value | None = asn1("accessSessionID", None)
    signaling_msg: tuple[InterceptedSignalingMessage, ...] = asn1("signalingMsg")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SessionStart(CmIIMessage):
    """Packet-Data-Session-Start: an IP session with an address begins."""

    ALTERNATIVE: ClassVar[str] = "session-Start"
    subscriber_identity: Value = asn1("subscriberIdentity")
    access_session_id: Value | None = asn1("accessSessionID", None)
    packet_data_session_id: Value = asn1("packetDataSessionID")
    ip_address: IPAddress = asn1("iPAddress")
    access_session_characteristics: Value | None = asn1("accessSessionCharacteristics", None)
    location: Location | None = asn1("location", None)
    delivery_information: LEACmCDelivery | None = asn1("deliveryInformation", None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SessionAlreadyEstablished(SessionStart):
    """The session was up when the intercept began (shape of Session-Start)."""

    ALTERNATIVE: ClassVar[str] = "session-Already-Established"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SessionFailed(CmIIMessage):
    ALTERNATIVE: ClassVar[str] = "session-Failed"
    subscriber_identity: Value = asn1("subscriberIdentity")
    access_session_id: Value | None = asn1("accessSessionID", None)
    reason_for_termination: Value | None = asn1("reasonForTermination", None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SessionEnd(CmIIMessage):
    ALTERNATIVE: ClassVar[str] = "session-End"
    subscriber_identity: Value = asn1("subscriberIdentity")
    access_session_id: Value | None = asn1("accessSessionID", None)
    packet_data_session_id: Value = asn1("packetDataSessionID")
    ip_address: IPAddress = asn1("iPAddress")
    reason_for_termination: Value | None = asn1("reasonForTermination", None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeaderReport(CmIIMessage):
    """Packet-Data-Header-Report: one packet's headers (the pen-register case)."""

    ALTERNATIVE: ClassVar[str] = "data-Header-Report"
    content_identifier: ContentIdentifier = asn1("contentIdentifier")
    header_set: HeaderSet = asn1("headerSet")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SummaryReport(CmIIMessage):
    """Packet-Data-Summary-Report: one stream with a packet count."""

    ALTERNATIVE: ClassVar[str] = "data-Summary-Report"
    content_identifier: ContentIdentifier = asn1("contentIdentifier")
    stream_set: StreamSet = asn1("streamSet")


CMII_MESSAGES: tuple[type[CmIIMessage], ...] = (
    AccessAttempt,
    AccessAccepted,
    AccessFailed,
    AccessSessionEnd,
    AccessRejected,
    AccessSignalingMessageReport,
    SessionStart,
    SessionFailed,
    SessionEnd,
    SessionAlreadyEstablished,
    HeaderReport,
    SummaryReport,
)
"""In tag order: ``CMII_MESSAGES[n]`` is the alternative tagged ``[n]``."""

MESSAGE_BY_ALTERNATIVE: dict[str, type[CmIIMessage]] = {m.ALTERNATIVE: m for m in CMII_MESSAGES}


def cmii_to_asn1(message: CmIIMessage) -> dict:
    """``IasProtocol`` value for a message: the module OID and the CHOICE."""
    from mediation.pdu.convert import to_asn1
    from mediation.pdu.schema import CMII_OID

    if not message.ALTERNATIVE:
        raise PDUError("CmIIMessage: use one of the twelve message classes")
    return {
        "protocolIdentifier": CMII_OID,
        "iasMessage": (message.ALTERNATIVE, to_asn1(message)),
    }


def cmii_from_asn1(value: dict) -> CmIIMessage:
    from mediation.pdu.schema import CMII_ARC, CMII_OID

    oid = value["protocolIdentifier"]
    if oid != CMII_OID and not oid.startswith(CMII_ARC):
        raise PDUError(f"protocolIdentifier: {oid} is not the T1.IAS CmII module")
    alternative, inner = value["iasMessage"]
    cls = MESSAGE_BY_ALTERNATIVE.get(alternative)
    if cls is None:
        raise PDUError("iasMessage: unknown message")
    return from_asn1(cls, inner)
