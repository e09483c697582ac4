"""The link layer of a captured frame: Ethernet, VLAN tags, PPPoE, Linux SLL/SLL2, raw IP.

Where the network layer starts and what it is, for the frame parser
(:mod:`mediation.tap.packet`, the tap's hot path: plain functions and
:class:`struct` reads, never raising on a bad frame), and ARP's addresses.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, NamedTuple

from mediation.evidence.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
)

if TYPE_CHECKING:
    from mediation.tap.packet import ParsedFrame

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_ARP = 0x0806
ETH_PPPOE_SESSION = 0x8864
VLAN_TYPES = frozenset((0x8100, 0x88A8, 0x9100))
MAX_VLAN_TAGS = 8  # more than any real network stacks; bounds the loop on junk

# PPP protocol numbers inside a PPPoE session frame -> the Ethernet type.
_PPP_TO_ETHERTYPE = {0x0021: ETH_IPV4, 0x0057: ETH_IPV6}

U16 = struct.Struct(">H")
TWO_U16 = struct.Struct(">HH")
_SLL = struct.Struct(">HHH8sH")  # packet type, ARPHRD type, address length, address, protocol
_SLL2 = struct.Struct(">HHIHBB8s")  # protocol, reserved, ifindex, ARPHRD, packet type, len, addr


class Link(NamedTuple):
    """The link layer's result: where the network layer starts and what it is."""

    src_mac: bytes | None
    dst_mac: bytes | None
    vlans: tuple[int, ...]
    ethertype: int
    offset: int
    sll_packet_type: int | None
    problem: str


def read_link(frame: bytes, linktype: int) -> Link:
    """The link layer of ``frame`` (by its link type), stepping over any VLAN tags and PPPoE."""
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            return Link(None, None, (), 0, -1, None, "truncated Ethernet header")
        ethertype = U16.unpack_from(frame, 12)[0]
        return _tags(frame, frame[6:12], frame[0:6], ethertype, 14, None)
    if linktype == LINKTYPE_LINUX_SLL:
        if len(frame) < 16:
            return Link(None, None, (), 0, -1, None, "truncated Linux SLL header")
        packet_type, _hatype, halen, address, ethertype = _SLL.unpack_from(frame, 0)
        src = address[:6] if halen == 6 else None
        return _tags(frame, src, None, ethertype, 16, packet_type)
    if linktype == LINKTYPE_LINUX_SLL2:
        if len(frame) < 20:
            return Link(None, None, (), 0, -1, None, "truncated Linux SLL2 header")
        ethertype, _r, _ifindex, _hatype, packet_type, halen, address = _SLL2.unpack_from(frame)
        src = address[:6] if halen == 6 else None
        return _tags(frame, src, None, ethertype, 20, packet_type)
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        if not frame:
            return Link(None, None, (), 0, -1, None, "empty frame")
        ethertype = {4: ETH_IPV4, 6: ETH_IPV6}.get(frame[0] >> 4, 0)
        problem = "" if ethertype else f"raw frame of IP version {frame[0] >> 4}"
        return Link(None, None, (), ethertype, 0, None, problem)
    return Link(None, None, (), 0, -1, None, f"link type {linktype} is not supported")


def _tags(
    frame: bytes,
    src: bytes | None,
    dst: bytes | None,
    ethertype: int,
    pos: int,
    packet_type: int | None,
) -> Link:
    """Step over VLAN tags and a PPPoE session header to the network layer."""
    vlans: list[int] = []
    n = len(frame)
    while ethertype in VLAN_TYPES:
        if len(vlans) == MAX_VLAN_TAGS:
            return Link(src, dst, tuple(vlans), ethertype, -1, packet_type, "too many VLAN tags")
        if n < pos + 4:
            return Link(src, dst, tuple(vlans), ethertype, -1, packet_type, "truncated VLAN tag")
        tci, ethertype = TWO_U16.unpack_from(frame, pos)
        vlans.append(tci & 0x0FFF)
        pos += 4
    if ethertype == ETH_PPPOE_SESSION:
        # version/type, code, session id, length, then the PPP protocol.
        if n < pos + 8:
            problem = "truncated PPPoE session header"
            return Link(src, dst, tuple(vlans), ethertype, -1, packet_type, problem)
        ppp = U16.unpack_from(frame, pos + 6)[0]
        inner = _PPP_TO_ETHERTYPE.get(ppp)
        if inner is not None:
            return Link(src, dst, tuple(vlans), inner, pos + 8, packet_type, "")
    return Link(src, dst, tuple(vlans), ethertype, pos, packet_type, "")


_LINK_HEADER = {LINKTYPE_ETHERNET: 14, LINKTYPE_LINUX_SLL: 16, LINKTYPE_LINUX_SLL2: 20}
_ARP_IPV4 = b"\x00\x01\x08\x00\x06\x04"  # Ethernet hardware, IPv4 protocol, 6 and 4 octets


def arp_addresses(frame: bytes, parsed: ParsedFrame) -> tuple[bytes, bytes] | None:
    """The sender and target IPv4 addresses of an ARP frame (packed), or ``None``.

    Args:
        frame: the frame ``parsed`` was read from.
        parsed: its :func:`parse_frame` result; ARP only if its ethertype says so.
    """
    if parsed.ethertype != ETH_ARP:
        return None
    header = _LINK_HEADER.get(parsed.linktype)
    if header is None:
        return None
    at = header + 4 * len(parsed.vlans)
    if len(frame) < at + 28 or frame[at : at + 6] != _ARP_IPV4:
        return None
    return bytes(frame[at + 14 : at + 18]), bytes(frame[at + 24 : at + 28])


def format_mac(raw: bytes) -> str:
    """``02:00:5e:00:53:01`` for six octets."""
    return raw.hex(":")
