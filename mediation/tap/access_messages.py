"""What a tap reports of access, not packets: lease and RADIUS changes and their frames, as CmII.

Lease changes map to session messages in one place, :data:`SESSION_MESSAGES`;
RADIUS accounting changes to access and session messages in
:data:`RADIUS_MESSAGES`; the frame that showed them is reported too (the
confirmation record). :class:`TapPDU` is the record every PDU a tap builds
is, packets' included (:mod:`mediation.tap.builder`).
"""

from __future__ import annotations

import datetime as dt
from ipaddress import IPv4Address, IPv6Network
from typing import NamedTuple

from mediation.pdu import (
    AccessAccepted,
    AccessSessionEnd,
    AccessSignalingMessageReport,
    Allocation,
    CmIIMessage,
    IPAddress,
    SessionAlreadyEstablished,
    SessionEnd,
    SessionStart,
    Value,
    encode,
)
from mediation.pdu.confirmation import FrameEvidence, frame_message
from mediation.pdu.fast_envelope import CMII
from mediation.tap.dhcp import AccessEvent, Lease, LeaseChange
from mediation.tap.link_layer import format_mac
from mediation.tap.radius_follow import RadiusChange, RadiusEvent

# The one place lease changes become CmII (see docs/tap.md, "Access events").
SESSION_MESSAGES: dict[LeaseChange, type[CmIIMessage]] = {
    LeaseChange.STARTED: SessionStart,
    LeaseChange.ALREADY_ESTABLISHED: SessionAlreadyEstablished,
    LeaseChange.ENDED: SessionEnd,
}

# The one place RADIUS accounting changes become CmII (docs/tap.md, "RADIUS following").
RADIUS_MESSAGES: dict[RadiusChange, type[CmIIMessage]] = {
    RadiusChange.ACCESS_ACCEPTED: AccessAccepted,
    RadiusChange.ADDRESS_GAINED: SessionStart,
    RadiusChange.ALREADY_HELD: SessionAlreadyEstablished,
    RadiusChange.ADDRESS_DROPPED: SessionEnd,
    RadiusChange.ACCESS_ENDED: AccessSessionEnd,
}

class TapPDU(NamedTuple):
    """One encoded PDU, as the evidence log takes it.

    A named tuple, not a frozen dataclass: two are made for every target
    packet, and a frozen dataclass's ``__init__`` (``object.__setattr__`` per
    field) cost 1.5 us against 0.3 us.
    """

    kind: str  # "cmII" or "cmCC" (mediation.pdu.fast.CMII / CMCC)
    der: bytes
    time: dt.datetime  # capture time (or lease expiry time)


class AccessMessages:
    """A :class:`~mediation.tap.builder.PDUBuilder`'s access reports (a base class of it).

    Uses the builder's case and IAP identities.
    """

    case_id: str
    iap_system_id: str

    def access_event(self, event: AccessEvent) -> TapPDU:
        """The CmII message for one lease change (see :data:`SESSION_MESSAGES`)."""
        lease = event.lease
        message_class = SESSION_MESSAGES[event.change]
        fields = {
            "case_id": self.case_id,
            "iap_system_id": self.iap_system_id,
            "timestamp": event.when,
            "subscriber_identity": Value.text(format_mac(lease.mac)),
            "packet_data_session_id": Value.integer(lease.session),
            "ip_address": IPAddress(lease.address, Allocation.DYNAMIC, prefix_len=lease.prefix_len),
        }
        if event.change is LeaseChange.ENDED:
            assert event.reason is not None
            fields["reason_for_termination"] = Value.text(event.reason.value)
        else:
            fields["access_session_characteristics"] = Value.text(_lease_text(lease))
        message = message_class(**fields)
        return TapPDU(CMII, encode(message), event.when)

    def radius_event(self, event: RadiusEvent) -> TapPDU:
        """The CmII message for one RADIUS accounting change (see :data:`RADIUS_MESSAGES`)."""
        fields: dict = {
            "case_id": self.case_id,
            "iap_system_id": self.iap_system_id,
            "timestamp": event.when,
            "subscriber_identity": Value.utf8(event.user),
            "access_session_id": Value.utf8(event.session_id),
        }
        address = None if event.address is None else _ip_address(event.address)
        change = event.change
        if change is RadiusChange.ACCESS_ACCEPTED:
            fields["ip_address"] = address
            if event.nas is not None:
                fields["network_access_node_identity"] = Value.utf8(event.nas)
            text = "radius"
            if event.calling_station_id is not None:
                text += f" calling-station-id={event.calling_station_id}"
            fields["access_session_characteristics"] = Value.utf8(text)
        elif change is RadiusChange.ACCESS_ENDED:
            fields["reason_for_termination"] = Value.utf8(event.reason or "radius-stop")
        else:
            assert address is not None and event.number is not None
            fields["ip_address"] = address
            fields["packet_data_session_id"] = Value.integer(event.number)
            if change is RadiusChange.ADDRESS_DROPPED:
                fields["reason_for_termination"] = Value.utf8(event.reason or "radius-stop")
            else:
                fields["access_session_characteristics"] = Value.text("radius")
        message = RADIUS_MESSAGES[change](**fields)
        return TapPDU(CMII, encode(message), event.when)

    def frame_report(self, evidence: FrameEvidence) -> TapPDU:
        """The signalling report of the frame that showed access events (confirmation).

        Sent right after the events the frame caused, with the same time,
        so the agency and the carrier's record tie each event to its frame
        (:mod:`mediation.pdu.confirmation`).
        """
        report = AccessSignalingMessageReport(
            case_id=self.case_id,
            iap_system_id=self.iap_system_id,
            timestamp=evidence.captured,
            signaling_msg=(frame_message(evidence),),
        )
        return TapPDU(CMII, encode(report), evidence.captured)


def _ip_address(held: IPv4Address | IPv6Network) -> IPAddress:
    """A followed address, or a delegated IPv6 prefix as its first address and length."""
    if isinstance(held, IPv6Network):
        return IPAddress(held.network_address, Allocation.DYNAMIC, prefix_len=held.prefixlen)
    return IPAddress(held, Allocation.DYNAMIC)


def _lease_text(lease: Lease) -> str:
    """``dhcp lease-time=3600 server=192.0.2.1``: what the ACK said of the lease."""
    parts = ["dhcp"]
    if lease.lease_time is not None:
        infinite = lease.lease_time == 0xFFFFFFFF
        parts.append("lease-time=infinite" if infinite else f"lease-time={lease.lease_time}")
    if lease.server_id is not None:
        parts.append(f"server={lease.server_id}")
    return " ".join(parts)
