"""The receiver's ``cmcc.pcap``: CC packets as a pcap view of the raw CC files.

The raw files (``cmcc.raw`` envelopes, ``cmcc.scte`` datagrams) are the
evidence as received; the pcap is a view of them. Here: which payloads are
IP packets, the record header written without the writer's layers (the
per-packet fast path of :meth:`mediation.lea.outputs.CaseOutputs.store`),
appending to an existing pcap, reading ``cmcc.scte`` back, and rebuilding
the pcap in sequence order (``--sort``).
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Iterator
from pathlib import Path

from mediation import pdu
from mediation.durable import replacing
from mediation.evidence.pcap import DEFAULT_SNAPLEN, LINKTYPE_RAW, PcapWriter
from mediation.lea import rawfile
from mediation.lea.files import HashedFile, write_sha256
from mediation.pdu import fast
from mediation.protocol import scte

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_PCAP_RECORD = struct.Struct("<IIII")  # PcapWriter's record header: little-endian, microseconds


def is_ip_packet(payload: bytes) -> bool:
    """An IPv4 or IPv6 packet, judged by its version and minimal header."""
    if len(payload) >= 20 and payload[0] >> 4 == 4:
        return payload[0] & 0x0F >= 5
    return len(payload) >= 40 and payload[0] >> 4 == 6


def pcap_record_header(packet: bytes, when: dt.datetime) -> bytes | None:
    """The record header ``PcapWriter.write(packet, when)`` writes before ``packet``, or None.

    The receiver's pcap is little-endian with microsecond times and the
    default snap length (as ``CaseOutputs._pcap_writer`` makes it). Its
    header and the packet go to the file as two parts (no joined copy, no
    writer layers: a third of the cost of storing a CC packet). None for
    anything but the common case (no time zone, out of pcap's range, a
    packet past the snap length, not ``bytes``): the caller then uses the
    writer, which cuts or refuses it. Proven equal by a property test
    (tests/test_lea_outputs_same.py).
    """
    if when.tzinfo is None or packet.__class__ is not bytes or len(packet) > DEFAULT_SNAPLEN:
        return None
    delta = when - _EPOCH
    seconds = delta.days * 86400 + delta.seconds
    if not 0 <= seconds <= 0xFFFFFFFF:
        return None
    return _PCAP_RECORD.pack(seconds, delta.microseconds, len(packet), len(packet))


def capture_time(envelope: pdu.Envelope) -> dt.datetime:
    """The CC header's timeStamp (capture), else the envelope's mediationTime."""
    content = envelope.content
    if isinstance(content, pdu.CCApdu) and content.header and content.header.time_stamp:
        return content.header.time_stamp
    return envelope.mediation_time


class AppendHeader:
    """Lets a :class:`PcapWriter` append to an existing file: its header must match.

    The writer always writes a file header first; for a file that has one,
    that write is checked against it and dropped.
    """

    def __init__(self, target: HashedFile) -> None:
        self._target = target
        self._existing = target.size > 0

    def write(self, data: bytes) -> int:
        if self._existing:
            self._existing = False
            with self._target.path.open("rb") as handle:
                if handle.read(len(data)) != data:
                    raise ValueError(f"{self._target.path} is a pcap of another format")
            return len(data)
        return self._target.write(data)

    def flush(self) -> None:
        self._target.flush()


def scan_scte(path: Path) -> Iterator[tuple[int, dt.datetime, bytes, int]]:
    """The records of a ``cmcc.scte`` file, one at a time (the file may be large).

    Not authenticated again here (they were on arrival; ``receive verify
    --udp-key`` checks the tags). Yields (sequence, capture time, the
    datagram, the offset after it); a torn tail ends the iteration, so the
    last offset yielded is the length of the whole records.
    """
    offset = 0
    with path.open("rb") as handle:
        while len(prefix := handle.read(4)) == 4:
            size = int.from_bytes(prefix, "big")
            datagram = handle.read(size)
            if len(datagram) < size or size < scte.HEADER + scte.TRAILER:
                return
            offset += 4 + size
            sequence = int.from_bytes(datagram[-scte.TAG - 8 : -scte.TAG], "big")
            yield sequence, scte.from_ntp(datagram[4:12]), datagram, offset


def scte_packet(datagram: bytes) -> bytes:
    """The IP packet inside an SCTE datagram."""
    return datagram[scte.HEADER : -scte.TRAILER]


def sort_pcap(raw_path: Path, pcap_path: Path, scte_path: Path | None = None) -> str:
    """Rewrite the pcap from the raw CC files, in sequence order; returns its SHA-256.

    The raw files (envelopes, and SCTE datagrams if ``scte_path`` exists)
    are the evidence as received; the pcap is a view of them, so rebuilding
    it loses nothing and also restores any packet a killed run wrote to a
    raw file but not yet to the pcap.
    """
    messages, _torn = rawfile.scan(raw_path) if raw_path.exists() else ([], False)
    ordered = sorted((m for m in messages if m.sequence is not None), key=lambda m: m.sequence)
    if scte_path is not None and scte_path.exists() and scte_path.stat().st_size:
        return _sort_pcap_with_scte(raw_path, pcap_path, ordered, scte_path)
    # Durable like every replaced file (the directory entry too); a failure
    # half-way leaves the old pcap and no temporary file.
    with replacing(pcap_path) as temp:
        target = HashedFile(temp)
        try:
            writer = PcapWriter(target, linktype=LINKTYPE_RAW)  # type: ignore[arg-type]
            for data in rawfile.read_in_order(raw_path, ordered):
                envelope = fast.decode_envelope(data)
                content = envelope.content
                if isinstance(content, pdu.CCApdu) and is_ip_packet(content.payload):
                    writer.write(content.payload, capture_time(envelope))
            writer.close()
        finally:
            digest = target.close(hash_file=False)  # the hash file names the final name
    write_sha256(pcap_path, digest)
    return digest


def _sort_pcap_with_scte(
    raw_path: Path,
    pcap_path: Path,
    ordered: list[rawfile.RawMessage],
    scte_path: Path,
) -> str:
    """:func:`sort_pcap` when SCTE datagrams came too (retrieval fills their gaps as envelopes).

    Holds the stream's packets in memory to order them (the envelope-only
    path reads them back by offset instead).
    """
    packets: dict[int, tuple[dt.datetime, bytes]] = {}
    for data in rawfile.read_in_order(raw_path, ordered) if ordered else ():
        envelope = fast.decode_envelope(data)
        if isinstance(envelope.content, pdu.CCApdu):
            packets[envelope.sequence_number] = (capture_time(envelope), envelope.content.payload)
    for sequence, when, datagram, _end in scan_scte(scte_path):
        packets.setdefault(sequence, (when, scte_packet(datagram)))
    with replacing(pcap_path) as temp:
        target = HashedFile(temp)
        try:
            writer = PcapWriter(target, linktype=LINKTYPE_RAW)  # type: ignore[arg-type]
            for sequence in sorted(packets):
                when, packet = packets[sequence]
                if is_ip_packet(packet):
                    writer.write(packet, when)
            writer.close()
        finally:
            digest = target.close(hash_file=False)
    write_sha256(pcap_path, digest)
    return digest
