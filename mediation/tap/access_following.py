"""A tap following its targets' access: DHCP leases and RADIUS accounting.

What a warrant's :class:`~mediation.tap.replay.Tap` does with the DHCP and
RADIUS it sees: follow the addresses a target MAC leases or a target user
name is given (the matcher then matches them), report each change as CmII,
and report the frame that showed it for the confirmation record. The
matching and building of the target's own traffic stay in the tap.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from typing import TYPE_CHECKING

from mediation.pdu.confirmation import frame_evidence
from mediation.tap.access_messages import TapPDU
from mediation.tap.builder import PDUBuilder
from mediation.tap.dhcp import (
    AccessEvent,
    DhcpFollower,
    LeaseChange,
    MessageType,
    dhcp_payload,
    parse_dhcp,
)
from mediation.tap.packet import ParsedFrame
from mediation.tap.radius import StatusType, accounting_payload
from mediation.tap.radius_follow import RadiusChange, RadiusEvent, RadiusFollower
from mediation.tap.targets import FROM_SUBJECT, TO_SUBJECT, Direction, TargetMatcher

if TYPE_CHECKING:
    from mediation.tap.replay import TapCounters

_DHCP_TYPES = frozenset(MessageType)
_RADIUS_TYPES = frozenset(StatusType)


class AccessFollowing:
    """The DHCP and RADIUS half of a :class:`~mediation.tap.replay.Tap` (a base class of it).

    Uses the tap's window, matcher, builder, followers and counters.
    """

    start: dt.datetime | None
    end: dt.datetime | None
    matcher: TargetMatcher
    builder: PDUBuilder
    follower: DhcpFollower | None
    radius: RadiusFollower | None
    counters: TapCounters

    def _dhcp(
        self, frame: bytes, parsed: ParsedFrame, when: dt.datetime, interface: str | None
    ) -> tuple[Direction | None, list[AccessEvent], TapPDU | None]:
        """Follow a DHCP message; the target's own are its traffic whatever the addresses.

        Returns the direction (if the message is a target's), the lease
        changes, and the frame's report for the confirmation record: for a
        frame that changed a lease, and for a target's ACK that renewed one
        (which changes nothing the session messages say, but shows the
        target still held the address).

        A server may broadcast its answer (or a relay carry it), so a DHCP
        message about a target MAC is matched by its ``chaddr`` too. When
        every target MAC is scoped (VLAN, interface), DHCP outside all their
        scopes is not read: another VLAN's server and clients, with their
        own reuse of private addresses, say nothing about this target.
        """
        payload = dhcp_payload(frame, parsed)  # the ports first: most frames are not DHCP
        if payload is None or not self.matcher.dhcp_in_scope(parsed, interface):
            return None, [], None
        message = parse_dhcp(payload)
        if message is None:
            return None, [], None
        assert self.follower is not None
        mine = self.matcher.mac_in_scope(message.chaddr, parsed, interface)
        if not mine and message.chaddr in self.matcher.macs:
            return None, [], None  # a target MAC seen outside its scope: another subscriber
        self.counters.dhcp_messages += 1
        events = self.follower.observe(message, when)
        lease = self.follower.leases.get(message.chaddr) if mine else None
        renewed = message.message_type == MessageType.ACK and (
            lease is not None and lease.address == message.yiaddr
        )  # not an INFORM's answer, which leases nothing
        shown = None
        if events or renewed:
            kind = message.message_type
            what = MessageType(kind).name.lower() if kind in _DHCP_TYPES else f"type-{kind}"
            shown = self._frame_report("dhcp", what, frame, when, "frame")
        if not mine:
            return None, events, shown
        return (FROM_SUBJECT if message.op == 1 else TO_SUBJECT), events, shown

    def _radius(self, frame: bytes, parsed: ParsedFrame, when: dt.datetime) -> list[TapPDU]:
        """Follow one Accounting-Request: the user's addresses, and the CmII they cause.

        The accounting packet itself goes between the NAS and the RADIUS
        server: it is the carrier's signalling, not the subject's traffic,
        so it is never reported as a packet (only what it changed is).
        """
        payload = accounting_payload(frame, parsed)
        if payload is None:
            return []
        return self.accounting(payload, when, frame=frame)

    def accounting(
        self, payload: bytes, when: dt.datetime, *, frame: bytes | None = None
    ) -> list[TapPDU]:
        """Follow one Accounting-Request received directly (a RADIUS accounting listener).

        Args:
            payload: the UDP payload, as sent to an accounting port.
            when: the time it was received, aware UTC.
            frame: the captured frame that carried it, if there was one:
                the frame report hashes the frame, else the payload.

        Returns:
            The CmII the changes cause, then (when there were changes) the
            report of the frame that showed them; none for a refused packet
            (counted in ``counters.radius_refused`` and, by reason, in
            ``radius.refused``), or for a warrant without ``user:`` targets
            or outside its window.
        """
        if self.radius is None:
            return []
        if (self.start is not None and when < self.start) or (
            self.end is not None and when >= self.end
        ):
            self.counters.outside_window += 1
            return []
        refused = self.radius.refused_total
        events = self.radius.observe_payload(payload, when)
        if self.radius.refused_total != refused:
            self.counters.radius_refused += 1
        else:
            self.counters.radius_messages += 1
        out = [self._apply_radius(event) for event in events]
        request = self.radius.last_request
        if events and request is not None:
            status = request.status
            name = StatusType(status).name if status in _RADIUS_TYPES else f"type-{status}"
            what = "accounting-" + name.lower().replace("_", "-")
            shown = payload if frame is None else frame
            layer = "udp-payload" if frame is None else "frame"
            out.append(self._frame_report("radius", what, shown, when, layer))
        return out

    def _frame_report(
        self, proto: str, what: str, data: bytes, when: dt.datetime, layer: str
    ) -> TapPDU:
        """The confirmation record's report of a frame (whole when the warrant allows content)."""
        self.counters.cmii += 1
        evidence = frame_evidence(proto, what, data, when, layer=layer, keep=self.builder.full)
        return self.builder.frame_report(evidence)

    def _apply_radius(self, event: RadiusEvent) -> TapPDU:
        """Follow (or stop following) one RADIUS event's address, and report it."""
        held = event.address
        if held is not None and event.change is RadiusChange.ADDRESS_DROPPED:
            if isinstance(held, ipaddress.IPv6Network):
                self.matcher.unfollow_prefix(held)
            else:
                self.matcher.unfollow(held)
        elif held is not None and event.change is not RadiusChange.ACCESS_ACCEPTED:
            if isinstance(held, ipaddress.IPv6Network):
                self.matcher.follow_prefix(held)
            else:
                self.matcher.follow(held)
        self.counters.access_events += 1
        self.counters.cmii += 1
        return self.builder.radius_event(event)

    def _apply(self, events: list[AccessEvent]) -> list[TapPDU]:
        """Follow (or stop following) each event's address, and report it."""
        out = []
        for event in events:
            if event.change is LeaseChange.ENDED:
                self.matcher.unfollow(event.lease.address)
            else:
                self.matcher.follow(event.lease.address, event.lease.mac)
            self.counters.access_events += 1
            self.counters.cmii += 1
            out.append(self.builder.access_event(event))
        return out
