"""Retention: whole segments removed once a warrant's retention has passed.

Before a segment file is deleted, a signed line naming the sequence range
it held and the chain value after its last record is appended to the
stream's ``retention.jsonl`` and fsynced. So the log stays verifiable from
what is left: the journal covers ``0..k-1`` contiguously and its last chain
value is the first remaining segment's starting chain value. Sequence
numbers continue after removed records; they are never reused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from pathlib import Path
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mediation.durable import fsync_dir
from mediation.log import format as F
from mediation.log.crypto import LogKey
from mediation.log.errors import LogCorrupted
from mediation.log.journal import RETENTION, append_entry, now_iso, read_entries
from mediation.log.keys import LogSigner, verify_signature
from mediation.log.segments import list_segments, scan_segment
from mediation.pdu import StreamId
from mediation.warrants.retention import DEFAULT_YEARS, years_after

# The default retention: five years after the warrant ends.
DEFAULT_RETENTION_YEARS = DEFAULT_YEARS


def retention_until(warrant_end: dt.datetime, years: int = DEFAULT_RETENTION_YEARS) -> dt.datetime:
    """When a warrant's records may be removed: ``years`` after it ended.

    The date arithmetic is the warrant's (``warrants/retention.py``, which
    imports nothing heavy); the log only keeps this name for its callers.
    """
    return years_after(warrant_end, years)


@dataclasses.dataclass(frozen=True)
class RetentionResult:
    """What retention removed from one stream."""

    stream: str  # handle/kind
    segments: int
    first: int | None  # first removed sequence number (None: nothing)
    last: int | None
    bytes: int = 0  # on disk, segment and index files removed

    @property
    def records(self) -> int:
        return 0 if self.first is None or self.last is None else self.last - self.first + 1


class RemovedPrefix(NamedTuple):
    """The records retention removed, as its journal says."""

    next_seq: int  # first sequence number not removed
    chain: bytes  # chain value after the last removed record
    entries: int
    fault: str | None  # first problem found in the journal, if any


def removed_prefix(
    directory: Path, stream: StreamId, public: Ed25519PublicKey | None = None
) -> RemovedPrefix:
    """Read (and, given a key, check) a stream's retention journal."""
    expected, chain = 0, F.genesis(stream)
    try:
        entries = read_entries(directory / RETENTION)
    except ValueError as exc:
        return RemovedPrefix(expected, chain, 0, f"retention journal: {exc}")
    for n, entry in enumerate(entries):
        try:
            first, last, time_us = int(entry["first"]), int(entry["last"]), int(entry["time_us"])
            after = bytes.fromhex(entry["chain"])
            signature = bytes.fromhex(entry["signature"])
        except (KeyError, ValueError, TypeError):
            return RemovedPrefix(expected, chain, n, f"retention journal entry {n + 1}: malformed")
        if first != expected or last < first:
            return RemovedPrefix(
                expected,
                chain,
                n,
                f"retention journal entry {n + 1}: removes {first}..{last}, expected {expected}..",
            )
        message = F.retention_message(stream, first, last, time_us, after)
        if public is not None and not verify_signature(public, signature, message):
            return RemovedPrefix(
                expected, chain, n, f"retention journal entry {n + 1}: bad signature"
            )
        expected, chain = last + 1, after
    return RemovedPrefix(expected, chain, len(entries), None)


def _segment_end(
    segments: list[tuple[int, Path]], i: int, index_interval: int, key: LogKey | None
) -> tuple[int, bytes]:
    """The last sequence number in segment ``i`` and the chain value after it."""
    if i + 1 < len(segments):
        with open(segments[i + 1][1], "rb") as f:
            header = F.decode_header(f.read(F.MAX_HEADER_SIZE))
        return segments[i + 1][0] - 1, header.prev_chain
    scan = scan_segment(segments[i][1], index_interval, key)
    if scan.fault:
        raise LogCorrupted(f"{segments[i][1].name}: {scan.fault} (recover the stream first)")
    return scan.next_seq - 1, scan.chain


def remove_segments(
    directory: Path,
    stream: StreamId,
    signer: LogSigner,
    until: dt.datetime,
    index_interval: int,
    key: LogKey | None,
) -> RetentionResult:
    """Remove every segment of a closed stream, journalling each first.

    The caller has checked that the retention period has passed and that no
    writer has the stream open. ``key`` decrypts the last segment, whose
    chain value after its last record the journal records.

    Raises:
        OSError: the journal could not be written (nothing more is removed).
        LogCorrupted: the last segment has an unrecovered torn tail.
    """
    segments = list_segments(directory)
    first = last = None
    removed = 0
    for i, (start, path) in enumerate(segments):
        end, chain = _segment_end(segments, i, index_interval, key)
        if end >= start:
            time_us = F.to_us(dt.datetime.now(dt.UTC))
            message = F.retention_message(stream, start, end, time_us, chain)
            append_entry(
                directory / RETENTION,
                {
                    "event": "removed",
                    "first": start,
                    "last": end,
                    "segment": path.name,
                    "chain": chain.hex(),
                    "time": now_iso(),
                    "time_us": time_us,
                    "retention_until": until.isoformat(),
                    "key_id": signer.key_id.hex(),
                    "signature": signer.sign(message).hex(),
                },
            )
            first = start if first is None else first
            last = end
        removed += _size(path) + _size(path.with_suffix(F.INDEX_SUFFIX))
        path.unlink()
        with contextlib.suppress(FileNotFoundError):
            path.with_suffix(F.INDEX_SUFFIX).unlink()
        fsync_dir(directory)
    return RetentionResult(F.stream_label(stream), len(segments), first, last, removed)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
