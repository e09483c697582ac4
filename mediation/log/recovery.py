"""Reopening a stream after a crash: find the durable end, cut a torn tail.

Only the last segment can be torn: a segment is fdatasynced whole before
the next one is created. Its frames are checked one by one (length, CRC,
next sequence number); from the first that fails, the rest of the file is
a torn tail. It is never served and never silently dropped: the bytes are
moved to ``quarantine/``, the cut is recorded in ``recovery.jsonl`` and
reported to the caller, and the sequence continues after the last good
record. A record reported durable was fdatasynced, so it is before the cut.

The last segment may also end in zeros: its writer keeps zeros ahead of
the records while it is open (``segments.SegmentWriter``), cut only when
the segment is rolled or closed. Zeros alone after the last good frame are
that fill, not damage: they are cut without a word. A frame torn over the
fill is a torn tail as above; the quarantine keeps its bytes up to the
fill (the zeros after the last nonzero byte are not kept).

An encrypted stream never appends to a segment an earlier opening wrote
records to (the nonce argument in ``crypto``): if the last segment holds
data records, the next record starts a new segment; if it holds none (only
a header, perhaps checkpoints), it is rewritten with a new salt, so
whatever a torn tail held was encrypted under a key no one uses again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path

from mediation.durable import fsync_dir, truncate_synced, write_atomic
from mediation.log import format as F
from mediation.log.crypto import LogKey, LogKeyRequired, SegmentCipher
from mediation.log.errors import LogCorrupted, LogError
from mediation.log.journal import RECOVERY, append_entry, now_iso
from mediation.log.retention import removed_prefix
from mediation.log.segments import SegmentScan, list_segments, save_index, scan_segment
from mediation.pdu import StreamId

QUARANTINE = "quarantine"
logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TornTail:
    """A cut made at reopening."""

    segment: str
    offset: int
    bytes: int
    first_seq: int  # the sequence number the torn bytes would have started with
    reason: str
    quarantine: str  # where the bytes were kept, relative to the stream directory


@dataclasses.dataclass(frozen=True)
class Recovered:
    """Where a reopened stream stands."""

    next_seq: int
    chain: bytes
    first_seq: int  # lowest sequence number still stored
    segments: tuple[tuple[int, Path], ...]
    active_first: int | None  # None: the next record starts a segment
    active_size: int
    active_index: tuple[tuple[int, int], ...]
    since_checkpoint: int  # records after the last checkpoint
    torn: tuple[TornTail, ...]
    cipher: SegmentCipher | None = None  # the active segment's, when encrypted


def _quarantine(
    directory: Path, label: str, path: Path, offset: int, first_seq: int, reason: str
) -> TornTail:
    """Move ``path``'s bytes from ``offset`` on aside (up to a zero fill) and cut them off."""
    qdir = directory / QUARANTINE
    qdir.mkdir(exist_ok=True)
    with open(path, "rb") as f:
        f.seek(offset)
        tail = f.read()
    tail = tail[: F.fill_start(tail)]
    target = qdir / f"{path.name}.{offset}.{time.time_ns()}.torn"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, tail)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(qdir)
    torn = TornTail(path.name, offset, len(tail), first_seq, reason, f"{QUARANTINE}/{target.name}")
    append_entry(
        directory / RECOVERY,
        {"event": "torn-tail-cut", "time": now_iso(), **dataclasses.asdict(torn)},
    )
    if offset == 0:
        path.unlink()
    else:
        truncate_synced(path, offset)
    fsync_dir(directory)
    logger.warning(
        "%s: torn tail cut at %s byte %d (%d bytes, from sequence %d): %s",
        label,
        path.name,
        offset,
        len(tail),
        first_seq,
        reason,
    )
    return torn


def _finish_retention(directory: Path, removed_through: int) -> list[tuple[int, Path]]:
    """Delete segments the retention journal already records as removed.

    A crash between journalling a removal and deleting the file leaves them.
    """
    segments = list_segments(directory)
    for _start, path in [s for s in segments if s[0] < removed_through]:
        path.unlink()
        with contextlib.suppress(FileNotFoundError):
            path.with_suffix(F.INDEX_SUFFIX).unlink()
    return [s for s in segments if s[0] >= removed_through]


