"""A fast, forgiving frame parser: link layer (``link_layer.py``), IP and transport headers.

Written with :mod:`struct` and slicing, not scapy (which parses some
10,000 packets a second): the tap parses every frame on the wire, target
or not, so this is the tap's hot path.

Understands Ethernet II with any number of 802.1Q / 802.1ad tags (and
PPPoE session frames, the DSL access case), Linux cooked captures (SLL and
SLL2) and raw IPv4/IPv6; IPv4 with options and fragments; IPv6 behind its
common extension headers (hop-by-hop, routing, fragment, destination
options, authentication, mobility); TCP/UDP/SCTP/DCCP ports; ICMP and
ICMPv6 type and code.

It never raises on a bad frame: :func:`parse_frame` returns what it could
read, with ``malformed`` set and ``problem`` saying what was wrong.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from mediation.evidence.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_RAW,
)
from mediation.tap.link_layer import ETH_IPV4, ETH_IPV6, TWO_U16, U16, Link, read_link

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
# Transports whose first four octets are the source and destination ports.
PORT_PROTOCOLS = frozenset((PROTO_TCP, PROTO_UDP, 33, 132, 136))  # + DCCP, SCTP, UDP-Lite
ICMP_PROTOCOLS = frozenset((PROTO_ICMP, PROTO_ICMPV6))

# IPv6 extension headers sized (length + 1) * 8: hop-by-hop, routing,
# destination options, mobility, HIP, shim6. Fragment (44) is always 8
# octets and authentication (51) is (length + 2) * 4.
_IPV6_OPTION_HEADERS = frozenset((0, 43, 60, 135, 139, 140))
_IPV6_FRAGMENT = 44
_IPV6_AH = 51
_MAX_IPV6_EXTENSIONS = 8

# The common frame in one read: untagged Ethernet II, an IPv4 header of 20
# octets, then ports (see _common): dst, src, ethertype, version+IHL, total
# length, flags+fragment offset, protocol, addresses, ports.
_COMMON = struct.Struct(">6s6sHBxH2xHxB2x4s4sHH")

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


class ParsedFrame(NamedTuple):
    """What one frame holds, as far as it could be read.

    A NamedTuple rather than a frozen dataclass: it is just as immutable and
    builds six times faster, which matters once per frame on the wire.
    Addresses are kept packed (``src_raw``/``dst_raw``, 4 or 16 octets) so
    that matching is a set lookup; ``src_ip``/``dst_ip`` make the
    :mod:`ipaddress` objects on demand. Offsets are into the frame; ``-1``
    means "not present".
    """

    linktype: int
    length: int  # octets captured
    src_mac: bytes | None  # 6 octets (for SLL: the sender's link address)
    dst_mac: bytes | None
    vlans: tuple[int, ...]  # VLAN ids, outermost first
    ethertype: int  # after any tags; below 0x0600 an 802.3 length (LLC), 0 if unknown
    sll_packet_type: int | None  # Linux PACKET_*: 0 to us .. 4 outgoing; None if not SLL
    ip_version: int  # 4, 6, or 0 when no IP header was read
    ip_offset: int  # where the IP header starts
    ip_length: int  # octets of the IP packet present (padding and snap cut excluded)
    ip_total_length: int  # octets the IP header announced
    src_raw: bytes | None
    dst_raw: bytes | None
    protocol: int  # upper-layer protocol after IPv6 extensions; -1 if none
    transport_offset: int
    src_port: int | None
    dst_port: int | None
    icmp_type: int | None
    icmp_code: int | None
    fragment: bool  # part of a fragmented datagram
    fragment_offset: int  # in octets; only the first fragment (0) has ports
    malformed: bool
    problem: str  # why it is malformed; "" when it is not

    @property
    def src_ip(self) -> IPAddr | None:
        """The source address as an :mod:`ipaddress` object."""
        return _address(self.src_raw)

    @property
    def dst_ip(self) -> IPAddr | None:
        """The destination address as an :mod:`ipaddress` object."""
        return _address(self.dst_raw)

    @property
    def truncated(self) -> bool:
        """Fewer octets of the IP packet were captured than it announced."""
        return self.ip_version != 0 and self.ip_length < self.ip_total_length

    def ip_packet(self, frame: bytes) -> bytes:
        """The IP packet of ``frame`` (this record's frame), from its header on.

        Ethernet padding after the packet is left out; a packet cut by the
        capture's snap length is returned as captured. Empty if not IP.
        """
        if self.ip_offset < 0:
            return b""
        return frame[self.ip_offset : self.ip_offset + self.ip_length]


def _address(raw: bytes | None) -> IPAddr | None:
    if raw is None:
        return None
    return ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)


def parse_frame(frame: bytes, linktype: int = LINKTYPE_ETHERNET) -> ParsedFrame:
    """Parse one captured frame. Never raises.

    Args:
        frame: the captured octets (a bytearray or memoryview is copied).
        linktype: the capture's link type (``LINKTYPE_*``: Ethernet, raw IP,
            IPv4, IPv6, Linux SLL or SLL2).

    Returns:
        A :class:`ParsedFrame`. A frame cut short or inconsistent has
        ``malformed`` set and says why in ``problem``; every field read
        before the fault is filled in.
    """
    if frame.__class__ is not bytes:
        # Slices of a bytearray or memoryview are not hashable, and the
        # matcher looks addresses up in sets.
        frame = bytes(frame)
    if linktype == LINKTYPE_ETHERNET:
        common = _common(frame)
        if common is not None:
            return common
    return _general(frame, linktype)


def _general(frame: bytes, linktype: int) -> ParsedFrame:
    """:func:`parse_frame` for any frame (bytes), field by field."""
    try:
        link = read_link(frame, linktype)
        if link.problem:
            return _no_ip(frame, linktype, link, link.problem)
        if link.ethertype == ETH_IPV4:
            return _ipv4(frame, linktype, link)
        if link.ethertype == ETH_IPV6:
            return _ipv6(frame, linktype, link)
        return _no_ip(frame, linktype, link, "")
    except Exception as exc:  # the parsers check every bound; this is a last guard
        problem = f"internal parser error: {type(exc).__name__}"
        return _no_ip(frame, linktype, Link(None, None, (), 0, -1, None, problem), problem)


def _common(frame: bytes) -> ParsedFrame | None:
    """The most common frame read in one go, or None to take the general path.

    Untagged Ethernet II carrying a whole 20-octet IPv4 header, not a
    fragment, then the ports of a port protocol: what nearly every frame of
    a busy link is. The result is the one the general path gives
    (tests/test_tap_packet_common.py proves it on any frame), in one
    unpack instead of four calls and two intermediate records.
    """
    n = len(frame)
    if n < 38:
        return None
    dst_mac, src_mac, ethertype, first, total, flags, protocol, src, dst, sport, dport = (
        _COMMON.unpack_from(frame)
    )
    if ethertype != ETH_IPV4 or first != 0x45 or flags & 0x3FFF or protocol not in PORT_PROTOCOLS:
        return None
    avail = n - 14
    if total == 0:
        total = avail  # sent with TCP segmentation offload: the NIC fills it in
    ip_length = total if total < avail else avail
    if ip_length < 24:  # a short total length: no room for the ports (or a malformed header)
        return None
    return _new_tuple(ParsedFrame, (  # ParsedFrame(...) without its Python-level __new__
        LINKTYPE_ETHERNET, n, src_mac, dst_mac, (), ETH_IPV4, None, 4, 14, ip_length, total,
        src, dst, protocol, 34, sport, dport, None, None, False, 0, False, "",
    ))  # fmt: skip


_new_tuple = tuple.__new__


def ipv4_addresses(frame: bytes, linktype: int = LINKTYPE_ETHERNET) -> tuple[bytes, bytes] | None:
    """A prefilter's look at a frame: its IPv4 source and destination, without parsing it.

    Only for the common case, read at fixed offsets: untagged Ethernet II
    (or raw IP) carrying an IPv4 header that is all there. Any other frame
    (tagged, IPv6, ARP, short) gives ``None``: parse it.

    Returns:
        The packed source and destination, or None.
    """
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[14] >> 4 != 4:
            return None
        return frame[26:30], frame[30:34]
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4):
        if len(frame) < 20 or frame[0] >> 4 != 4:
            return None
        return frame[12:16], frame[16:20]
    return None


def _no_ip(frame: bytes, linktype: int, link: Link, problem: str) -> ParsedFrame:
    return ParsedFrame(
        linktype, len(frame), link.src_mac, link.dst_mac, link.vlans, link.ethertype,
        link.sll_packet_type, 0, -1, 0, 0, None, None, -1, -1, None, None, None, None,
        False, 0, bool(problem), problem,
    )  # fmt: skip


def _ipv4(frame: bytes, linktype: int, link: Link) -> ParsedFrame:
    pos, n = link.offset, len(frame)
    avail = n - pos
    if avail < 20:
        return _no_ip(frame, linktype, link, "truncated IPv4 header")
    first = frame[pos]
    if first >> 4 != 4:
        return _no_ip(frame, linktype, link, f"IP version {first >> 4} in an IPv4 frame")
    header_len = (first & 0x0F) * 4
    total = U16.unpack_from(frame, pos + 2)[0]
    if total == 0:
        total = avail  # sent with TCP segmentation offload: the NIC fills it in
    flags = U16.unpack_from(frame, pos + 6)[0]
    frag_offset = (flags & 0x1FFF) * 8
    fragment = bool(frag_offset or flags & 0x2000)
    protocol = frame[pos + 9]
    src, dst = frame[pos + 12 : pos + 16], frame[pos + 16 : pos + 20]
    problem = ""
    if header_len < 20:
        problem = f"IPv4 header length {header_len}"
    elif total < header_len:
        problem = f"IPv4 total length {total} shorter than its header"
    elif avail < header_len:
        problem = "truncated IPv4 options"
    ip_length = min(total, avail)
    if problem:
        return ParsedFrame(
            linktype, n, link.src_mac, link.dst_mac, link.vlans, link.ethertype,
            link.sll_packet_type, 4, pos, ip_length, total, src, dst, protocol, -1,
            None, None, None, None, fragment, frag_offset, True, problem,
        )  # fmt: skip
    return _transport(
        frame, linktype, link, 4, ip_length, total, src, dst, protocol,
        pos + header_len, pos + ip_length, fragment, frag_offset, "",
    )  # fmt: skip


def _ipv6(frame: bytes, linktype: int, link: Link) -> ParsedFrame:
    pos, n = link.offset, len(frame)
    avail = n - pos
    if avail < 40:
        return _no_ip(frame, linktype, link, "truncated IPv6 header")
    if frame[pos] >> 4 != 6:
        return _no_ip(frame, linktype, link, f"IP version {frame[pos] >> 4} in an IPv6 frame")
    payload_len = U16.unpack_from(frame, pos + 4)[0]
    header = frame[pos + 6]
    total = 40 + payload_len
    if payload_len == 0 and header == 0:
        total = avail  # a jumbogram: its length is in a hop-by-hop option
    ip_length = min(total, avail)
    end = pos + ip_length
    src, dst = frame[pos + 8 : pos + 24], frame[pos + 24 : pos + 40]
    at, fragment, frag_offset, problem = pos + 40, False, 0, ""
    for _ in range(_MAX_IPV6_EXTENSIONS):
        if header in _IPV6_OPTION_HEADERS or header == _IPV6_AH:
            if end < at + 2:
                problem = "truncated IPv6 extension header"
                break
            size = (frame[at + 1] + 2) * 4 if header == _IPV6_AH else (frame[at + 1] + 1) * 8
        elif header == _IPV6_FRAGMENT:
            if end < at + 8:
                problem = "truncated IPv6 fragment header"
                break
            field = U16.unpack_from(frame, at + 2)[0]
            frag_offset, fragment, size = field & 0xFFF8, True, 8
        else:
            break
        header = frame[at]
        at += size
    else:
        problem = "too many IPv6 extension headers"
    return _transport(
        frame, linktype, link, 6, ip_length, total, src, dst, header, at, end,
        fragment, frag_offset, problem,
    )  # fmt: skip


def _transport(
    frame: bytes,
    linktype: int,
    link: Link,
    version: int,
    ip_length: int,
    total: int,
    src: bytes,
    dst: bytes,
    protocol: int,
    at: int,
    end: int,
    fragment: bool,
    frag_offset: int,
    problem: str,
) -> ParsedFrame:
    """Ports or ICMP type/code at ``at``, unless a later fragment or a fault."""
    sport = dport = itype = icode = None
    if problem or at > end:
        problem = problem or "IP header runs past the packet"
        at = -1
    elif frag_offset:
        pass  # a later fragment: its first octets are data, not a header
    elif protocol in PORT_PROTOCOLS:
        if end >= at + 4:
            sport, dport = TWO_U16.unpack_from(frame, at)
        else:
            problem = "truncated transport header"
    elif protocol in ICMP_PROTOCOLS:
        if end >= at + 2:
            itype, icode = frame[at], frame[at + 1]
        else:
            problem = "truncated ICMP header"
    return ParsedFrame(
        linktype, len(frame), link.src_mac, link.dst_mac, link.vlans, link.ethertype,
        link.sll_packet_type, version, link.offset, ip_length, total, src, dst, protocol,
        at, sport, dport, itype, icode, fragment, frag_offset, bool(problem), problem,
    )  # fmt: skip
