"""mediation/tap/dhcp.py: DHCP parsing, lease following, and the tap following the target."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from pathlib import Path

import test_tap_frames as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mediation.evidence.pcap import PcapReader
from mediation.pdu import (
    AccessSignalingMessageReport,
    SessionAlreadyEstablished,
    SessionEnd,
    SessionStart,
    decode,
)
from mediation.pdu.confirmation import parse_frame_message
from mediation.tap.dhcp import (
    DhcpFollower,
    EndReason,
    LeaseChange,
    dhcp_payload,
    parse_dhcp,
)
from mediation.tap.packet import parse_frame
from mediation.tap.replay import Tap
from mediation.warrants.model import ContentLevel

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "sample" / "sample.pcap"
TARGET = F.mac(F.TARGET_MAC)
A10, A11 = ipaddress.ip_address("192.0.2.10"), ipaddress.ip_address("192.0.2.11")
T0 = F.T0


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def ack(address: str, *, chaddr: str = F.TARGET_MAC, lease: int = 3600, ciaddr: str = "0.0.0.0"):
    payload = F.dhcp(
        5,
        chaddr,
        yiaddr=address,
        ciaddr=ciaddr,
        lease=lease,
        server="192.0.2.1",
        mask="255.255.255.0",
    )
    return parse_dhcp(payload)


# Parsing ------------------------------------------------------------------------


def test_parses_the_sample_exchange() -> None:
    with PcapReader.open(SAMPLE) as reader:
        frames = [p.data for p in reader][:4]
    messages = [parse_dhcp(dhcp_payload(f, parse_frame(f)) or b"") for f in frames]
    assert [m.message_type for m in messages] == [1, 2, 3, 5]
    assert all(m.chaddr == TARGET and m.xid == 0x3903F326 for m in messages)
    request, done = messages[2], messages[3]
    assert request.requested_ip == A10 and request.server_id == ipaddress.ip_address("192.0.2.1")
    assert (done.op, done.yiaddr, done.lease_time, done.prefix_len) == (2, A10, 3600, 24)


def test_not_dhcp() -> None:
    assert parse_dhcp(b"") is None
    assert parse_dhcp(F.dhcp(1, F.TARGET_MAC)[:239]) is None
    bad_cookie = bytearray(F.dhcp(1, F.TARGET_MAC))
    bad_cookie[236] = 0
    assert parse_dhcp(bytes(bad_cookie)) is None
    dns = parse_frame(
        F.eth(
            F.GATEWAY_MAC,
            F.TARGET_MAC,
            0x0800,
            F.ipv4("192.0.2.10", "198.51.100.53", 17, F.udp(53001, 53)),
        )
    )
    assert dhcp_payload(b"", dns) is None


def test_options_pad_truncation_and_odd_values() -> None:
    base = F.dhcp(3, F.TARGET_MAC, requested="192.0.2.10")[:-1]  # drop the end option
    padded = parse_dhcp(base[:240] + b"\x00\x00" + base[240:] + bytes((51, 4, 0, 0)))
    assert padded is not None and padded.message_type == 3 and padded.requested_ip == A10
    assert padded.lease_time is None  # its value was cut short
    odd = parse_dhcp(base + bytes((1, 4, 255, 0, 255, 0, 61, 3, 1, 2, 3, 255)))
    assert odd is not None and odd.prefix_len is None and odd.client_id == b"\x01\x02\x03"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_random_options_never_raise(tail: bytes) -> None:
    parse_dhcp(F.dhcp(1, F.TARGET_MAC)[:240] + tail)


# The follower ---------------------------------------------------------------------


def test_ack_starts_a_lease_and_a_renewal_only_extends_it() -> None:
    follower = DhcpFollower(frozenset({TARGET}))
    [started] = follower.observe(ack("192.0.2.10", lease=60), at(0))
    assert started.change is LeaseChange.STARTED and started.lease.address == A10
    assert started.lease.session == 1 and started.lease.prefix_len == 24
    assert follower.next_expiry == at(60)
    assert follower.observe(ack("192.0.2.10", lease=60, ciaddr="192.0.2.10"), at(30)) == []
    assert follower.next_expiry == at(90) and follower.expire(at(61)) == []
    [ended] = follower.expire(at(100))
    assert (ended.change, ended.reason, ended.when) == (
        LeaseChange.ENDED,
        EndReason.EXPIRED,
        at(90),
    )
    assert follower.leases == {} and follower.next_expiry is None


def test_first_seen_renewing_was_already_established() -> None:
    follower = DhcpFollower(frozenset({TARGET}))
    [event] = follower.observe(ack("192.0.2.10", ciaddr="192.0.2.10"), at(0))
    assert event.change is LeaseChange.ALREADY_ESTABLISHED


def test_a_new_address_ends_the_old_lease() -> None:
    follower = DhcpFollower(frozenset({TARGET}))
    follower.observe(ack("192.0.2.10"), at(0))
    ended, started = follower.observe(ack("192.0.2.11"), at(5))
    assert (ended.reason, ended.lease.address, ended.lease.session) == (EndReason.CHANGED, A10, 1)
    assert (started.change, started.lease.address, started.lease.session) == (
        LeaseChange.STARTED,
        A11,
        2,
    )


def test_release_nak_decline_and_reassignment_end_the_lease() -> None:
    cases = [
        (F.dhcp(7, F.TARGET_MAC, ciaddr="192.0.2.10"), EndReason.RELEASE),
        (F.dhcp(6, F.TARGET_MAC), EndReason.NAK),
        (F.dhcp(4, F.TARGET_MAC, requested="192.0.2.10"), EndReason.DECLINE),
        (F.dhcp(5, F.OTHER_MAC, yiaddr="192.0.2.10", lease=60), EndReason.REASSIGNED),
    ]
    for payload, reason in cases:
        follower = DhcpFollower(frozenset({TARGET}))
        follower.observe(ack("192.0.2.10"), at(0))
        [event] = follower.observe(parse_dhcp(payload), at(1))
        assert (event.change, event.reason, event.when) == (LeaseChange.ENDED, reason, at(1))


def test_what_does_not_end_a_lease() -> None:
    follower = DhcpFollower(frozenset({TARGET}))
    follower.observe(ack("192.0.2.10", lease=0xFFFFFFFF), at(0))
    assert follower.next_expiry is None  # infinite
    ignored = [
        F.dhcp(7, F.TARGET_MAC, ciaddr="192.0.2.99"),  # releases an address it does not hold
        F.dhcp(7, F.OTHER_MAC, ciaddr="192.0.2.10"),  # someone else's release
        F.dhcp(5, F.TARGET_MAC),  # the ACK to an INFORM: no address given
        F.dhcp(5, F.OTHER_MAC, yiaddr="192.0.2.20"),
        F.dhcp(1, F.TARGET_MAC),
    ]
    for payload in ignored:
        assert follower.observe(parse_dhcp(payload), at(1)) == []
    assert follower.leases[TARGET].address == A10
    assert follower.observe(ack("192.0.2.20", chaddr=F.OTHER_MAC), at(2)) == []


# The tap following the target ---------------------------------------------------------


def upstream(src: str, dst: str = "198.51.100.7") -> bytes:
    """Routed traffic past the access segment: neither MAC is the target's."""
    packet = F.ipv4(src, dst, 17, F.udp(50000, 5004, b"payload"))
    return F.eth(F.UPSTREAM_MAC, F.GATEWAY_MAC, 0x0800, packet)


