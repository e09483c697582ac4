"""Capture files of one warrant, written from its log records: ``DIR/HANDLE/``.

Per stream, one *set* of files is open at a time, named by the stream and
the sequence number of its first record:

- CmCC: ``cmcc-<first>.pcap``, each CC packet (an IP packet) with its
  capture time, link type raw IP;
- CmII: ``cmii-<first>.jsonl``, one JSON object per envelope (as
  ``mediate decode`` shows it), and ``cmii-<first>.ber``, the envelopes
  (DER) back to back.

``<first>`` is 20 digits. While a set is written its files are
``.NAME.part``; closing one (blocking, :meth:`OpenSet.finish`) is, per file:
fsync; a signed manifest line (``evidence/manifest.py``); ``NAME.sha256``
(``sha256sum -c`` form); rename to ``NAME``; fsync of the directory. So a
crash at any point leaves either a ``.part`` without a line (rebuilt from
the log on restart: the bytes are a function of the records) or a line
whose file is finished by :meth:`WarrantFiles.roll_forward`. A file never
gets two lines: the writer refuses a name it has.

Everything is blocking file I/O; the trio side is ``delivery_files.py``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

from mediation.durable import fsync_dir
from mediation.evidence.manifest import MANIFEST, ManifestWriter, Signer
from mediation.evidence.pcap import LINKTYPE_RAW, PcapWriter
from mediation.lea.cc_pcap import is_ip_packet
from mediation.lea.files import HashedFile, sha256_of, write_sha256
from mediation.log import LogRecord
from mediation.log.format import from_us
from mediation.pdu import PDUError, StreamId, StreamKind, fast
from mediation.pdu.jsonview import iso_time, to_json
from mediation.protocol.envelope import record_envelope

log = logging.getLogger("mediation.server.delivery")
FORMATS: dict[StreamKind, tuple[str, ...]] = {
    StreamKind.CMCC: ("pcap",),
    StreamKind.CMII: ("jsonl", "ber"),
}
_NAME = re.compile(r"(cmii|cmcc)-(\d{20})\.(pcap|jsonl|ber)")


def file_name(kind: StreamKind, first_seq: int, fmt: str) -> str:
    """``cmcc-00000000000000000000.pcap``: stream, first sequence number, format."""
    return f"{kind.value.lower()}-{first_seq:020d}.{fmt}"


def part_name(name: str) -> str:
    """The name a file has while it is written: ``.NAME.part`` (hidden, never hashed)."""
    return f".{name}.part"


def parse_name(name: str) -> tuple[StreamKind, int, str] | None:
    """(stream, first sequence, format) of a capture file name, or None."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    kind = StreamKind.CMII if match.group(1) == "cmii" else StreamKind.CMCC
    return kind, int(match.group(2)), match.group(3)


@dataclasses.dataclass
class _File:
    fmt: str
    name: str
    hashed: HashedFile
    pcap: PcapWriter | None = None
    complete: bool = True  # every record of the range is in it


