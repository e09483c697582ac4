"""TZSP (TaZmen Sniffer Protocol) version 1: frames a router mirrors over UDP.

MikroTik RouterOS sends each frame a ``sniff-tzsp`` mangle rule (or
``/tool sniffer`` streaming) matches as one UDP datagram, by default to port
37008 (docs/tzsp.md, ``shared/spec/interop-formats.md``)::

    version (1) | type (1) | encapsulation (2, big-endian) | tags ... END | frame

A tag is one octet; ``0`` is one octet of padding, ``1`` ends the list, and
every other tag is followed by a length octet and that many octets of value
(Wireshark's ``packet-tzsp.c`` reads them the same way). Only "received
tag list" datagrams (type 0) carry a frame.

Sans-I/O: :func:`decode_tzsp` takes one datagram's octets, :func:`encode_tzsp`
makes one (for tests and for ``fixtures/tzsp_send.py``), and
:class:`TzspReceiver` adds what a listener needs: which senders are
registered, and counters of every refusal. TZSP has no sequence numbers,
no length of its own and no authentication, so loss between the router and
the receiver cannot be counted here; see docs/tzsp.md for what can be.
"""

from __future__ import annotations

import enum
from collections.abc import Container, Iterable
from typing import NamedTuple

from mediation.evidence.pcap import LINKTYPE_ETHERNET, LINKTYPE_RAW
from mediation.protocol.errors import ProtocolError

DEFAULT_PORT = 37008
VERSION = 1
HEADER_OCTETS = 4

TAG_PADDING = 0
TAG_END = 1
# Wireshark stops after this many tags too; a real sender writes a handful.
MAX_TAGS = 64


class FrameType(enum.IntEnum):
    """The datagram's type octet."""

    RECEIVED = 0  # "received tag list": a frame the sensor saw
    TRANSMIT = 1  # "packet for transmit"
    RESERVED = 2
    CONFIGURATION = 3
    KEEPALIVE = 4
    PORT_OPENER = 5


class Encapsulation(enum.IntEnum):
    """What the encapsulated frame is (the ones this receiver can read)."""

    ETHERNET = 1
    RAW_IP = 7


# TZSP encapsulation -> the pcap link type parse_frame reads it as.
LINKTYPES = {Encapsulation.ETHERNET: LINKTYPE_ETHERNET, Encapsulation.RAW_IP: LINKTYPE_RAW}


_FAST_LINKTYPES = {int(k): v for k, v in LINKTYPES.items()}


class Refusal(enum.Enum):
    """Why a datagram was dropped; the value is the counter's name."""

    TRUNCATED = "truncated"  # shorter than the header, or no frame after the tags
    BAD_VERSION = "bad-version"
    UNKNOWN_TYPE = "unknown-type"
    NOT_A_FRAME = "not-a-frame"  # a known type that carries no frame (keepalive ...)
    UNKNOWN_ENCAPSULATION = "unknown-encapsulation"
    TAG_OVERRUN = "tag-overrun"  # a tag's length, or the tag list, runs past the datagram
    TOO_MANY_TAGS = "too-many-tags"
    UNREGISTERED_SENDER = "unregistered-sender"  # counted by TzspReceiver only


class TzspError(ProtocolError):
    """A datagram that is not a TZSP frame this receiver can read.

    Attributes:
        reason: the :class:`Refusal`, to count.
    """

    def __init__(self, reason: Refusal, detail: str) -> None:
        super().__init__(f"TZSP {reason.value}: {detail}")
        self.reason = reason


class TzspFrame(NamedTuple):
    """One decoded datagram: the frame and how to read it (a tuple: one per frame)."""

    encapsulation: int
    linktype: int  # for mediation.tap.packet.parse_frame
    frame: bytes
    tags: tuple[tuple[int, bytes], ...] = ()  # (tag, value), padding and END left out


def decode_tzsp(datagram: bytes) -> TzspFrame:
    """Decode one TZSP datagram.

    Args:
        datagram: the UDP payload.

    Returns:
        The encapsulated frame, its encapsulation and link type, and the tags.

    Raises:
        TzspError: the datagram is refused; ``reason`` says why. Nothing
            else is raised, whatever the octets.
    """
    data = bytes(datagram)
    if len(data) > 5 and data[4] == TAG_END and data[0] == VERSION and data[1] == 0:
        # What a MikroTik router sends: no tag but END. Read without the general walk.
        linktype = _FAST_LINKTYPES.get(data[2] << 8 | data[3])
        if linktype is not None:
            return TzspFrame(data[2] << 8 | data[3], linktype, data[5:])
    return _decode(data)


