"""Hand-built frames (and warrants) for the tap tests; scapy checks the frames.

The other tests/test_tap_*.py import the builders from here. They use
struct alone, so a frame is exactly the octets written (checksums are left
zero: nothing in the tap reads them). Only documentation addresses.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import struct

from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

from mediation.warrants.model import CaseDetails, ContentLevel, Target, TargetKind, Warrant
from mediation.warrants.target_text import parse_target

TARGET_MAC = "02:00:5e:00:53:01"
OTHER_MAC = "02:00:5e:00:53:02"
GATEWAY_MAC = "02:00:5e:00:53:fe"
UPSTREAM_MAC = "02:00:5e:00:53:fd"
BROADCAST = "ff:ff:ff:ff:ff:ff"


WINDOW = (dt.datetime(2026, 11, 1, tzinfo=dt.UTC), dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
T0 = dt.datetime(2026, 11, 23, 0, 11, 0, tzinfo=dt.UTC)


def warrant(
    *targets: str,
    handle: str = "w-0a0001",
    case_id: str = "CASE-0001",
    content: ContentLevel = ContentLevel.FULL,
    iap: str | None = "IAP-0001",
    window: tuple[dt.datetime, dt.datetime] = WINDOW,
) -> Warrant:
    """An active warrant with loaded details; targets as ``mediate add`` takes them."""
    parsed: tuple[Target, ...] = tuple(parse_target(t) for t in targets)
    assert all(isinstance(t.kind, TargetKind) for t in parsed)
    details = CaseDetails(case_id, parsed, iap=iap)
    start, end = window
    return Warrant(handle, "a-0001", content, start, end, start, start, details=details)


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def eth(dst: str, src: str, ethertype: int, payload: bytes, *tags: tuple[int, int]) -> bytes:
    """Ethernet II; ``tags`` are ``(tpid, vlan id)`` pairs, outermost first."""
    head = mac(dst) + mac(src)
    for tpid, vid in tags:
        head += struct.pack(">HH", tpid, vid)
    return head + struct.pack(">H", ethertype) + payload


def ipv4(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    *,
    options: bytes = b"",
    flags_fragment: int = 0,
    ident: int = 1,
    total: int | None = None,
) -> bytes:
    """An IPv4 packet; ``flags_fragment`` is the raw flags + offset field."""
    ihl = 5 + len(options) // 4
    length = 20 + len(options) + len(payload) if total is None else total
    header = struct.pack(
        ">BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        length,
        ident,
        flags_fragment,
        64,
        proto,
        0,
        ip(src),
        ip(dst),
    )
    return header + options + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes) -> bytes:
    """An IPv6 packet; ``payload`` includes any extension headers."""
    return (
        struct.pack(">IHBB", 6 << 28, len(payload), next_header, 64) + ip(src) + ip(dst) + payload
    )


def ext(next_header: int, body: bytes = b"\x00" * 6) -> bytes:
    """An IPv6 option-style extension header (hop-by-hop, routing, dest options)."""
    assert (len(body) + 2) % 8 == 0
    return bytes((next_header, (len(body) + 2) // 8 - 1)) + body


def frag6(next_header: int, offset: int, more: bool, ident: int = 7) -> bytes:
    return struct.pack(">BBHI", next_header, 0, offset | int(more), ident)


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport: int, dport: int, payload: bytes = b"", flags: int = 0x18) -> bytes:
    return struct.pack(">HHIIBBHHH", sport, dport, 1, 1, 0x50, flags, 64240, 0, 0) + payload


def icmp(kind: int, code: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BBHHH", kind, code, 0, 1, 1) + payload


def sll(packet_type: int, src: str, protocol: int, payload: bytes) -> bytes:
    """Linux cooked capture (SLL, link type 113)."""
    return struct.pack(">HHH8sH", packet_type, 1, 6, mac(src) + b"\x00\x00", protocol) + payload


def sll2(packet_type: int, src: str, protocol: int, payload: bytes) -> bytes:
    """Linux cooked capture v2 (SLL2, link type 276)."""
    address = mac(src) + b"\x00\x00"
    return struct.pack(">HHIHBB8s", protocol, 0, 3, 1, packet_type, 6, address) + payload


def dhcp(
    kind: int,
    chaddr: str,
    *,
    op: int | None = None,
    yiaddr: str = "0.0.0.0",
    ciaddr: str = "0.0.0.0",
    lease: int | None = None,
    server: str | None = None,
    requested: str | None = None,
    mask: str | None = None,
    client_id: bytes | None = None,
    xid: int = 0x3903F326,
) -> bytes:
    """A DHCP message (the UDP payload): BOOTP header, cookie, options."""
    if op is None:
        op = 2 if kind in (2, 5, 6) else 1
    header = struct.pack(
        ">BBBBIHH4s4s4s4s16s",
        op,
        1,
        6,
        0,
        xid,
        0,
        0,
        ip(ciaddr),
        ip(yiaddr),
        bytes(4),
        bytes(4),
        mac(chaddr) + bytes(10),
    )
    options = bytes((53, 1, kind))
    if requested:
        options += bytes((50, 4)) + ip(requested)
    if lease is not None:
        options += bytes((51, 4)) + lease.to_bytes(4, "big")
    if server:
        options += bytes((54, 4)) + ip(server)
    if mask:
        options += bytes((1, 4)) + ip(mask)
    if client_id is not None:
        options += bytes((61, len(client_id))) + client_id
    return header + bytes(192) + b"\x63\x82\x53\x63" + options + b"\xff"


def dhcp_frame(
    payload: bytes,
    *,
    from_client: bool,
    dst_mac: str = TARGET_MAC,
    dst_ip: str = "255.255.255.255",
    src_ip: str = "0.0.0.0",
) -> bytes:
    """A DHCP message on the wire: client 68 -> server 67, or back."""
    if from_client:
        packet = ipv4(src_ip, dst_ip, 17, udp(68, 67, payload))
        return eth(BROADCAST, TARGET_MAC, 0x0800, packet)
    packet = ipv4("192.0.2.1", dst_ip, 17, udp(67, 68, payload))
    return eth(dst_mac, GATEWAY_MAC, 0x0800, packet)


# The builders, read back by scapy -----------------------------------------------


def test_tagged_tcp_frame_reads_in_scapy() -> None:
    frame = eth(
        GATEWAY_MAC,
        TARGET_MAC,
        0x0800,
        ipv4("192.0.2.10", "203.0.113.80", 6, tcp(49152, 80, b"data")),
        (0x88A8, 200),
        (0x8100, 100),
    )
    packet = Ether(frame)
    assert packet.src == TARGET_MAC
    assert (packet[Dot1AD].vlan, packet[Dot1Q].vlan) == (200, 100)
    assert packet[IP].src == "192.0.2.10" and packet[TCP].dport == 80


def test_ipv6_extension_frame_reads_in_scapy() -> None:
    payload = ext(44) + frag6(17, 0, True) + udp(53002, 53, b"q")
    frame = eth(GATEWAY_MAC, TARGET_MAC, 0x86DD, ipv6("2001:db8::10", "2001:db8::53", 0, payload))
    packet = Ether(frame)
    assert packet.haslayer(IPv6ExtHdrHopByHop) and packet.haslayer(IPv6ExtHdrFragment)
    assert packet[UDP].sport == 53002


def test_dhcp_builder_reads_in_scapy() -> None:
    payload = dhcp(5, TARGET_MAC, yiaddr="192.0.2.10", lease=60, server="192.0.2.1")
    frame = dhcp_frame(payload, from_client=False, dst_ip="192.0.2.10")
    packet = Ether(frame)
    assert packet[BOOTP].yiaddr == "192.0.2.10"
    options = dict(o for o in packet[DHCP].options if isinstance(o, tuple))
    assert options["message-type"] == 5 and options["lease_time"] == 60
