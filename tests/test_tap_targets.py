"""mediation/tap/targets.py: which frames are the target's, and which way."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
import test_tap_frames as F

from mediation.evidence.pcap import LINKTYPE_LINUX_SLL
from mediation.tap.packet import parse_frame
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


# Scoping and ARP ------------------------------------------------------------------


def scoped(*texts: str) -> TargetMatcher:
    from mediation.warrants.target_text import parse_target

    return TargetMatcher([parse_target(t) for t in texts])


def tagged(src: str, dst: str, *vlans: int, smac: str = F.OTHER_MAC) -> object:
    packet = F.ipv4(src, dst, 17, F.udp(1, 2))
    tags = [(0x8100, vid) for vid in vlans]
    return parse_frame(F.eth(F.GATEWAY_MAC, smac, 0x0800, packet, *tags))


def test_a_vlan_scoped_address_matches_only_in_that_vlan() -> None:
    m = scoped("192.0.2.20@vlan:100")
    assert m.match(tagged("192.0.2.20", "198.51.100.7", 100)) is FROM
    assert m.match(tagged("198.51.100.7", "192.0.2.20", 100)) is TO
    assert m.match(tagged("192.0.2.20", "198.51.100.7", 200)) is None  # another subscriber
    assert m.match(tagged("192.0.2.20", "198.51.100.7")) is None  # untagged
    assert m.match(tagged("192.0.2.20", "198.51.100.7", 200, 100)) is None  # outermost decides
    assert m.match(tagged("192.0.2.20", "198.51.100.7", 100, 7)) is FROM


def test_an_interface_scope_and_a_vlan_scope_must_both_hold() -> None:
    m = scoped("192.0.2.20@vlan:100@iface:eth1")
    frame = tagged("192.0.2.20", "198.51.100.7", 100)
    assert m.match(frame, "eth1") is FROM
    assert m.match(frame, "eth2") is None and m.match(frame) is None
    assert m.match(tagged("192.0.2.20", "198.51.100.7", 200), "eth1") is None


def test_scoped_macs_and_prefixes() -> None:
    m = scoped(f"{F.TARGET_MAC}@iface:eth1", "198.51.100.0/24@vlan:5")
    assert m.match(tagged("192.0.2.1", "192.0.2.2", smac=F.TARGET_MAC), "eth1") is FROM
    assert m.match(tagged("192.0.2.1", "192.0.2.2", smac=F.TARGET_MAC), "eth0") is None
    assert m.match(tagged("203.0.113.1", "198.51.100.9", 5)) is TO
    assert m.match(tagged("203.0.113.1", "198.51.100.9", 6)) is None


def test_unscoped_targets_still_match_everywhere_beside_scoped_ones() -> None:
    m = scoped("192.0.2.10", "192.0.2.20@vlan:100")
    assert m.match(tagged("192.0.2.10", "198.51.100.7", 300), "eth9") is FROM
    assert m.match(tagged("192.0.2.20", "198.51.100.7", 300)) is None


def test_a_vlan_scoped_interface_target() -> None:
    m = scoped("iface:eth1@vlan:100")
    assert m.match(tagged("192.0.2.20", "198.51.100.7", 100), "eth1") is Direction.UNKNOWN
    assert m.match(tagged("192.0.2.20", "198.51.100.7", 100), "eth1", outgoing=True) is TO
    assert m.match(tagged("192.0.2.20", "198.51.100.7", 200), "eth1") is None


def arp_frame(sender: str, target: str, *vlans: int) -> bytes:
    body = bytes.fromhex("0001080006040001") + F.mac(F.OTHER_MAC) + F.ip(sender)
    tags = [(0x8100, vid) for vid in vlans]
    return F.eth(F.BROADCAST, F.OTHER_MAC, 0x0806, body + bytes(6) + F.ip(target), *tags)


def test_an_ip_target_matches_arp_sent_by_or_for_it() -> None:
    m = matcher("192.0.2.10")
    sent, asked = arp_frame("192.0.2.10", "192.0.2.1"), arp_frame("192.0.2.1", "192.0.2.10")
    assert m.match(parse_frame(sent), raw=sent) is FROM
    assert m.match(parse_frame(asked), raw=asked) is TO
    other = arp_frame("192.0.2.11", "192.0.2.1")
    assert m.match(parse_frame(other), raw=other) is None
    assert m.match(parse_frame(sent)) is None  # without the octets, ARP matches by MAC only


def test_a_prefix_and_a_scope_apply_to_arp_too() -> None:
    m = scoped("192.0.2.0/28", "198.51.100.20@vlan:100")
    sent = arp_frame("192.0.2.5", "192.0.2.1")
    assert m.match(parse_frame(sent), raw=sent) is FROM
    in_vlan, other_vlan = (
        arp_frame("198.51.100.20", "198.51.100.1", 100),
        arp_frame("198.51.100.20", "198.51.100.1", 200),
    )
    assert m.match(parse_frame(in_vlan), raw=in_vlan) is FROM
    assert m.match(parse_frame(other_vlan), raw=other_vlan) is None


def test_arp_that_is_not_ethernet_and_ipv4_is_not_read() -> None:
    odd = bytearray(arp_frame("192.0.2.10", "192.0.2.1"))
    odd[16:18] = b"\x86\xdd"  # protocol type IPv6: the addresses are not IPv4
    assert matcher("192.0.2.10").match(parse_frame(bytes(odd)), raw=bytes(odd)) is None


def test_a_scoped_mac_follows_dhcp_only_in_its_scope() -> None:
    from mediation.tap.replay import Tap

    w = F.warrant(f"{F.TARGET_MAC}@vlan:100")
    tap = Tap.for_warrant(w)
    t = F.T0

    def ack(vlan: int) -> bytes:
        payload = F.dhcp(5, F.TARGET_MAC, yiaddr="192.0.2.50", lease=3600, server="192.0.2.1")
        packet = F.ipv4("192.0.2.1", "255.255.255.255", 17, F.udp(67, 68, payload))
        return F.eth(F.BROADCAST, F.GATEWAY_MAC, 0x0800, packet, (0x8100, vlan))

    def routed(vlan: int) -> bytes:
        packet = F.ipv4("192.0.2.50", "203.0.113.5", 17, F.udp(1, 2))
        return F.eth(F.UPSTREAM_MAC, F.GATEWAY_MAC, 0x0800, packet, (0x8100, vlan))

    assert tap.process(ack(200), t) == []  # the same MAC in another VLAN: not the target
    assert tap.counters.access_events == 0
    assert tap.process(routed(100), t) == []  # nothing learned yet
    assert len(tap.process(ack(100), t)) >= 2  # its header report(s), then session-Start
    assert tap.counters.access_events == 1
    assert tap.process(routed(100), t)  # the learned address, in its VLAN
    assert tap.process(routed(200), t) == []  # the same address in another VLAN