def exchange(address: str, lease: int = 3600) -> list[bytes]:
    """DISCOVER, OFFER, REQUEST, ACK for ``address``; the server answers by unicast."""
    server = {"server": "192.0.2.1", "lease": lease, "mask": "255.255.255.0"}
    return [
        F.dhcp_frame(F.dhcp(1, F.TARGET_MAC), from_client=True),
        F.dhcp_frame(
            F.dhcp(2, F.TARGET_MAC, yiaddr=address, **server), from_client=False, dst_ip=address
        ),
        F.dhcp_frame(
            F.dhcp(3, F.TARGET_MAC, requested=address, server="192.0.2.1"), from_client=True
        ),
        F.dhcp_frame(
            F.dhcp(5, F.TARGET_MAC, yiaddr=address, **server), from_client=False, dst_ip=address
        ),
    ]


def run(tap: Tap, timeline: list[tuple[float, bytes]]) -> list[list[object]]:
    """Each frame's PDUs, decoded."""
    return [[decode(p.der) for p in tap.process(frame, at(s))] for s, frame in timeline]


def test_tap_follows_the_target_from_192_0_2_10_to_192_0_2_11() -> None:
    tap = Tap.for_warrant(F.warrant(F.TARGET_MAC, content=ContentLevel.HEADERS))
    neighbour = F.dhcp_frame(
        F.dhcp(5, F.OTHER_MAC, yiaddr="192.0.2.20", lease=60),
        from_client=False,
        dst_mac=F.OTHER_MAC,
        dst_ip="192.0.2.20",
    )
    release = F.eth(
        F.GATEWAY_MAC,
        F.TARGET_MAC,
        0x0800,
        F.ipv4(
            "192.0.2.10",
            "192.0.2.1",
            17,
            F.udp(68, 67, F.dhcp(7, F.TARGET_MAC, ciaddr="192.0.2.10")),
        ),
    )
    timeline = [
        (0.0, upstream("192.0.2.10")),  # before any lease: not the target's yet
        *[(0.01 * i, f) for i, f in enumerate(exchange("192.0.2.10"), 1)],
        (0.5, neighbour),
        (1, upstream("192.0.2.10")),
        (2, upstream("192.0.2.11")),
        (10, release),
        (11, upstream("192.0.2.10")),
        *[(20 + 0.01 * i, f) for i, f in enumerate(exchange("192.0.2.11"), 1)],
        (21, upstream("192.0.2.11")),
        (22, upstream("192.0.2.10")),
    ]
    out = run(tap, timeline)
    produced = [bool(pdus) for pdus in out]
    assert produced == [
        False,
        True,
        True,
        True,
        True,
        False,
        True,
        False,
        True,
        False,
        True,
        True,
        True,
        True,
        True,
        False,
    ]
    # Each lease change is followed by the report of the frame that showed it.
    start10, end10, start11 = out[4][-2], out[8][-2], out[13][-2]
    for pdus in (out[4], out[8], out[13]):
        shown = parse_frame_message(pdus[-1].signaling_msg[0])
        assert shown is not None and shown.captured == pdus[-2].timestamp
    assert parse_frame_message(out[8][-1].signaling_msg[0]).what == "release"
    assert isinstance(start10, SessionStart) and start10.ip_address.address == A10
    assert isinstance(end10, SessionEnd) and end10.ip_address.address == A10
    assert end10.reason_for_termination.value == "dhcp-release"
    assert end10.packet_data_session_id == start10.packet_data_session_id
    assert isinstance(start11, SessionStart) and start11.ip_address.address == A11
    assert start11.packet_data_session_id != start10.packet_data_session_id
    routed = out[14][0]
    assert routed.header_set.source_ip.address == A11
    assert routed.header_set.source_ip.allocation.value == "dynamic"
    assert tap.counters.access_events == 3


