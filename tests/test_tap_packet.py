"""mediation/tap/packet.py: the frame parser, on hand-built, sample and random frames."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import test_tap_frames as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from mediation.evidence.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    PcapReader,
)
from mediation.tap.packet import parse_frame

SAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "sample" / "sample.pcap"
LINKTYPES = (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
)


def _tcp_frame(**ip_options: object) -> bytes:
    packet = F.ipv4("192.0.2.10", "203.0.113.80", 6, F.tcp(49152, 80, b"GET"), **ip_options)
    return F.eth(F.GATEWAY_MAC, F.TARGET_MAC, 0x0800, packet)


def test_ethernet_ipv4_tcp() -> None:
    frame = _tcp_frame()
    p = parse_frame(frame)
    assert (p.src_mac, p.dst_mac) == (F.mac(F.TARGET_MAC), F.mac(F.GATEWAY_MAC))
    assert p.vlans == () and p.ethertype == 0x0800 and p.ip_version == 4
    assert p.src_ip == ipaddress.ip_address("192.0.2.10")
    assert p.dst_ip == ipaddress.ip_address("203.0.113.80")
    assert (p.protocol, p.src_port, p.dst_port) == (6, 49152, 80)
    assert (p.ip_offset, p.transport_offset) == (14, 34)
    assert p.ip_length == p.ip_total_length == len(frame) - 14
    assert not p.malformed and p.problem == "" and not p.fragment and not p.truncated


def test_ethernet_padding_is_not_part_of_the_ip_packet() -> None:
    packet = F.ipv4("192.0.2.10", "198.51.100.7", 1, F.icmp(8, 0))
    frame = F.eth(F.GATEWAY_MAC, F.TARGET_MAC, 0x0800, packet) + bytes(60 - 14 - len(packet))
    p = parse_frame(frame)
    assert p.ip_packet(frame) == packet
    assert (p.icmp_type, p.icmp_code, p.src_port) == (8, 0, None)


def test_stacked_vlan_tags() -> None:
    packet = F.ipv4("192.0.2.10", "203.0.113.5", 17, F.udp(50001, 5006, b"x"))
    frame = F.eth(F.GATEWAY_MAC, F.TARGET_MAC, 0x0800, packet, (0x88A8, 200), (0x8100, 100))
    p = parse_frame(frame)
    assert p.vlans == (200, 100) and p.ip_offset == 22
    assert (p.src_port, p.dst_port) == (50001, 5006)
    assert p.ip_packet(frame) == packet


def test_too_many_vlan_tags_is_malformed() -> None:
    frame = F.eth(F.GATEWAY_MAC, F.TARGET_MAC, 0x0800, b"", *[(0x8100, 1)] * 9)
    p = parse_frame(frame)
    assert p.malformed and "VLAN" in p.problem and p.ip_version == 0
    assert p.src_mac == F.mac(F.TARGET_MAC)


def test_ipv4_options_are_skipped() -> None:
    p = parse_frame(_tcp_frame(options=b"\x01\x01\x01\x00"))  # NOP NOP NOP EOL
    assert p.transport_offset == 14 + 24 and (p.src_port, p.dst_port) == (49152, 80)


def test_ipv4_fragments() -> None:
    first = parse_frame(_tcp_frame(flags_fragment=0x2000))  # MF, offset 0
    assert first.fragment and first.fragment_offset == 0 and first.dst_port == 80
    later = parse_frame(_tcp_frame(flags_fragment=185))  # offset 1480, last
    assert later.fragment and later.fragment_offset == 1480
    assert later.src_port is None and not later.malformed
    assert later.src_ip == ipaddress.ip_address("192.0.2.10")


def test_ipv4_total_length_zero_is_segmentation_offload() -> None:
    frame = _tcp_frame(total=0)
    p = parse_frame(frame)
    assert not p.malformed and p.ip_length == len(frame) - 14


def test_ipv4_snap_cut_is_truncated_not_malformed() -> None:
    frame = _tcp_frame()[:-2]
    p = parse_frame(frame)
    assert p.truncated and not p.malformed and p.ip_packet(frame) == frame[14:]


@pytest.mark.parametrize(
    ("first", "total", "problem"),
    [(0x44, None, "header length"), (0x45, 10, "total length"), (0x65, None, "IP version")],
)
def test_bad_ipv4_headers(first: int, total: int | None, problem: str) -> None:
    frame = bytearray(_tcp_frame(total=total))
    frame[14] = first
    p = parse_frame(bytes(frame))
    assert p.malformed and problem in p.problem


def test_ipv6_extension_headers_are_skipped() -> None:
    # hop-by-hop (next: routing), routing (next: destination options), dest (next: UDP)
    payload = F.ext(43) + F.ext(60, bytes(14)) + F.ext(17) + F.udp(53002, 53, b"q")
    packet = F.ipv6("2001:db8::10", "2001:db8::53", 0, payload)
    p = parse_frame(F.eth(F.GATEWAY_MAC, F.TARGET_MAC, 0x86DD, packet))
    assert p.ip_version == 6 and p.protocol == 17 and (p.src_port, p.dst_port) == (53002, 53)
    assert p.transport_offset == 14 + 40 + 8 + 16 + 8 and not p.malformed
    assert p.src_ip == ipaddress.ip_address("2001:db8::10")


def test_ipv6_fragments() -> None:
    def frame(offset: int, more: bool) -> bytes:
        payload = F.frag6(17, offset, more) + F.udp(53002, 53, b"q")
        return F.eth(
            F.GATEWAY_MAC, F.TARGET_MAC, 0x86DD, F.ipv6("2001:db8::10", "2001:db8::53", 44, payload)
        )

    first = parse_frame(frame(0, True))
    assert first.fragment and first.protocol == 17 and first.src_port == 53002
    later = parse_frame(frame(1448, False))
    assert later.fragment and later.fragment_offset == 1448
    assert later.protocol == 17 and later.src_port is None and not later.malformed


def test_icmpv6() -> None:
    packet = F.ipv6("2001:db8::10", "2001:db8::80", 58, F.icmp(128, 0))
    p = parse_frame(F.eth(F.GATEWAY_MAC, F.TARGET_MAC, 0x86DD, packet))
    assert (p.protocol, p.icmp_type, p.icmp_code) == (58, 128, 0)


def test_ipv6_extension_running_past_the_packet_is_malformed() -> None:
    payload = bytes((17, 200)) + bytes(6)  # claims 1608 octets
    frame = F.eth(
        F.GATEWAY_MAC, F.TARGET_MAC, 0x86DD, F.ipv6("2001:db8::10", "2001:db8::53", 0, payload)
    )
    p = parse_frame(frame)
    assert p.malformed and p.src_port is None and p.src_raw is not None


@pytest.mark.parametrize(
    ("linktype", "build"), [(LINKTYPE_LINUX_SLL, F.sll), (LINKTYPE_LINUX_SLL2, F.sll2)]
)
def test_linux_cooked_captures(linktype: int, build: object) -> None:
    packet = F.ipv4("198.51.100.7", "192.0.2.10", 17, F.udp(5004, 50000))
    frame = build(4, F.GATEWAY_MAC, 0x0800, packet)  # type: ignore[operator]
    p = parse_frame(frame, linktype)
    assert p.sll_packet_type == 4 and p.src_mac == F.mac(F.GATEWAY_MAC) and p.dst_mac is None
    assert p.ip_packet(frame) == packet and p.dst_port == 50000


@pytest.mark.parametrize("linktype", [LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6])
def test_raw_ip(linktype: int) -> None:
    v4 = F.ipv4("192.0.2.10", "198.51.100.7", 17, F.udp(1, 2))
    v6 = F.ipv6("2001:db8::10", "2001:db8::53", 17, F.udp(1, 2))
    packet = v6 if linktype == LINKTYPE_IPV6 else v4
    p = parse_frame(packet, linktype)
    assert p.ip_offset == 0 and p.src_mac is None and p.dst_port == 2 and not p.malformed


def test_pppoe_session() -> None:
    packet = F.ipv4("192.0.2.10", "198.51.100.7", 17, F.udp(1, 2))
    pppoe = bytes((0x11, 0)) + (0x1234).to_bytes(2, "big") + (len(packet) + 2).to_bytes(2, "big")
    frame = F.eth(F.GATEWAY_MAC, F.TARGET_MAC, 0x8864, pppoe + b"\x00\x21" + packet)
    p = parse_frame(frame)
    assert p.ip_offset == 22 and p.ip_packet(frame) == packet and p.dst_port == 2


def test_arp_is_not_ip_and_not_malformed() -> None:
    frame = F.eth(F.BROADCAST, F.TARGET_MAC, 0x0806, bytes(28))
    p = parse_frame(frame)
    assert p.ip_version == 0 and p.ethertype == 0x0806 and p.src_raw is None
    assert not p.malformed and p.ip_packet(frame) == b""


def test_unknown_link_type_is_malformed() -> None:
    p = parse_frame(b"\x00" * 40, 9999)
    assert p.malformed and "link type" in p.problem


def test_every_prefix_of_valid_frames_parses() -> None:
    """A frame cut anywhere: never raises, flags what it needed and lacked."""
    frames = [
        _tcp_frame(options=b"\x01\x01\x01\x00"),
        F.eth(
            F.GATEWAY_MAC,
            F.TARGET_MAC,
            0x86DD,
            F.ipv6(
                "2001:db8::10", "2001:db8::53", 0, F.ext(44) + F.frag6(17, 0, True) + F.udp(1, 2)
            ),
        ),
        F.eth(
            F.GATEWAY_MAC,
            F.TARGET_MAC,
            0x0800,
            F.ipv4("192.0.2.10", "198.51.100.7", 1, F.icmp(8, 0)),
            (0x8100, 5),
        ),
    ]
    for frame in frames:
        for cut in range(len(frame)):
            p = parse_frame(frame[:cut])
            assert "internal" not in p.problem
            assert p.length == cut
            if p.src_port is None and p.icmp_type is None:
                assert p.malformed, cut  # it stopped short of the transport header


def test_agrees_with_scapy_on_the_sample() -> None:
    with PcapReader.open(SAMPLE) as reader:
        packets = list(reader)
    for packet in packets:
        p = parse_frame(packet.data)
        ours = (str(p.src_ip), str(p.dst_ip), p.src_port, p.dst_port, p.ip_packet(packet.data))
        s = Ether(packet.data)
        layer = s[IP] if s.haslayer(IP) else s[IPv6]
        l4 = layer.payload
        sport, dport = getattr(l4, "sport", None), getattr(l4, "dport", None)
        assert ours == (layer.src, layer.dst, sport, dport, bytes(layer)), packet.number
        assert not p.malformed


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from((*LINKTYPES, 0, 9999)))
def test_random_octets_never_raise(data: bytes, linktype: int) -> None:
    p = parse_frame(data, linktype)
    assert "internal" not in p.problem
    assert p.ip_offset == -1 or 0 <= p.ip_offset <= len(data)
    assert p.ip_offset + p.ip_length <= len(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_corrupted_real_frames_never_raise(data: st.DataObject) -> None:
    """Valid frames with random octets overwritten reach the deep branches."""
    with PcapReader.open(SAMPLE) as reader:
        frames = [p.data for p in reader]
    frame = bytearray(data.draw(st.sampled_from(frames)))
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(frame) - 1))
        frame[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    p = parse_frame(bytes(frame[:cut]))
    assert "internal" not in p.problem
    assert p.ip_offset + p.ip_length <= cut


def test_ipv6_authentication_header_is_skipped() -> None:
    # next header, length in 4-octet units minus 2, reserved, SPI, sequence, 12-octet ICV
    ah = bytes((6, 4, 0, 0)) + (0x100).to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes(12)
    packet = F.ipv6("2001:db8::10", "2001:db8::80", 51, ah + F.tcp(49152, 443))
    p = parse_frame(F.eth(F.GATEWAY_MAC, F.TARGET_MAC, 0x86DD, packet))
    assert (p.protocol, p.transport_offset, p.dst_port) == (6, 14 + 40 + 24, 443)
