"""mediation/tap/targets.py: which frames are the target's, and which way."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
import test_tap_frames as F

from mediation.tap.packet import LINKTYPE_LINUX_SLL, parse_frame
from mediation.tap.targets import Direction, TargetMatcher, mac_octets
from mediation.warrants.model import ContentLevel, Target, TargetKind, Warrant

FROM, TO = Direction.FROM_SUBJECT, Direction.TO_SUBJECT


def matcher(*texts: str) -> TargetMatcher:
    targets = []
    for text in texts:
        if text.startswith("iface:"):
            targets.append(Target(TargetKind.INTERFACE, text[6:]))
        elif text.count(":") == 5 and "." not in text and len(text) == 17:
            targets.append(Target(TargetKind.MAC, text))
        elif "/" in text:
            targets.append(Target(TargetKind.PREFIX, text))
        else:
            targets.append(Target(TargetKind.ADDRESS, text))
    return TargetMatcher(targets)


def v4(src: str, dst: str, *, smac: str = F.OTHER_MAC, dmac: str = F.GATEWAY_MAC) -> object:
    return parse_frame(F.eth(dmac, smac, 0x0800, F.ipv4(src, dst, 17, F.udp(1, 2))))


def v6(src: str, dst: str) -> object:
    packet = F.ipv6(src, dst, 17, F.udp(1, 2))
    return parse_frame(F.eth(F.GATEWAY_MAC, F.OTHER_MAC, 0x86DD, packet))


def test_mac_either_side() -> None:
    m = matcher(F.TARGET_MAC)
    assert m.match(v4("192.0.2.20", "198.51.100.7", smac=F.TARGET_MAC)) is FROM
    assert m.match(v4("198.51.100.7", "192.0.2.20", dmac=F.TARGET_MAC)) is TO
    assert m.match(v4("192.0.2.20", "198.51.100.7")) is None


def test_mac_catches_frames_without_ip() -> None:
    arp = parse_frame(F.eth(F.BROADCAST, F.TARGET_MAC, 0x0806, bytes(28)))
    assert matcher(F.TARGET_MAC).match(arp) is FROM
    assert matcher("192.0.2.10").match(arp) is None


def test_a_broadcast_from_someone_else_is_not_the_target() -> None:
    frame = v4("192.0.2.20", "255.255.255.255", dmac=F.BROADCAST)
    assert matcher(F.TARGET_MAC, "192.0.2.10").match(frame) is None


def test_addresses_both_families() -> None:
    m = matcher("192.0.2.10", "2001:db8:0:1::10")
    assert m.match(v4("192.0.2.10", "198.51.100.7")) is FROM
    assert m.match(v4("198.51.100.7", "192.0.2.10")) is TO
    assert m.match(v6("2001:db8:0:2::53", "2001:db8:0:1::10")) is TO
    assert m.match(v4("192.0.2.11", "198.51.100.7")) is None
    assert m.match(v6("2001:db8:0:1::11", "2001:db8:0:2::53")) is None


def test_target_on_both_ends_is_from_the_subject() -> None:
    assert matcher("192.0.2.10", "192.0.2.11").match(v4("192.0.2.11", "192.0.2.10")) is FROM


def test_prefixes() -> None:
    m = matcher("198.51.100.0/25", "2001:db8:5::/48")
    assert m.match(v4("198.51.100.127", "203.0.113.5")) is FROM
    assert m.match(v4("203.0.113.5", "198.51.100.1")) is TO
    assert m.match(v4("203.0.113.5", "198.51.100.128")) is None
    assert m.match(v6("2001:db8:5:ffff::1", "2001:db8::1")) is FROM
    assert m.match(v6("2001:db8::1", "2001:db8:6::1")) is None


def test_an_ipv4_prefix_never_matches_ipv6() -> None:
    # ::c633:6400 has the same low 32 bits as 198.51.100.0
    assert matcher("198.51.100.0/24").match(v6("::c633:6401", "2001:db8::1")) is None


def test_interface_with_and_without_capture_direction() -> None:
    m = matcher("iface:eth1")
    frame = v4("192.0.2.20", "198.51.100.7")
    assert m.match(frame, "eth1") is Direction.UNKNOWN
    assert m.match(frame, "eth0") is None and m.match(frame) is None
    packet = F.ipv4("198.51.100.7", "192.0.2.10", 17, F.udp(1, 2))
    out = parse_frame(F.sll(4, F.GATEWAY_MAC, 0x0800, packet), LINKTYPE_LINUX_SLL)
    into = parse_frame(F.sll(0, F.TARGET_MAC, 0x0800, packet), LINKTYPE_LINUX_SLL)
    assert (m.match(out, "eth1"), m.match(into, "eth1")) == (TO, FROM)


def test_following_adds_and_removes_learned_addresses_only() -> None:
    m = matcher(F.TARGET_MAC, "192.0.2.10")
    frame = v4("192.0.2.11", "198.51.100.7")
    assert m.match(frame) is None
    m.follow(ipaddress.ip_address("192.0.2.11"))
    assert m.match(frame) is FROM and m.is_learned(ipaddress.ip_address("192.0.2.11").packed)
    m.unfollow(ipaddress.ip_address("192.0.2.11"))
    assert m.match(frame) is None
    m.follow(ipaddress.ip_address("192.0.2.10"))  # listed by the warrant and leased
    assert not m.is_learned(ipaddress.ip_address("192.0.2.10").packed)
    m.unfollow(ipaddress.ip_address("192.0.2.10"))
    assert m.match(v4("192.0.2.10", "198.51.100.7")) is FROM  # the warrant still lists it


def test_from_warrant_needs_details() -> None:
    t = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    warrant = Warrant("w-000001", "a-1", ContentLevel.HEADERS, t, t, t, t)
    with pytest.raises(ValueError, match="w-000001"):
        TargetMatcher.from_warrant(warrant)


def test_mac_octets() -> None:
    assert mac_octets("02-00-5E-00-53-01") == F.mac(F.TARGET_MAC)
    with pytest.raises(ValueError):
        mac_octets("02:00:5e:00:53")


def test_an_unreadable_target_is_named_by_position_not_value() -> None:
    with pytest.raises(ValueError) as caught:
        TargetMatcher(
            [Target(TargetKind.MAC, F.TARGET_MAC), Target(TargetKind.ADDRESS, "192.0.2.999")]
        )
    assert "target 2 (address)" in str(caught.value) and "192.0.2" not in str(caught.value)


def test_frames_in_a_bytearray_match_like_bytes() -> None:
    frame = F.eth(
        F.GATEWAY_MAC, F.TARGET_MAC, 0x0800, F.ipv4("192.0.2.10", "198.51.100.7", 17, F.udp(1, 2))
    )
    m = matcher(F.TARGET_MAC, "192.0.2.10")
    assert m.match(parse_frame(bytearray(frame))) is FROM
    assert m.match(parse_frame(memoryview(frame))) is FROM