def recover_stream(
    directory: Path, stream: StreamId, index_interval: int, key: LogKey | None
) -> Recovered:
    """Open a stream directory for writing, creating it, cutting a torn tail.

    Args:
        key: the log key: new records are encrypted (format version 2).
            None: they are not (version 1; tests and the benchmark).

    Raises:
        LogCorrupted: a segment belongs to another stream, or a damaged file
            is not explainable as a crash (a large segment with a bad header,
            a record with a good CRC that does not decrypt).
        LogError: the last segment is encrypted with another key, or
            encrypted and no key was given.
        OSError: the directory cannot be read or written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    label = F.stream_label(stream)
    prefix = removed_prefix(directory, stream)
    if prefix.fault:
        raise LogCorrupted(f"{label}: {prefix.fault}")
    segments = _finish_retention(directory, prefix.next_seq)
    torn: list[TornTail] = []
    while segments:
        start, path = segments[-1]
        try:
            scan = scan_segment(path, index_interval, key)
        except ValueError as exc:
            if path.stat().st_size > F.MAX_HEADER_SIZE + F.FRAME_SIZE:
                raise LogCorrupted(f"{label}: {path.name}: {exc}") from None
            torn.append(_quarantine(directory, label, path, 0, start, f"unfinished segment: {exc}"))
            segments.pop()
            continue
        except LogKeyRequired:
            raise LogError(f"{label}: {path.name} is encrypted: give the log key") from None
        except LogError as exc:
            raise type(exc)(f"{label}: {exc}") from None
        if scan.header.stream != stream or scan.header.first_seq != start:
            raise LogCorrupted(f"{label}: {path.name} belongs elsewhere")
        if scan.fault:
            torn.append(
                _quarantine(directory, label, path, scan.good_end, scan.next_seq, scan.fault)
            )
        elif scan.good_end < scan.size:  # the open segment's zero fill: ours, not damage
            truncate_synced(path, scan.good_end)
        since = scan.since_checkpoint
        if scan.records == 0 and len(segments) > 1:
            # Killed just after a roll: the tail to sign may end the previous segment.
            since = scan_segment(segments[-2][1], index_interval, chain=False).since_checkpoint
        common = (scan.next_seq, scan.chain, segments[0][0], tuple(segments))
        if key is None:
            return Recovered(*common, start, scan.good_end, tuple(scan.index), since, tuple(torn))
        if scan.records:
            _seal_index(path, scan)
            return Recovered(*common, None, 0, (), since, tuple(torn))
        size, cipher = _new_salt(path, scan, key)
        return Recovered(*common, start, size, (), since, tuple(torn), cipher)
    return Recovered(
        prefix.next_seq, prefix.chain, prefix.next_seq, (), None, 0, (), 0, tuple(torn)
    )


def _seal_index(path: Path, scan: SegmentScan) -> None:
    """Leave a sealed segment's sparse index beside it if a crash left none."""
    index = path.with_suffix(F.INDEX_SUFFIX)
    if scan.index and not index.exists():
        with contextlib.suppress(OSError):
            save_index(index, scan.index)


def _new_salt(path: Path, scan: SegmentScan, key: LogKey) -> tuple[int, SegmentCipher]:
    """Rewrite a segment without data records under a new salt (atomic replace).

    Its frames (checkpoints: not encrypted) are kept as they are; any data
    record a torn tail held was encrypted under the old key, which is
    never used again.

    Returns:
        The segment's new size and its cipher, for the writer to go on.
    """
    header = scan.header
    frames = path.read_bytes()[header.size : scan.good_end]
    encoded, cipher = key.new_segment(header.stream, header.first_seq, header.prev_chain)
    write_atomic(path, encoded + frames, 0o640)
    return len(encoded) + len(frames), cipher