def test_tap_ends_an_expired_lease_before_the_next_frame() -> None:
    tap = Tap.for_warrant(F.warrant(F.TARGET_MAC))
    timeline = [(0.01 * i, f) for i, f in enumerate(exchange("192.0.2.10", lease=60), 1)]
    timeline += [(30, upstream("192.0.2.10")), (70, upstream("192.0.2.10"))]
    out = run(tap, timeline)
    assert len(out[4]) == 2  # header report and CC
    [expired] = out[5]
    assert isinstance(expired, SessionEnd) and expired.timestamp == at(0.04 + 60)
    assert expired.reason_for_termination.value == "lease-expired"


def test_expire_on_a_timer_when_no_frames_come() -> None:
    tap = Tap.for_warrant(F.warrant(F.TARGET_MAC))
    for i, frame in enumerate(exchange("192.0.2.10", lease=60), 1):
        tap.process(frame, at(0.01 * i))
    assert tap.expire(at(59)) == []
    [pdu] = tap.expire(at(61))
    assert isinstance(decode(pdu.der), SessionEnd)


def test_broadcast_answer_is_matched_by_its_client_hardware_address() -> None:
    tap = Tap.for_warrant(F.warrant(F.TARGET_MAC))
    answer = F.dhcp(5, F.TARGET_MAC, yiaddr="192.0.2.10", ciaddr="192.0.2.10", lease=60)
    frame = F.dhcp_frame(answer, from_client=False, dst_mac=F.BROADCAST)
    _report, cc, established, shown = (decode(p.der) for p in tap.process(frame, at(0)))
    assert cc.header.packet_direction.value == "toSubject"
    assert isinstance(established, SessionAlreadyEstablished)
    evidence = parse_frame_message(shown.signaling_msg[0])
    assert evidence.sha256 == hashlib.sha256(frame).hexdigest()
    assert evidence.octets == frame  # a full-content warrant: the frame itself too


def test_an_ip_warrant_does_not_follow_dhcp() -> None:
    tap = Tap.for_warrant(F.warrant("192.0.2.10"))
    assert tap.follower is None
    out = run(tap, [(0.01 * i, f) for i, f in enumerate(exchange("192.0.2.11"), 1)])
    assert out == [[], [], [], []]


def test_a_renewal_is_shown_by_its_frame_but_an_inform_answer_is_not() -> None:
    def ack_frame(address: str, ciaddr: str = "0.0.0.0") -> bytes:
        payload = F.dhcp(5, F.TARGET_MAC, yiaddr=address, ciaddr=ciaddr, lease=3600)
        return F.dhcp_frame(payload, from_client=False, dst_ip="192.0.2.10")

    def frame_reports(pdus: list) -> list:
        reports = [decode(p.der) for p in pdus]
        return [
            parse_frame_message(r.signaling_msg[0])
            for r in reports
            if isinstance(r, AccessSignalingMessageReport)
        ]

    tap = Tap.for_warrant(F.warrant(F.TARGET_MAC))
    assert len(frame_reports(tap.process(ack_frame("192.0.2.10"), at(1)))) == 1  # the lease
    renewal = ack_frame("192.0.2.10", ciaddr="192.0.2.10")
    [evidence] = frame_reports(tap.process(renewal, at(2)))
    assert evidence.what == "ack" and evidence.sha256 == hashlib.sha256(renewal).hexdigest()
    inform_answer = ack_frame("0.0.0.0", ciaddr="192.0.2.10")  # an ACK to an INFORM: no lease
    assert frame_reports(tap.process(inform_answer, at(3))) == []
