"""Matched frames and lease changes into T1.IAS PDUs, encoded for the evidence log.

For every target IP packet a CmII data-Header-Report; when the warrant
allows full content, also a CmCC ``IAS-CC-APDU`` carrying the IP packet
(from its IP header on). The two carry the same content identifier, so the
agency can tie each CC packet to its header report and flow.

Decisions (docs/tap.md says the same for agencies and carriers):

- A *flow* is the 5-tuple seen from the subject: protocol, subject address
  and port, peer address and port. Both directions of a TCP connection are
  one flow. ``streamID`` is the flow's number (an integer from 1, in order
  of first packet), the content identifier is per flow too, and CC
  sequence numbers count from 1 per content identifier.
- Flow state is an LRU of ``max_flows`` entries; a flow evicted and seen
  again is a new flow with a new number (never a reused one).
- A matched frame without an IP packet (ARP, a frame too broken to read an
  address) never goes into CC, whose payload is defined as an IP packet and
  could not be told apart from one. It is reported as CmII
  access-Signaling-Message-Report, type ``other``: its link-layer header as
  text, plus the frame in hex when the warrant allows full content.
- Lease changes map to session messages in one place, ``SESSION_MESSAGES``;
  RADIUS accounting changes to access and session messages in
  ``RADIUS_MESSAGES`` (both in :mod:`mediation.tap.access_messages`).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
from collections.abc import Callable

from mediation.pdu import (
    AccessSignalingMessageReport,
    Allocation,
    ContentIdentifier,
    CorrelationInfo,
    HeaderReport,
    HeaderSet,
    InterceptedSignalingMessage,
    IPAddress,
    PacketDirection,
    SignalingMessageType,
    Value,
    encode,
)
from mediation.pdu.convert import check_visible
from mediation.pdu.fast_der import generalized_time
from mediation.pdu.fast_envelope import CMCC, CMII
from mediation.pdu.taplink import encode_pdu
from mediation.tap.access_messages import AccessMessages, TapPDU
from mediation.tap.header_report import CCTemplate, HeaderReportTemplate
from mediation.tap.link_layer import format_mac
from mediation.tap.packet import ParsedFrame
from mediation.tap.targets import FROM_SUBJECT, TO_SUBJECT, Direction
from mediation.warrants.model import ContentLevel

DEFAULT_MAX_FLOWS = 65536

_PACKET_DIRECTION = {
    Direction.FROM_SUBJECT: PacketDirection.FROM_SUBJECT,
    Direction.TO_SUBJECT: PacketDirection.TO_SUBJECT,
    Direction.UNKNOWN: None,
}


@dataclasses.dataclass(frozen=True)
class FlowCorrelation:
    """One correlation ID per flow: ``epoch`` (4 octets) then the flow number (8).

    The epoch keeps identifiers unique across tap restarts, which start
    numbering flows from 1 again: give each run a different one (the
    tap's start time in seconds, say).
    """

    epoch: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.epoch <= 0xFFFFFFFF:
            raise ValueError("correlation epoch must fit in 4 octets")


@dataclasses.dataclass(frozen=True)
class FixedCorrelation:
    """One correlation ID for everything, assigned by the agency.

    The ``content-id`` of the classic taps (seed white paper, ``tap -x``).
    Flows are still told apart by ``streamID``; CC sequence numbers then
    run across all flows.
    """

    content_id: bytes

    def __post_init__(self) -> None:
        if not self.content_id:
            raise ValueError("a fixed content identifier must not be empty")


CorrelationScheme = FlowCorrelation | FixedCorrelation


class _Counter:
    """A CC sequence, per content identifier (shared by flows under a fixed one)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class _Flow:
    """What a flow's PDUs share: built once, at its first packet."""

    __slots__ = ("cc", "content_identifier", "counter", "info", "number", "templates")

    def __init__(
        self, number: int, cid: ContentIdentifier, info: CorrelationInfo | None, counter: _Counter
    ) -> None:
        self.number = number
        self.content_identifier = cid
        self.info = info
        self.counter = counter
        # (packet goes subject -> peer?, subject address learned?) -> template
        self.templates: dict[tuple[bool, bool], HeaderReportTemplate] = {}
        self.cc: dict[Direction, CCTemplate] = {}  # per direction, full content only


class PDUBuilder(AccessMessages):
    """Turns one warrant's matched frames and lease changes into encoded PDUs.

    Lease, RADIUS and frame reports are
    :class:`~mediation.tap.access_messages.AccessMessages`.

    Args:
        case_id: the case identity (1 to 25 visible characters). It goes
            into the PDUs and nowhere else: never log it.
        iap_system_id: the intercept access point's identity; at most 15
            characters when CC is built (``CC-IAPSystemIdentity``).
        content_level: ``HEADERS`` (CmII only) or ``FULL`` (CmII and CmCC).
        correlation: how content identifiers are chosen.
        max_flows: flows kept; the least recently seen is forgotten first.
        flow_numbers: ``(k, n)``: this builder numbers its flows k+1, k+1+n,
            k+1+2n... so ``n`` builders of one warrant (capture workers,
            mediation/tap/workers.py) never give two flows one number.

    Raises:
        PDUError: a case or IAP identity the PDUs cannot carry.
    """

    def __init__(
        self,
        case_id: str,
        iap_system_id: str,
        content_level: ContentLevel,
        correlation: CorrelationScheme | None = None,
        *,
        max_flows: int = DEFAULT_MAX_FLOWS,
        flow_numbers: tuple[int, int] = (0, 1),
    ) -> None:
        check_visible("caseId", case_id, 1, 25)
        offset, stride = flow_numbers
        if not 0 <= offset < stride:
            raise ValueError("flow_numbers must be (k, n) with 0 <= k < n")
        if stride > 1 and isinstance(correlation, FixedCorrelation):
            # One content identifier for every flow: its CC sequence runs
            # across flows and cannot be shared by builders in other processes.
            raise ValueError("a fixed content identifier needs a single builder")
        check_visible("iAPSystemId", iap_system_id, 1, None)
        self.full = content_level is ContentLevel.FULL
        if self.full:
            check_visible("iapId", iap_system_id, 1, 15)
        if max_flows < 1:
            raise ValueError("max_flows must be at least 1")
        self.case_id = case_id
        self.iap_system_id = iap_system_id
        self.correlation = correlation or FlowCorrelation()
        self.max_flows = max_flows
        self.flows_started = 0
        self._flow_offset, self._flow_stride = offset, stride
        self.flows_evicted = 0
        self._flows: collections.OrderedDict[tuple, _Flow] = collections.OrderedDict()
        self._fixed_counter = _Counter()
        self._aware: object = None  # the last capture time found timezone-aware

    # Packets -------------------------------------------------------------------

    def packet(
        self,
        frame: bytes,
        parsed: ParsedFrame,
        direction: Direction,
        when: dt.datetime,
        *,
        subject_learned: bool = False,
    ) -> list[TapPDU]:
        """The PDUs of one matched frame.

        Args:
            frame: the captured octets.
            parsed: ``parse_frame(frame)``.
            direction: from the matcher.
            when: capture time, an aware datetime (UTC), to the microsecond.
            subject_learned: the subject's address was leased by DHCP as
                followed, so its ``allocationMethod`` is ``dynamic``.

        Returns:
            A header report, then the CC APDU for a full-content warrant; for
            a frame without a readable IP packet, one signalling report.

        Raises:
            ValueError: ``when`` is naive.
        """
        if when is not self._aware:  # checked once per time object (a step's frames share one)
            self._check_aware(when)
        if parsed.src_raw is None or parsed.dst_raw is None:
            return [self._link_report(frame, parsed, direction, when)]
        template, cc, sequence = self._templates(parsed, direction, when, subject_learned)
        gt = generalized_time(when)
        out = [TapPDU(CMII, template.render(when, gt), when)]
        if cc is not None:
            out.append(TapPDU(CMCC, cc.render(gt, sequence, parsed.ip_packet(frame)), when))
        return out

    def records(
        self,
        frame: bytes,
        parsed: ParsedFrame,
        direction: Direction,
        when: dt.datetime,
        subject_learned: bool,
        append: Callable[[tuple[bytes, dt.datetime]], None],
    ) -> int:
        """:meth:`packet`'s PDUs as tap-link records ``(encode_pdu(kind, when, der), when)``.

        The tap's hot path: each record is handed to ``append`` as it is
        made (no TapPDU, no list); the header report's is made once per
        flow, direction and capture time (the frames of a replay step or a
        capture block share one). Byte-identical to encoding :meth:`packet`'s
        PDUs, with the same effect on flows and counters
        (tests/test_tap_records_same.py).

        Returns:
            How many records were appended (the first is the header or
            signalling report).

        Raises:
            ValueError: ``when`` is naive.
        """
        if when is not self._aware:
            self._check_aware(when)
        if parsed.src_raw is None or parsed.dst_raw is None:
            pdu = self._link_report(frame, parsed, direction, when)
            append((encode_pdu(CMII, when, pdu.der), when))
            return 1
        template, cc, sequence = self._templates(parsed, direction, when, subject_learned)
        append((template.record(when), when))
        if cc is None:
            return 1
        append((cc.record(when, sequence, parsed.ip_packet(frame)), when))
        return 2

    def _check_aware(self, when: dt.datetime) -> None:
        """Refuse a naive capture time; remember an aware one (its frames share it)."""
        if when.utcoffset() is None:
            raise ValueError("capture time must be timezone-aware (UTC)")
        self._aware = when

    def _templates(
        self, parsed: ParsedFrame, direction: Direction, when: dt.datetime, subject_learned: bool
    ) -> tuple[HeaderReportTemplate, CCTemplate | None, int]:
        """A frame's header-report template and, for full content, its CC template and
        the packet's sequence number (counted here): :meth:`packet`'s and :meth:`records`'."""
        flow, forward = self._flow(parsed, direction)
        template = flow.templates.get((forward, subject_learned))
        if template is None:
            template = self._template(flow, parsed, direction, subject_learned, when)
            flow.templates[forward, subject_learned] = template
        if not self.full:
            return template, None, 0
        counter = flow.counter
        counter.value += 1
        cc = flow.cc.get(direction)
        if cc is None:
            assert flow.info is not None
            cc = flow.cc[direction] = CCTemplate(flow.info, _PACKET_DIRECTION[direction])
        return template, cc, counter.value

    def _flow(self, parsed: ParsedFrame, direction: Direction) -> tuple[_Flow, bool]:
        """The frame's flow (made if new) and whether it goes subject -> peer."""
        src, sport, dst, dport = parsed.src_raw, parsed.src_port, parsed.dst_raw, parsed.dst_port
        if sport is None:
            sport = -1
        if dport is None:
            dport = -1
        if direction is FROM_SUBJECT:
            forward = True
        elif direction is TO_SUBJECT:
            forward = False
        else:  # no subject side known: order the endpoints so both ways meet
            forward = (src, sport) <= (dst, dport)  # type: ignore[operator]
        # (protocol, subject side's address and port, the peer's): -1 for no port
        key = (parsed.protocol, src, sport, dst, dport) if forward else (
            parsed.protocol, dst, dport, src, sport
        )  # fmt: skip
        flows = self._flows
        flow = flows.get(key)
        if flow is not None:
            flows.move_to_end(key)
            return flow, forward
        if len(flows) >= self.max_flows:
            flows.popitem(last=False)
            self.flows_evicted += 1
        self.flows_started += 1
        flow = self._new_flow((self.flows_started - 1) * self._flow_stride + self._flow_offset + 1)
        flows[key] = flow
        return flow, forward

    def _new_flow(self, number: int) -> _Flow:
        scheme = self.correlation
        if isinstance(scheme, FixedCorrelation):
            cid_octets, counter = scheme.content_id, self._fixed_counter
        else:
            cid_octets = scheme.epoch.to_bytes(4, "big") + number.to_bytes(8, "big")
            counter = _Counter()
        cid = ContentIdentifier.correlation(cid_octets)
        info = CorrelationInfo(cid, self.case_id, self.iap_system_id) if self.full else None
        return _Flow(number, cid, info, counter)

    def _template(
        self,
        flow: _Flow,
        parsed: ParsedFrame,
        direction: Direction,
        subject_learned: bool,
        when: dt.datetime,
    ) -> HeaderReportTemplate:
        """The flow's header report for this direction, with a hole for the time."""
        subject = Allocation.DYNAMIC if subject_learned else Allocation.UNKNOWN
        if direction is FROM_SUBJECT:
            src_alloc, dst_alloc = subject, Allocation.NOT_APPLICABLE
        elif direction is TO_SUBJECT:
            src_alloc, dst_alloc = Allocation.NOT_APPLICABLE, subject
        else:
            src_alloc = dst_alloc = Allocation.UNKNOWN
        sport, dport = parsed.src_port, parsed.dst_port
        header_set = HeaderSet(
            stream_id=Value.integer(flow.number),
            source_ip=IPAddress(parsed.src_ip, src_alloc),  # type: ignore[arg-type]
            destination_ip=IPAddress(parsed.dst_ip, dst_alloc),  # type: ignore[arg-type]
            source_port=None if sport is None else str(sport),
            destination_port=None if dport is None else str(dport),
        )
        report = HeaderReport(
            case_id=self.case_id,
            iap_system_id=self.iap_system_id,
            timestamp=when,
            content_identifier=flow.content_identifier,
            header_set=header_set,
        )
        return HeaderReportTemplate(report)

    def _link_report(
        self, frame: bytes, parsed: ParsedFrame, direction: Direction, when: dt.datetime
    ) -> TapPDU:
        """A matched frame with no IP packet, as a signalling report (never CC)."""
        parts = ["link-layer frame"]
        if parsed.src_mac is not None:
            parts.append(f"src={format_mac(parsed.src_mac)}")
        if parsed.dst_mac is not None:
            parts.append(f"dst={format_mac(parsed.dst_mac)}")
        parts.extend(f"vlan={vlan}" for vlan in parsed.vlans)
        parts += [f"ethertype=0x{parsed.ethertype:04x}", f"length={parsed.length}"]
        parts.append(f"direction={direction.value}")
        if parsed.problem:
            parts.append(f"problem={parsed.problem.replace(' ', '-')}")
        if self.full:
            parts.append(f"octets={frame.hex()}")
        message = InterceptedSignalingMessage(SignalingMessageType.OTHER, " ".join(parts))
        report = AccessSignalingMessageReport(
            case_id=self.case_id,
            iap_system_id=self.iap_system_id,
            timestamp=when,
            signaling_msg=(message,),
        )
        return TapPDU(CMII, encode(report), when)

    def __len__(self) -> int:
        """Flows currently remembered."""
        return len(self._flows)
