"""A capture file a crash left open whose records the log no longer holds.

Normally the file open at a crash is rebuilt from the log. When the log
has lost those records (retention removed them before the restart), the
file is the only copy: it is kept as it is, a torn last record cut off,
and entered in the manifest with ``"complete": false``. Its range and
times come from its content: the sequence numbers and mediation times of
the envelopes (BER, JSON lines); for a pcap, which holds no sequence
numbers, the range counts its packets from the number in its name and the
times are the packets' capture times.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from mediation.durable import fsync_dir
from mediation.evidence.pcap import PcapReader
from mediation.lea import rawfile
from mediation.lea.files import cut_torn_lines, cut_torn_pcap, sha256_of
from mediation.pdu import fast
from mediation.pdu.jsonview import iso_time
from mediation.server.capture_files import WarrantFiles, finalise, parse_name

log = logging.getLogger("mediation.server.delivery")


def enter_incomplete(files: WarrantFiles, part: Path) -> dict[str, Any] | None:
    """Enter ``.NAME.part`` in the manifest as incomplete and give it its name (blocking).

    An empty file (or one that is not readable as its format) is removed:
    it holds nothing to keep.

    Returns:
        The manifest entry, or None when the file was removed.
    """
    name = part.name[1 : -len(".part")]
    parsed = parse_name(name)
    if parsed is None:
        return None
    kind, first, fmt = parsed
    try:
        units = _units(part, fmt)
    except (ValueError, rawfile.RawFileError) as exc:
        log.error("%s: unreadable (%s); removed, its records are gone from the log", name, exc)
        units = []
    if not units:
        part.unlink()
        fsync_dir(part.parent)
        return None
    seqs = [seq if seq is not None else first + i for i, (seq, _when) in enumerate(units)]
    fields = {
        "file": name,
        "stream": kind.value.lower(),
        "format": fmt,
        "size": part.stat().st_size,
        "sha256": sha256_of(part),
        "first_seq": min(seqs),
        "last_seq": max(seqs),
        "first_time": units[0][1],
        "last_time": units[-1][1],
        "complete": False,
    }
    entry = files.manifest.append(fields)
    finalise(files.directory, name, entry["sha256"])
    fsync_dir(files.directory)
    log.warning("%s: kept as incomplete (%d records); the log no longer has them", name, len(seqs))
    return entry


def _units(path: Path, fmt: str) -> list[tuple[int | None, str]]:
    """(sequence number if the format has it, time) of each whole record of a file."""
    if fmt == "pcap":
        cut_torn_pcap(path)
        with PcapReader.open(path) as reader:
            return [(None, iso_time(packet.time)) for packet in reader]
    if fmt == "jsonl":
        cut_torn_lines(path)
        out = []
        with path.open("rb") as handle:
            for line in handle:
                view = json.loads(line)
                out.append((int(view["sequenceNumber"]), str(view["mediationTime"])))
        return out
    messages, torn = rawfile.scan(path)
    if torn:
        good = messages[-1].offset + messages[-1].length if messages else 0
        os.truncate(path, good)
    out = []
    for data in rawfile.read_in_order(path, messages):
        split = fast.split_envelope(data)
        out.append((split.sequence_number, iso_time(split.mediation_time)))
    return out