class OpenSet:
    """The files of one stream being written: CmCC one pcap, CmII a JSON-lines and a BER file."""

    def __init__(
        self, directory: Path, sid: StreamId, first_seq: int, skip: frozenset[str] = frozenset()
    ) -> None:
        """Create the ``.part`` files (replacing any a crash left: they are rebuilt).

        Args:
            skip: formats whose file for ``first_seq`` is already in the
                manifest (a crash between the lines of one set).
        """
        self.directory = directory
        self.sid = sid
        self.first_seq = first_seq
        self.last_seq = first_seq - 1
        self.first_us: int | None = None
        self.last_us = 0
        self.files: list[_File] = []
        for fmt in FORMATS[sid.kind]:
            if fmt in skip:
                continue
            name = file_name(sid.kind, first_seq, fmt)
            part = directory / part_name(name)
            part.unlink(missing_ok=True)
            entry = _File(fmt, name, HashedFile(part))
            if fmt == "pcap":
                entry.pcap = PcapWriter(entry.hashed, linktype=LINKTYPE_RAW)  # type: ignore[arg-type]
            self.files.append(entry)

    @property
    def size(self) -> int:
        """Octets in the largest file of the set (what rotation by size looks at)."""
        return max((f.hashed.size for f in self.files), default=0)

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1

    def write(self, record: LogRecord) -> None:
        """Add one log record (the next in sequence) to every file of the set."""
        if self.first_us is None:
            self.first_us = record.received_us
        self.last_seq, self.last_us = record.seq, record.received_us
        for entry in self.files:
            try:
                if entry.fmt == "pcap":
                    self._packet(entry, record)
                elif entry.fmt == "ber":
                    entry.hashed.write(record_envelope(self.sid, record, redelivered=False))
                else:
                    envelope = fast.decode_envelope(
                        record_envelope(self.sid, record, redelivered=False)
                    )
                    line = json.dumps(to_json(envelope), separators=(",", ":"))
                    entry.hashed.write(line.encode() + b"\n")
            except (PDUError, TypeError, ValueError) as exc:
                # A record that cannot be shown this way is left out of this
                # file (the log keeps it); the manifest says the file is not complete.
                entry.complete = False
                log.warning("%s %d: not in %s: %s", self.sid, record.seq, entry.fmt, exc)

    def _packet(self, entry: _File, record: LogRecord) -> None:
        apdu = fast.decode_cc(record.payload)
        if not is_ip_packet(apdu.payload):
            raise ValueError("CC payload is not an IP packet")
        header = apdu.header
        when = header.time_stamp if header and header.time_stamp else record.received
        assert entry.pcap is not None
        entry.pcap.write(apdu.payload, when)

    def flush(self, sync_over: float = math.inf) -> None:
        """Hand what was written to the kernel; fsync it too once ``sync_over``
        octets are unsynced, so a set's 64 MiB reach the disk as they are
        written, not in one burst at its close (the log shares that disk)."""
        for entry in self.files:
            entry.hashed.flush()
        if sum(entry.hashed.unsynced for entry in self.files) >= sync_over:
            for entry in self.files:
                entry.hashed.sync()

    def finish(self, manifest: ManifestWriter) -> list[dict[str, Any]]:
        """Close the set (blocking): fsync, manifest lines, hash files, final names.

        Returns:
            The manifest entries written.
        """
        for entry in self.files:
            entry.hashed.close(hash_file=False)
        assert self.first_us is not None, "a set is closed only once it holds a record"
        entries = []
        for entry in self.files:
            fields = {
                "file": entry.name,
                "stream": self.sid.kind.value.lower(),
                "format": entry.fmt,
                "size": entry.hashed.size,
                "sha256": entry.hashed.hexdigest(),
                "first_seq": self.first_seq,
                "last_seq": self.last_seq,
                "first_time": iso_time(from_us(self.first_us)),
                "last_time": iso_time(from_us(self.last_us)),
                "complete": entry.complete,
            }
            entries.append(manifest.append(fields))
        for entry in self.files:
            finalise(self.directory, entry.name, entry.hashed.hexdigest())
        fsync_dir(self.directory)
        return entries

    def abandon(self) -> None:
        """Close the files as they are (no manifest): a restart rebuilds them from the log."""
        for entry in self.files:
            entry.hashed.close(hash_file=False)


def finalise(directory: Path, name: str, digest: str) -> None:
    """``NAME.sha256``, then ``.NAME.part`` -> ``NAME``."""
    final = directory / name
    write_sha256(final, digest)
    part = directory / part_name(name)
    if part.exists():
        os.rename(part, final)


class WarrantFiles:
    """``DIR/HANDLE``: its manifest, and what a crash left there."""

    def __init__(self, root: Path, handle: str, signer: Signer) -> None:
        """Create ``root/handle`` (0700) and open its manifest.

        Raises:
            ManifestError: the manifest is not one (nothing is written there then).
            OSError: the directory cannot be made or read.
        """
        self.directory = root / handle
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.manifest = ManifestWriter(self.directory / MANIFEST, signer)

    def roll_forward(self) -> int:
        """Finish every file that has its manifest line but not yet its name or hash file.

        Returns:
            How many files were finished.
        """
        done = 0
        for name, entry in self.manifest.files.items():
            final, part = self.directory / name, self.directory / part_name(name)
            if not final.exists() and part.exists():
                if sha256_of(part) != entry.get("sha256"):
                    log.error("%s: does not match its manifest line; left as it is", part.name)
                    continue
                finalise(self.directory, name, entry["sha256"])
                done += 1
            elif final.exists() and not final.with_name(name + ".sha256").exists():
                write_sha256(final, entry["sha256"])
                done += 1
        if done:
            fsync_dir(self.directory)
        return done

    def resume(self, kind: StreamKind, start: int) -> tuple[int, int | None, frozenset[str]]:
        """Where the stream's files go on after a restart.

        Args:
            start: the stream's first stored sequence number (where a stream
                without files starts).

        Returns:
            (next sequence number to write; the last sequence of the set
            that starts there, if one of its files is already in the
            manifest, else None; the formats already there).
        """
        position = None
        for fmt in FORMATS[kind]:
            last = [
                e["last_seq"]
                for e in self.manifest.files.values()
                if e.get("stream") == kind.value.lower() and e.get("format") == fmt
            ]
            after = max(last) + 1 if last else start
            position = after if position is None else min(position, after)
        assert position is not None
        skip, target = set(), None
        for fmt in FORMATS[kind]:
            entry = self.manifest.files.get(file_name(kind, position, fmt))
            if entry is not None:
                skip.add(fmt)
                target = entry["last_seq"]
        return position, target, frozenset(skip)

    def leftovers(self, kind: StreamKind) -> list[Path]:
        """``.part`` files of the stream that have no manifest line."""
        out = []
        for path in sorted(self.directory.glob(".*.part")):
            name = path.name[1 : -len(".part")]
            parsed = parse_name(name)
            if parsed is not None and parsed[0] is kind and name not in self.manifest.files:
                out.append(path)
        return out
