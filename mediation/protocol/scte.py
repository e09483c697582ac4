"""CC as PacketCable/SCTE content datagrams (T1.IAS ``scteDatagram``), authenticated.

For agencies whose tools expect it, a UDP endpoint registered with
``--format scte`` receives each CC packet in the PacketCable lawful
intercept framing that tshark decodes as ``pcli12`` (no plugin)::

    offset  size  field
    0       4     CCC identity: names the warrant's CC stream (see :func:`ccc_id`)
    4       8     NTP timestamp: the capture time (seconds since 1900, then 2^-32 fractions)
    12      n     the intercepted IP packet, as the tap captured it
    12+n    4     trailer magic b"MDSC"
    16+n    8     the record's sequence number in the warrant's CmCC stream
    24+n    16    HMAC-SHA256 (first 16 octets) of bytes 0 .. 24+n, under the
                  endpoint's SCTE key

The packet's own IP length ends it for pcli's dissector; the trailer
after it makes the datagram *sequenced* (the log's sequence number: the
agency counts loss from gaps and fetches them by retrieval as usual) and
*authenticated* (a forged or altered datagram fails the tag). The SCTE
key is HKDF-SHA256 of the endpoint's UDP key (``mediate agency udp-key``),
so the agency's key file serves both. Unlike the sealed envelopes, the
packet is **not encrypted**: the framing exists for tools that read it in
clear; docs/delivery-protocol.md says so.

Sans-I/O: bytes in, bytes out; no sockets, no clock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mediation import pdu
from mediation.pdu import PDUError, fast
from mediation.protocol.envelope import LogRecord

HEADER = 12
TRAILER_MAGIC = b"MDSC"
TAG = 16
TRAILER = len(TRAILER_MAGIC) + 8 + TAG
_NTP_EPOCH = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_KEY_INFO = b"mediation scte-datagram v1"


class ScteRefused(ValueError):
    """A datagram that is not an authentic SCTE datagram of this endpoint; says why."""


def scte_key(udp_key: bytes) -> bytes:
    """The endpoint's SCTE key: HKDF-SHA256 of its 32-octet UDP key (no salt)."""
    return HKDF(hashes.SHA256(), 32, None, _KEY_INFO).derive(udp_key)


def ccc_id(key: bytes, handle: str) -> int:
    """The CCC identity of a warrant's CC stream: 32 bits of an HMAC of its handle.

    Stable and unique enough per agency, and it gives away nothing to
    someone without the key (the handle is not on the wire).
    """
    digest = hmac.new(key, b"ccc\x00" + handle.encode("ascii"), hashlib.sha256).digest()
    return int.from_bytes(digest[:4], "big")


def ntp_time(when: dt.datetime) -> bytes:
    """An aware datetime as the 8-octet NTP timestamp (whole microseconds kept)."""
    delta = when - _NTP_EPOCH
    seconds = delta.days * 86400 + delta.seconds
    # Rounded up, so that reading it back (rounded down) gives the same microsecond.
    fraction = -(-(delta.microseconds << 32) // 1_000_000)
    return struct.pack(">II", seconds & 0xFFFFFFFF, fraction)


def from_ntp(data: bytes) -> dt.datetime:
    """The datetime of an 8-octet NTP timestamp (to the microsecond, rounded down)."""
    seconds, fraction = struct.unpack(">II", data)
    return _NTP_EPOCH + dt.timedelta(seconds=seconds, microseconds=(fraction * 1_000_000) >> 32)


def frame(key: bytes, ccc: int, sequence: int, when: dt.datetime, packet: bytes) -> bytes:
    """One SCTE datagram: header, the packet, then sequence number and tag.

    Raises:
        ValueError: a CCC identity or sequence number out of range.
    """
    if not 0 <= ccc <= 0xFFFFFFFF or not 0 <= sequence < 1 << 64:
        raise ValueError("CCC identity or sequence number out of range")
    body = struct.pack(">I", ccc) + ntp_time(when) + packet + TRAILER_MAGIC
    body += sequence.to_bytes(8, "big")
    return body + hmac.new(key, body, hashlib.sha256).digest()[:TAG]


@dataclasses.dataclass(frozen=True)
class ScteDatagram:
    """An opened SCTE datagram."""

    ccc: int
    sequence: int
    time: dt.datetime
    packet: bytes


def open_datagram(key: bytes, data: bytes) -> ScteDatagram:
    """Check a datagram's tag and take it apart (what an agency's receiver does).

    Raises:
        ScteRefused: too short, no trailer, or the tag does not verify.
    """
    if len(data) < HEADER + TRAILER:
        raise ScteRefused("too short for an SCTE datagram")
    body, tag = data[:-TAG], data[-TAG:]
    if body[-12:-8] != TRAILER_MAGIC:
        raise ScteRefused("no sequence trailer")
    if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest()[:TAG], tag):
        raise ScteRefused("tag does not verify")
    (ccc,) = struct.unpack(">I", body[:4])
    return ScteDatagram(
        ccc, int.from_bytes(body[-8:], "big"), from_ntp(body[4:12]), bytes(body[HEADER:-12])
    )


class ScteFramer:
    """Frames the CmCC log records of one endpoint as SCTE datagrams."""

    def __init__(self, udp_key: bytes) -> None:
        self.key = scte_key(udp_key)
        self._ccc: dict[str, int] = {}

    def __call__(self, stream: pdu.StreamId, record: LogRecord) -> bytes:
        """The datagram for one CC record.

        Raises:
            ValueError: the record is not a CC APDU (a broken log, not a peer).
        """
        try:
            apdu = fast.decode_cc(record.payload)
        except PDUError as exc:
            raise ValueError(f"record {record.seq} of {stream}: not a CC APDU: {exc}") from None
        header = apdu.header
        if header is not None and header.time_stamp is not None:
            when = header.time_stamp
        else:
            when = _EPOCH + dt.timedelta(microseconds=record.received_us)
        handle = stream.warrant_handle
        ccc = self._ccc.get(handle)
        if ccc is None:
            ccc = self._ccc[handle] = ccc_id(self.key, handle)
        return frame(self.key, ccc, record.seq, when, apdu.payload)
