"""The tap's core: parse frames, pick the target's, follow DHCP and RADIUS, build T1.IAS PDUs.

Live capture is :class:`mediation.tap.live.LiveTap` (AF_PACKET, a
TPACKET_V3 ring and a kernel BPF filter from the targets; imported from
its module, as it needs trio and libpcap); :func:`replay_pcap` drives the
same code from a capture file. See docs/tap.md.

Public surface::

    parse_frame(frame, linktype) -> ParsedFrame        never raises
    TargetMatcher(targets).match(parsed, interface) -> Direction | None
    parse_dhcp(payload) -> DhcpMessage | None           DhcpFollower: leases of target MACs
    parse_accounting(payload, secret) -> AccountingRequest   RadiusFollower: a user's sessions
    PDUBuilder(case_id, iap_system_id, content_level, correlation)
        .packet(frame, parsed, direction, when) -> [TapPDU]   .access_event(event) -> TapPDU
        .radius_event(event) -> TapPDU
    Tap.for_warrant(warrant).process(frame, when) -> [TapPDU]
    replay_pcap(path, warrants) -> iterator of ReplayItem(handle, kind, der, time)
    live.LiveTap(interface, warrants).run() -> async iterator of [ReplayItem]
    bpf.kernel_filter(targets, interface) -> KernelFilter (libpcap, chained)
"""

from mediation.tap.access_messages import RADIUS_MESSAGES, SESSION_MESSAGES, TapPDU
from mediation.tap.builder import FixedCorrelation, FlowCorrelation, PDUBuilder
from mediation.tap.dhcp import (
    AccessEvent,
    DhcpFollower,
    DhcpMessage,
    EndReason,
    Lease,
    LeaseChange,
    MessageType,
    parse_dhcp,
)
from mediation.tap.packet import ParsedFrame, parse_frame
from mediation.tap.radius import AccountingRequest, RadiusError, parse_accounting
from mediation.tap.radius_follow import RadiusChange, RadiusEvent, RadiusFollower
from mediation.tap.replay import ReplayItem, Tap, TapCounters, replay_frames, replay_pcap
from mediation.tap.targets import Direction, TargetMatcher

__all__ = [
    "RADIUS_MESSAGES",
    "SESSION_MESSAGES",
    "AccessEvent",
    "AccountingRequest",
    "DhcpFollower",
    "DhcpMessage",
    "Direction",
    "EndReason",
    "FixedCorrelation",
    "FlowCorrelation",
    "Lease",
    "LeaseChange",
    "MessageType",
    "PDUBuilder",
    "ParsedFrame",
    "RadiusChange",
    "RadiusError",
    "RadiusEvent",
    "RadiusFollower",
    "ReplayItem",
    "Tap",
    "TapCounters",
    "TapPDU",
    "TargetMatcher",
    "parse_accounting",
    "parse_dhcp",
    "parse_frame",
    "replay_frames",
    "replay_pcap",
]
