"""UDP datagrams out of captured frames: the link layer, IPv4/IPv6 and UDP headers peeled.

What ``mediate decode`` reads out of a capture of PDU datagrams; the pcap
file format itself is :mod:`mediation.evidence.pcap`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterator

from mediation.evidence.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
)

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

_VLAN_TYPES = (0x8100, 0x88A8, 0x9100)
_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_UDP = 17
# IPv6 extension headers a UDP datagram may sit behind: hop-by-hop, routing,
# fragment, destination options, authentication.
_IPV6_EXTENSIONS = (0, 43, 44, 60, 51)
_IPV6_FRAGMENT, _IPV6_AH = 44, 51

# Link types :func:`udp_datagram` reads.
UDP_LINKTYPES = frozenset((1, 101, 113, 228, 229, 276))


class SkippedFrame(ValueError):
    """A frame that holds no readable UDP datagram; the message says why.

    ``fragment`` is true for an IP fragment after the first (no UDP header:
    fragments are not reassembled).
    """

    def __init__(self, message: str, *, fragment: bool = False) -> None:
        self.fragment = fragment
        super().__init__(message)


@dataclasses.dataclass(frozen=True)
class UdpDatagram:
    """A UDP datagram found in a frame. Unpacks as ``src, sport, dst, dport, payload``.

    ``offset`` is where the payload starts in the frame. ``truncated`` says the
    frame held less than the UDP header announced (a first IP fragment, or a
    capture cut at the snap length).
    """

    src: IPAddr
    sport: int
    dst: IPAddr
    dport: int
    payload: bytes
    offset: int = 0
    truncated: bool = False

    def __iter__(self) -> Iterator[object]:
        return iter((self.src, self.sport, self.dst, self.dport, self.payload))


def udp_datagram(frame: bytes, linktype: int) -> UdpDatagram:
    """The UDP datagram in one captured frame.

    Understands Ethernet (with any number of 802.1Q / 802.1ad VLAN tags),
    Linux cooked captures (SLL and SLL2) and raw IPv4/IPv6. IPv4 fragments
    after the first carry no UDP header and are not reassembled.

    Raises:
        SkippedFrame: not IP, not UDP, a later fragment, or cut short.
    """
    if linktype == LINKTYPE_ETHERNET:
        ethertype, at = _ethertype(frame, 12)
    elif linktype == LINKTYPE_LINUX_SLL:
        ethertype, at = _ethertype(frame, 14)
    elif linktype == LINKTYPE_LINUX_SLL2:
        if len(frame) < 20:
            raise SkippedFrame("truncated SLL2 header")
        ethertype, at = _ethertype(frame[:2] + frame[20:], 0)
        at += 18
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        if not frame:
            raise SkippedFrame("empty frame")
        ethertype, at = {4: _ETH_IPV4, 6: _ETH_IPV6}.get(frame[0] >> 4, 0), 0
    else:
        raise SkippedFrame(f"link type {linktype} is not supported")
    if ethertype == _ETH_IPV4:
        return _ipv4(frame, at)
    if ethertype == _ETH_IPV6:
        return _ipv6(frame, at)
    raise SkippedFrame(f"not IP (type 0x{ethertype:04x})")


def _ethertype(frame: bytes, at: int) -> tuple[int, int]:
    """The protocol type at ``at`` after any VLAN tags, and where its payload starts."""
    if len(frame) < at + 2:
        raise SkippedFrame("truncated link-layer header")
    ethertype = int.from_bytes(frame[at : at + 2], "big")
    at += 2
    while ethertype in _VLAN_TYPES:
        if len(frame) < at + 4:
            raise SkippedFrame("truncated VLAN tag")
        ethertype = int.from_bytes(frame[at + 2 : at + 4], "big")
        at += 4
    return ethertype, at


def _ipv4(frame: bytes, at: int) -> UdpDatagram:
    if len(frame) < at + 20 or frame[at] >> 4 != 4:
        raise SkippedFrame("truncated or bad IPv4 header")
    header_len = (frame[at] & 0x0F) * 4
    total = int.from_bytes(frame[at + 2 : at + 4], "big")
    if header_len < 20 or total < header_len or len(frame) < at + header_len:
        raise SkippedFrame("bad IPv4 header length")
    flags_fragment = int.from_bytes(frame[at + 6 : at + 8], "big")
    fragment_offset = (flags_fragment & 0x1FFF) * 8
    if frame[at + 9] != _UDP:
        raise SkippedFrame(f"not UDP (IP protocol {frame[at + 9]})")
    if fragment_offset:
        message = f"IPv4 fragment at offset {fragment_offset}: not reassembled"
        raise SkippedFrame(message, fragment=True)
    src = ipaddress.IPv4Address(frame[at + 12 : at + 16])
    dst = ipaddress.IPv4Address(frame[at + 16 : at + 20])
    end = min(len(frame), at + total)
    return _udp(frame, at + header_len, end, src, dst, cut=end < at + total)


def _ipv6(frame: bytes, at: int) -> UdpDatagram:
    if len(frame) < at + 40 or frame[at] >> 4 != 6:
        raise SkippedFrame("truncated or bad IPv6 header")
    payload_len = int.from_bytes(frame[at + 4 : at + 6], "big")
    next_header = frame[at + 6]
    src = ipaddress.IPv6Address(frame[at + 8 : at + 24])
    dst = ipaddress.IPv6Address(frame[at + 24 : at + 40])
    full_end = at + 40 + payload_len
    end = min(len(frame), full_end)
    pos = at + 40
    for _ in range(8):  # a handful of extension headers at most; no loops on junk
        if next_header == _UDP:
            return _udp(frame, pos, end, src, dst, cut=end < full_end)
        if next_header not in _IPV6_EXTENSIONS:
            raise SkippedFrame(f"not UDP (IPv6 next header {next_header})")
        if pos + 8 > end:
            raise SkippedFrame("truncated IPv6 extension header")
        if next_header == _IPV6_FRAGMENT:
            offset = int.from_bytes(frame[pos + 2 : pos + 4], "big") & 0xFFF8
            if offset:
                message = f"IPv6 fragment at offset {offset}: not reassembled"
                raise SkippedFrame(message, fragment=True)
            size = 8
        elif next_header == _IPV6_AH:
            size = (frame[pos + 1] + 2) * 4
        else:
            size = (frame[pos + 1] + 1) * 8
        next_header = frame[pos]
        pos += size
    raise SkippedFrame("too many IPv6 extension headers")


def _udp(frame: bytes, at: int, end: int, src: IPAddr, dst: IPAddr, cut: bool) -> UdpDatagram:
    if end < at + 8:
        raise SkippedFrame("truncated UDP header")
    sport = int.from_bytes(frame[at : at + 2], "big")
    dport = int.from_bytes(frame[at + 2 : at + 4], "big")
    length = int.from_bytes(frame[at + 4 : at + 6], "big")
    if length == 0 and src.version == 6:
        length = end - at  # a jumbogram says its length elsewhere
    if length < 8:
        raise SkippedFrame(f"bad UDP length {length}")
    payload_end = min(end, at + length)
    payload = bytes(frame[at + 8 : payload_end])
    truncated = cut or payload_end < at + length
    return UdpDatagram(src, sport, dst, dport, payload, at + 8, truncated)