def _decode(data: bytes) -> TzspFrame:
    """:func:`decode_tzsp` by the general walk (the reference for its fast path)."""
    if len(data) < HEADER_OCTETS:
        raise TzspError(Refusal.TRUNCATED, f"{len(data)} octets, the header alone is 4")
    version, kind = data[0], data[1]
    encapsulation = int.from_bytes(data[2:4], "big")
    if version != VERSION:
        raise TzspError(Refusal.BAD_VERSION, f"version {version}, only 1 is read")
    if kind != FrameType.RECEIVED:
        if kind in FrameType._value2member_map_:
            raise TzspError(Refusal.NOT_A_FRAME, f"type {kind} carries no received frame")
        raise TzspError(Refusal.UNKNOWN_TYPE, f"type {kind} is not a TZSP type")
    if encapsulation not in LINKTYPES:
        raise TzspError(
            Refusal.UNKNOWN_ENCAPSULATION,
            f"encapsulation {encapsulation}; only Ethernet (1) and raw IP (7) are read",
        )
    tags, offset = _tags(data)
    if offset >= len(data):
        raise TzspError(Refusal.TRUNCATED, "no frame after the tag list")
    linktype = LINKTYPES[Encapsulation(encapsulation)]
    return TzspFrame(encapsulation, linktype, data[offset:], tags)


def _tags(data: bytes) -> tuple[tuple[tuple[int, bytes], ...], int]:
    """The tags from offset 4 to END, and the offset of the frame after it.

    Each step moves at least one octet forward, so the loop ends within the
    datagram; ``MAX_TAGS`` bounds the list a sender can make us keep.
    """
    tags: list[tuple[int, bytes]] = []
    pos, n = HEADER_OCTETS, len(data)
    while pos < n:
        tag = data[pos]
        if tag == TAG_END:
            return tuple(tags), pos + 1
        if tag == TAG_PADDING:
            pos += 1
            continue
        if pos + 1 >= n:
            raise TzspError(Refusal.TAG_OVERRUN, f"tag {tag} at offset {pos} has no length")
        size = data[pos + 1]
        if pos + 2 + size > n:
            raise TzspError(
                Refusal.TAG_OVERRUN, f"tag {tag} at offset {pos} claims {size} octets past the end"
            )
        if len(tags) >= MAX_TAGS:
            raise TzspError(Refusal.TOO_MANY_TAGS, f"more than {MAX_TAGS} tags")
        tags.append((tag, data[pos + 2 : pos + 2 + size]))
        pos += 2 + size
    raise TzspError(Refusal.TAG_OVERRUN, "the tag list has no END tag")


def encode_tzsp(
    frame: bytes,
    *,
    encapsulation: int = Encapsulation.ETHERNET,
    frame_type: int = FrameType.RECEIVED,
    tags: Iterable[tuple[int, bytes]] = (),
) -> bytes:
    """One TZSP datagram as a MikroTik router sends it (no tags but END by default).

    Args:
        frame: the frame to carry.
        encapsulation: 1 (Ethernet) unless told.
        frame_type: 0 (received tag list) unless told.
        tags: ``(tag, value)`` pairs written before END (values up to 255 octets).

    Raises:
        ValueError: a tag that cannot be written (padding, END, or too long).
    """
    out = bytearray((VERSION, frame_type))
    out += encapsulation.to_bytes(2, "big")
    for tag, value in tags:
        if tag in (TAG_PADDING, TAG_END) or not 0 <= tag <= 255 or len(value) > 255:
            raise ValueError("a TZSP tag is 2..255 with at most 255 octets of value")
        out += bytes((tag, len(value))) + value
    out.append(TAG_END)
    return bytes(out + frame)


class TzspReceiver:
    """Decodes datagrams from registered senders and counts everything refused.

    A TZSP sender is a registered source (a warrant's ``tzsp:ADDR``):
    anything from another address is counted and dropped before it is read.

    Args:
        senders: the registered senders' addresses, as the socket reports
            them (text, e.g. ``"192.0.2.1"``); may be changed later.
    """

    def __init__(self, senders: Container[str] = frozenset()) -> None:
        self.senders = senders
        self.accepted = 0
        self.octets = 0
        self.refused: dict[str, int] = {reason.value: 0 for reason in Refusal}
        self.last_refusal: Refusal | None = None  # why the last refused datagram was

    def receive(self, datagram: bytes, sender: str) -> TzspFrame | None:
        """The frame in one datagram from ``sender``, or ``None`` (counted) if refused."""
        if sender not in self.senders:
            self.refused[Refusal.UNREGISTERED_SENDER.value] += 1
            self.last_refusal = Refusal.UNREGISTERED_SENDER
            return None
        try:
            decoded = decode_tzsp(datagram)
        except TzspError as exc:
            self.refused[exc.reason.value] += 1
            self.last_refusal = exc.reason
            return None
        self.accepted += 1
        self.octets += len(decoded.frame)
        return decoded

    @property
    def refused_total(self) -> int:
        """Every datagram dropped, whatever the reason."""
        return sum(self.refused.values())
