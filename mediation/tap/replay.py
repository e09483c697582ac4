"""One warrant's tap (matcher + DHCP and RADIUS followers + PDU builder), and pcap replay.

A :class:`Tap` serves exactly one warrant: two agencies watching the same
target are two warrants, so two taps, each with its own case identity,
flows, content identifiers and sequence numbers; nothing one builds ever
carries the other's case. Frames are parsed once and shown to every tap.

:func:`replay_pcap` feeds a capture file through taps, for the demo and the
tests; live capture (AF_PACKET with a BPF filter) will drive the same
:meth:`Tap.process`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

from mediation.evidence.pcap import PcapReader
from mediation.pdu.taplink import encode_pdu
from mediation.tap.access_following import AccessFollowing
from mediation.tap.access_messages import TapPDU
from mediation.tap.builder import DEFAULT_MAX_FLOWS, CorrelationScheme, PDUBuilder
from mediation.tap.dhcp import DHCP_PORTS, AccessEvent, DhcpFollower
from mediation.tap.packet import LINKTYPE_ETHERNET, PROTO_UDP, ParsedFrame, parse_frame
from mediation.tap.radius_follow import RadiusFollower
from mediation.tap.targets import FROM_SUBJECT, UNKNOWN, Direction, TargetMatcher
from mediation.warrants.model import Warrant


@dataclasses.dataclass
class TapCounters:
    """What a tap has seen; numbers only, safe to log and export."""

    frames: int = 0
    outside_window: int = 0  # frames before the warrant's start or after its end
    matched: int = 0
    malformed: int = 0  # matched frames with a malformed header
    dhcp_messages: int = 0
    radius_messages: int = 0  # Accounting-Requests read (refusals: Tap.radius.refused)
    radius_refused: int = 0
    access_events: int = 0
    cmii: int = 0
    cmcc: int = 0


class Tap(AccessFollowing):
    """The tap for one warrant: decides, follows and builds.

    Following DHCP and RADIUS (and :meth:`accounting`) is
    :class:`~mediation.tap.access_following.AccessFollowing`.

    Args:
        handle: the warrant's opaque handle (never the case identity).
        matcher: the warrant's targets.
        builder: the warrant's PDU builder.
        start, end: the warrant's window; frames captured outside
            ``[start, end)`` are counted and dropped, DHCP and RADIUS included.
        radius_secret: the RADIUS shared secret, for a warrant with ``user:``
            targets: accounting whose authenticator does not match it is
            refused. ``None``: accounting is believed unchecked.
    """

    def __init__(
        self,
        handle: str,
        matcher: TargetMatcher,
        builder: PDUBuilder,
        *,
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
        radius_secret: bytes | None = None,
    ) -> None:
        self.handle = handle
        self.matcher = matcher
        self.builder = builder
        self.start = start
        self.end = end
        self.follower = DhcpFollower(matcher.macs) if matcher.follows_macs else None
        self.radius = (
            RadiusFollower(matcher.users, radius_secret) if matcher.follows_users else None
        )
        self.counters = TapCounters()

    @classmethod
    def for_warrant(
        cls,
        warrant: Warrant,
        *,
        iap_system_id: str | None = None,
        correlation: CorrelationScheme | None = None,
        max_flows: int = DEFAULT_MAX_FLOWS,
        radius_secret: bytes | None = None,
    ) -> Tap:
        """The tap for a warrant whose case details are loaded.

        Args:
            warrant: the warrant.
            iap_system_id: used when the warrant names no IAP.
            correlation: the content identifier scheme (default: per flow).
            max_flows: flows each builder remembers.
            radius_secret: see the class; used only for ``user:`` targets.

        Raises:
            ValueError: details not loaded, the warrant removed, or no IAP
                system identity from either place.
        """
        details = warrant.details
        if details is None:
            raise ValueError(f"warrant {warrant.handle}: case details are not loaded")
        if warrant.removed is not None:
            raise ValueError(f"warrant {warrant.handle} is removed")
        iap = details.iap or iap_system_id
        if not iap:
            raise ValueError(f"warrant {warrant.handle}: no IAP system identity")
        builder = PDUBuilder(
            details.case_id, iap, warrant.content, correlation, max_flows=max_flows
        )
        matcher = TargetMatcher(details.targets)
        return cls(
            warrant.handle,
            matcher,
            builder,
            start=warrant.start,
            end=warrant.end,
            radius_secret=radius_secret,
        )

    def process(
        self,
        frame: bytes,
        when: dt.datetime,
        parsed: ParsedFrame | None = None,
        *,
        linktype: int = LINKTYPE_ETHERNET,
        interface: str | None = None,
        outgoing: bool | None = None,
    ) -> list[TapPDU]:
        """The PDUs one captured frame causes for this warrant (often none).

        Args:
            frame: the captured octets.
            when: capture time, aware UTC with microseconds.
            parsed: ``parse_frame(frame, linktype)`` if already done (it is
                shared by every warrant's tap).
            linktype: the capture's link type, when ``parsed`` is not given.
            interface: the capture interface's name, for ``iface:`` targets
                and targets scoped to an interface.
            outgoing: the capture host sent the frame (Linux PACKET_OUTGOING),
                the direction for ``iface:`` targets; ``None`` if unknown.

        Returns:
            Encoded PDUs in order: session ends of leases that expired
            before ``when``, the frame's own PDUs, then the lease changes it
            caused.
        """
        counters = self.counters
        counters.frames += 1
        if (self.start is not None and when < self.start) or (
            self.end is not None and when >= self.end
        ):
            counters.outside_window += 1
            return []
        if frame.__class__ is not bytes:
            frame = bytes(frame)  # CC payloads and DHCP slices are then bytes too
        if parsed is None:
            parsed = parse_frame(frame, linktype)
        out: list[TapPDU] = []
        follower = self.follower
        if follower is not None and follower.next_expiry is not None:
            out += self._apply(follower.expire(when))
        direction = self.matcher.match(parsed, interface, raw=frame, outgoing=outgoing)
        events: list[AccessEvent] = []
        shown: TapPDU | None = None
        if follower is not None and parsed.protocol == PROTO_UDP:
            seen, events, shown = self._dhcp(frame, parsed, when, interface)
            if direction is None:
                direction = seen
        if direction is not None:
            out += self._matched(frame, parsed, direction, when)
        if events:
            out += self._apply(events)
        if shown is not None:
            out.append(shown)
        if self.radius is not None and parsed.protocol == PROTO_UDP:
            out += self._radius(frame, parsed, when)
        return out

    def records(
        self,
        frame: bytes,
        when: dt.datetime,
        parsed: ParsedFrame,
        append: Callable[[tuple[bytes, dt.datetime]], None],
        *,
        interface: str | None = None,
        outgoing: bool | None = None,
    ) -> None:
        """:meth:`process`, each PDU handed to ``append`` as a tap-link record.

        A record is ``(encode_pdu(kind, time, der), time)``. The hot path of
        a replay and of a live capture: a frame inside the window, as bytes,
        with no lease due, not to or from a DHCP port and no RADIUS
        followed, is matched and goes to :meth:`PDUBuilder.records` (no
        TapPDU and no list per frame); any other goes through
        :meth:`process`. The same records and counters either way
        (tests/test_tap_records_same.py).

        Args:
            parsed: ``parse_frame(frame, linktype)``; the rest as :meth:`process`.
        """
        follower = self.follower
        if (
            self.radius is not None
            or frame.__class__ is not bytes
            or (self.start is not None and when < self.start)
            or (self.end is not None and when >= self.end)
            or (
                follower is not None
                and (
                    follower.next_expiry is not None
                    or parsed.src_port in DHCP_PORTS
                    or parsed.dst_port in DHCP_PORTS
                )
            )
        ):
            for kind, der, captured in self.process(
                frame, when, parsed, interface=interface, outgoing=outgoing
            ):
                append((encode_pdu(kind, captured, der), captured))
            return
        counters = self.counters
        counters.frames += 1
        direction = self.matcher.match(parsed, interface, raw=frame, outgoing=outgoing)
        if direction is not None:
            learned = self._count_matched(parsed, direction)
            made = self.builder.records(frame, parsed, direction, when, learned, append)
            counters.cmii += 1
            counters.cmcc += made - 1

    def process_many(
        self, frames: Sequence[tuple[bytes, ParsedFrame]], when: dt.datetime
    ) -> list[TapPDU]:
        """:meth:`process` for frames captured together (one receive step), in order.

        What is the same for every frame (the window, whether leases or
        RADIUS are followed) is looked at once. Frames come without an
        interface or direction (TZSP says neither).

        Args:
            frames: ``(frame, parse_frame(frame))`` pairs, frames as bytes.
            when: their capture time, aware UTC.

        Returns:
            The PDUs, in the order :meth:`process` would give them frame by frame.
        """
        counters = self.counters
        if self.follower is not None or self.radius is not None:
            out: list[TapPDU] = []
            for frame, parsed in frames:
                out += self.process(frame, when, parsed)
            return out
        counters.frames += len(frames)
        if (self.start is not None and when < self.start) or (
            self.end is not None and when >= self.end
        ):
            counters.outside_window += len(frames)
            return []
        out, match, matched = [], self.matcher.match, self._matched
        for frame, parsed in frames:
            direction = match(parsed, None, raw=frame)
            if direction is not None:
                out += matched(frame, parsed, direction, when)
        return out

    def expire(self, now: dt.datetime) -> list[TapPDU]:
        """Session ends for leases that ran out by ``now`` (call on a timer when idle)."""
        if self.follower is None:
            return []
        return self._apply(self.follower.expire(now))

    def _count_matched(self, parsed: ParsedFrame, direction: Direction) -> bool:
        """A matched frame counted; whether its subject's address was learned (DHCP)."""
        counters = self.counters
        counters.matched += 1
        counters.malformed += parsed.malformed
        subject = parsed.src_raw if direction is FROM_SUBJECT else parsed.dst_raw
        return direction is not UNKNOWN and self.matcher.is_learned(subject)

    def _matched(
        self, frame: bytes, parsed: ParsedFrame, direction: Direction, when: dt.datetime
    ) -> list[TapPDU]:
        counters = self.counters
        learned = self._count_matched(parsed, direction)
        pdus = self.builder.packet(frame, parsed, direction, when, subject_learned=learned)
        counters.cmii += 1  # a header or signalling report, then the CC APDU if any
        counters.cmcc += len(pdus) - 1
        return pdus


class ReplayItem(NamedTuple):
    """One PDU out of a replay: whose, what kind, its DER and its time."""

    handle: str
    kind: str
    der: bytes
    time: dt.datetime


def replay_frames(
    frames: Iterable[tuple[bytes, dt.datetime]],
    taps: Sequence[Tap],
    *,
    linktype: int = LINKTYPE_ETHERNET,
    interface: str | None = None,
) -> Iterator[ReplayItem]:
    """Every PDU that ``taps`` build from ``(frame, capture time)`` pairs, in order."""
    for data, when in frames:
        parsed = parse_frame(data, linktype)
        for tap in taps:
            for pdu in tap.process(data, when, parsed, interface=interface):
                yield ReplayItem(tap.handle, pdu.kind, pdu.der, pdu.time)


def replay_pcap(
    path: str | os.PathLike[str],
    warrants: Iterable[Warrant | Tap],
    *,
    interface: str | None = None,
    iap_system_id: str | None = None,
    correlation: CorrelationScheme | None = None,
) -> Iterator[ReplayItem]:
    """Replay a classic pcap file through one tap per warrant.

    Args:
        path: the capture.
        warrants: warrants with loaded details (a tap is made for each), or
            ready-made taps (whose state then carries on).
        interface: the name the capture is taken to come from (``iface:`` targets).
        iap_system_id, correlation: for taps made here; see :meth:`Tap.for_warrant`.

    Yields:
        :class:`ReplayItem` per PDU, in capture order.

    Raises:
        PcapError: the file is not a readable pcap.
        ValueError: a warrant cannot be tapped (see :meth:`Tap.for_warrant`).
    """
    taps = [
        w
        if isinstance(w, Tap)
        else Tap.for_warrant(w, iap_system_id=iap_system_id, correlation=correlation)
        for w in warrants
    ]
    with PcapReader.open(path) as reader:
        packets = ((packet.data, packet.time) for packet in reader)
        yield from replay_frames(packets, taps, linktype=reader.linktype, interface=interface)
