"""What the receiver writes, per warrant: ``DIR/<handle>/...``.

| file | content |
|---|---|
| ``cmcc.raw``, ``cmii.raw`` | the envelopes of each stream exactly as received, back to back |
| ``cmcc.pcap`` | each CC packet (an IP packet) with its capture time; link type raw IP |
| ``cmii.jsonl`` | one JSON object per CmII PDU or completeness notice, with its envelope |
| ``checkpoints.raw`` | the server's signed hash-chain checkpoints, as received |
| ``gaps.json`` | per stream: held, missing, retrieved, unavailable with reasons |
| ``NAME.sha256`` | ``sha256sum`` line for each of the above, written when it is closed |

Files are named by the warrant handle, never by case identity or target:
those appear only inside the content (the evidence itself). Envelopes are
written in arrival order; every record carries its sequence number, and
``cc_pcap.sort_pcap`` rewrites the pcap in sequence order at exit (``--sort``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from mediation import pdu
from mediation.durable import write_atomic
from mediation.evidence.pcap import LINKTYPE_RAW, PcapError, PcapWriter
from mediation.lea import rawfile
from mediation.lea.cc_pcap import AppendHeader, pcap_record_header, scan_scte, sort_pcap
from mediation.lea.files import (
    HashedFile,
    cut_torn_lines,
    cut_torn_pcap,
    write_sha256,
)
from mediation.lea.jsonline import JsonLines

PCAP_FILE = "cmcc.pcap"
JSONL_FILE = "cmii.jsonl"
CHECKPOINT_FILE = "checkpoints.raw"
GAPS_FILE = "gaps.json"
SCTE_FILE = "cmcc.scte"  # SCTE datagrams as received, each after its 4-octet length
NOT_IP_LISTED = 1000  # sequence numbers of non-IP payloads listed in gaps.json

# Handles are opaque and short (``w-3f9a1c``). Anything else could climb
# out of the output directory, so it is refused before a file is named.
_PAIR = re.compile(r"\[\s+(\d+),\s+(\d+)\s+\]")
_HANDLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")


def safe_handle(handle: str) -> bool:
    """Whether a warrant handle can name a directory (letters, digits, ``._-``)."""
    return _HANDLE.fullmatch(handle) is not None


def raw_name(kind: pdu.StreamKind) -> str:
    """``cmii.raw`` or ``cmcc.raw``."""
    return f"{kind.value.lower()}.raw"

class CaseOutputs:
    """The files of one warrant handle, opened when first needed, appended to."""

    def __init__(self, out_dir: Path, handle: str) -> None:
        """Create ``out_dir/handle`` (mode 0700) if needed.

        Raises:
            ValueError: the handle cannot name a directory.
        """
        if not safe_handle(handle):
            raise ValueError(f"warrant handle {handle!r} cannot name a directory")
        self.handle = handle
        self.dir = out_dir / handle
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._raw: dict[pdu.StreamKind, HashedFile] = {}
        self._pcap_file: HashedFile | None = None
        self._pcap: PcapWriter | None = None
        self._pcap_refused: str | None = None
        self._jsonl: HashedFile | None = None
        self._checkpoints: HashedFile | None = None
        self._scte: HashedFile | None = None
        self.not_ip = 0
        self.not_ip_sequences: list[int] = []
        self.torn: dict[str, int] = {}  # file -> octets cut off at start
        self.unviewable: list[dict[str, object]] = []  # kept in cmcc.raw/cmii.raw only
        self.unviewable_count = 0
        self._last_cc: int | None = None
        self.cc_in_order = True
        self.digests: dict[str, str] = {}
        self._lines = JsonLines()  # a flow's header reports share all but their time

    def resume(self) -> dict[pdu.StreamKind, list[int]]:
        """Read back what an earlier run wrote: the sequence numbers held per stream.

        Cuts torn tails (half records a killed run left; never acknowledged)
        so appends stay readable, and notes them in :attr:`torn`.

        Raises:
            rawfile.RawFileError: a raw file or the pcap is corrupt before its end.
        """
        held: dict[pdu.StreamKind, list[int]] = {}
        for kind in pdu.StreamKind:
            path = self.dir / raw_name(kind)
            if not path.exists():
                continue
            messages, torn = rawfile.scan(path)
            if torn:
                self._cut(path, messages[-1].offset + messages[-1].length if messages else 0)
            held[kind] = [m.sequence for m in messages if m.sequence is not None]
            if kind is pdu.StreamKind.CMCC and held[kind]:
                self._last_cc = held[kind][-1]
                self.cc_in_order = held[kind] == sorted(held[kind])
        scte = self._resume_scte()
        if scte:
            held.setdefault(pdu.StreamKind.CMCC, []).extend(scte)
            self._last_cc = max(held[pdu.StreamKind.CMCC])
        for name, cut in ((PCAP_FILE, cut_torn_pcap), (JSONL_FILE, cut_torn_lines)):
            path = self.dir / name
            try:
                octets = cut(path) if path.exists() else 0
            except PcapError as exc:
                raise rawfile.RawFileError(f"{path}: {exc}") from None
            if octets:
                self.torn[name] = octets
        return held

    def _resume_scte(self) -> list[int]:
        """The sequence numbers in ``cmcc.scte``; a torn last record is cut off."""
        path = self.dir / SCTE_FILE
        if not path.exists():
            return []
        sequences, good = [], 0
        for sequence, _when, _datagram, end in scan_scte(path):
            sequences.append(sequence)
            good = end
        if good < path.stat().st_size:
            self._cut(path, good)
        return sequences

    def _cut(self, path: Path, good: int) -> None:
        self.torn[path.name] = path.stat().st_size - good
        os.truncate(path, good)

    def store(
        self, envelope: pdu.Envelope, raw: bytes, *, retrieved: bool, at: dt.datetime
    ) -> None:
        """Write one new envelope: raw, then the pcap record or the JSON line.

        Args:
            envelope: the decoded envelope.
            raw: its octets exactly as received.
            retrieved: it came by retrieval (the JSON line says so).
            at: when it arrived (wall clock, UTC).
        """
        self.store_all([(envelope, raw, retrieved)], at)

    def store_scte(self, sequence: int, when: dt.datetime, packet: bytes, raw: bytes) -> None:
        """Write one new SCTE datagram (already authenticated): raw, then the pcap record.

        Args:
            sequence: its CmCC sequence number.
            when: the capture time it carries.
            packet: the IP packet.
            raw: the datagram exactly as received (kept in ``cmcc.scte``).
        """
        if self._scte is None:
            self._scte = HashedFile(self.dir / SCTE_FILE)
        self._scte.write(len(raw).to_bytes(4, "big") + raw)  # first: the evidence itself
        held: list[bytes] = []
        self._cc_packet(sequence, packet, when, held)
        if held:
            self._pcap_file.write_all(held)  # type: ignore[union-attr]

    def store_all(self, items: list[tuple[pdu.Envelope, bytes, bool]], at: dt.datetime) -> None:
        """:meth:`store` of each ``(envelope, raw, retrieved)`` in order; each file appended once.

        A wake-up's new envelopes of one handle, stored in one call: each
        file ends up holding what :meth:`store` of each in turn writes
        (files are independent; within each the order is kept), at a call
        per file, not per record and file (tests/test_lea_store_all.py).

        Args:
            items: the new envelopes, with their octets as received and
                whether each came by retrieval.
            at: when they arrived (wall clock, UTC).
        """
        raws: dict[pdu.StreamKind, list[bytes]] = {}
        pcap: list[bytes] = []  # record headers and packets, in order
        lines: list[bytes] = []
        line = self._lines.line
        cc_packet = self._cc_packet
        kind = parts = None
        for envelope, raw, retrieved in items:
            if envelope.stream.kind is not kind:
                kind = envelope.stream.kind
                parts = raws.setdefault(kind, [])
            parts.append(raw)  # type: ignore[union-attr]  # first: the evidence itself
            content = envelope.content
            try:
                if content.__class__ is pdu.CCApdu or isinstance(content, pdu.CCApdu):
                    header = content.header
                    when = header.time_stamp if header is not None else None
                    cc_packet(
                        envelope.sequence_number,
                        content.payload,
                        when or envelope.mediation_time,
                        pcap,
                    )
                    continue
                lines.append(line(envelope, retrieved=retrieved, at=at))
            except (TypeError, ValueError) as exc:  # as store() keeps it: raw only
                self.unviewable_count += 1
                if len(self.unviewable) < NOT_IP_LISTED:
                    self.unviewable.append({"sequence": envelope.sequence_number, "why": str(exc)})
        for kind, parts in raws.items():
            target = self._raw.get(kind)
            if target is None:
                target = self._raw_file(kind)
            target.write_all(parts)
        if pcap:
            self._pcap_file.write_all(pcap)  # type: ignore[union-attr]  # made with the writer
        if lines:
            self._jsonl_file().write_all(lines)

    def _cc_packet(self, seq: int, payload: bytes, when: dt.datetime, held: list[bytes]) -> None:
        """A CC packet's pcap record: its header and the packet appended to ``held``.

        ``held`` is for the pcap file, written by the caller; what the
        writer itself must write (a packet it cuts) goes after it, in order.
        """
        last = self._last_cc
        if last is None or seq > last:
            self._last_cc = seq
        elif seq < last:
            self.cc_in_order = False
        first = payload[0] if payload else 0  # is_ip_packet(), inline (per packet)
        if not (
            (first >> 4 == 4 and len(payload) >= 20 and first & 0x0F >= 5)
            or (first >> 4 == 6 and len(payload) >= 40)
        ):
            # The raw file keeps it; a pcap of raw IP must not hold garbage.
            self.not_ip += 1
            if len(self.not_ip_sequences) < NOT_IP_LISTED:
                self.not_ip_sequences.append(seq)
            return
        writer = self._pcap if self._pcap is not None else self._pcap_writer()
        header = pcap_record_header(payload, when)
        if header is not None:
            held.append(header)
            held.append(payload)
            return
        target = self._pcap_file
        assert target is not None  # made with the writer
        target.write_all(held)  # what came before it, first
        held.clear()
        writer.write(payload, when)

    def store_checkpoint(self, raw: bytes) -> None:
        """Keep a signed checkpoint as received (for verifying the hash chain later)."""
        if self._checkpoints is None:
            self._checkpoints = HashedFile(self.dir / CHECKPOINT_FILE)
        self._checkpoints.write(raw)

    def _raw_file(self, kind: pdu.StreamKind) -> HashedFile:
        if kind not in self._raw:
            self._raw[kind] = HashedFile(self.dir / raw_name(kind))
        return self._raw[kind]

    def _jsonl_file(self) -> HashedFile:
        if self._jsonl is None:
            self._jsonl = HashedFile(self.dir / JSONL_FILE)
        return self._jsonl

    def _pcap_writer(self) -> PcapWriter:
        if self._pcap is None:
            if self._pcap_refused is not None:
                raise ValueError(self._pcap_refused)
            target = HashedFile(self.dir / PCAP_FILE)
            try:
                self._pcap = PcapWriter(AppendHeader(target), linktype=LINKTYPE_RAW)  # type: ignore[arg-type]
            except ValueError as exc:  # an existing pcap of another format: leave it be
                target.close(hash_file=False)
                self._pcap_refused = str(exc)
                raise
            self._pcap_file = target
        return self._pcap

    @property
    def files(self) -> list[HashedFile]:
        """The open files, raw first (the primary evidence)."""
        extra = (self._scte, self._pcap_file, self._jsonl, self._checkpoints)
        return [*self._raw.values(), *(f for f in extra if f is not None)]

    def flush(self) -> None:
        """Hand everything buffered to the kernel (survives a crash of this process)."""
        for handle in self.files:
            handle.flush()

    def write_gaps(self, report: dict[str, Any], *, final: bool = False) -> None:
        """Replace ``gaps.json`` (atomically); with ``final``, write its ``.sha256`` too."""
        path = self.dir / GAPS_FILE
        # One line per [first, last] pair: a long list of gaps stays readable.
        text = _PAIR.sub(r"[\1, \2]", json.dumps(report, indent=2))
        data = text.encode() + b"\n"
        write_atomic(path, data)
        if final:
            self.digests[GAPS_FILE] = hashlib.sha256(data).hexdigest()
            write_sha256(path, self.digests[GAPS_FILE])

    def close(self, *, sort: bool = False) -> dict[str, str]:
        """Close every file and write its ``.sha256``; with ``sort``, reorder the pcap first.

        Returns:
            File name -> SHA-256 hex of every file closed (gaps.json is
            added by :meth:`write_gaps`).
        """
        if self._pcap is not None:
            self._pcap.close()
        for handle in self.files:
            self.digests[handle.path.name] = handle.close()
        raw_cc = self.dir / raw_name(pdu.StreamKind.CMCC)
        scte_cc = self.dir / SCTE_FILE
        if sort and not self.cc_in_order and (raw_cc.exists() or scte_cc.exists()):
            self.digests[PCAP_FILE] = sort_pcap(raw_cc, self.dir / PCAP_FILE, scte_cc)
        return dict(self.digests)
