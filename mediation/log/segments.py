"""Segment files: writing in batches, scanning, reading ranges, the sparse index.

Plain blocking file I/O: the log's writer threads run :class:`SegmentWriter`
(:mod:`mediation.log.writer`), and the verifier and recovery call the rest
directly.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from mediation.durable import create_open, truncate_synced, write_atomic, write_synced
from mediation.log import format as F
from mediation.log.crypto import BodyReader, LogKey, RecordUnreadable
from mediation.log.errors import LogCorrupted
from mediation.pdu import StreamId

INDEX_MAGIC = b"MLOGIDX1"
INDEX_ENTRY = struct.Struct(">QQ")


class Chunk:
    """Frames bound for one segment, made durable by one fdatasync.

    Built by the stream in the event loop; once ``sealed`` it is handed to
    the writer thread and never changed again.
    """

    __slots__ = (
        "barrier",
        "checkpoints",
        "data",
        "header",
        "index",
        "last_seq",
        "new_segment",
        "records",
        "sealed",
        "segment",
    )

    def __init__(self, segment: int, new_segment: bool, header: bytes) -> None:
        self.segment = segment  # first sequence number of the target segment
        self.new_segment = new_segment  # the writer creates the file first
        self.header = header  # the new segment's encoded header (b"": not new)
        self.data = bytearray()
        self.index: list[tuple[int, int]] = []  # (seq, offset in segment)
        self.last_seq = -1  # last data record in the chunk; -1: checkpoints only
        self.records = 0
        self.checkpoints: list[F.Checkpoint] = []
        self.sealed = False
        # Run by the writer thread before any of the chunk's bytes are written
        # (the tap journal's sync: docs/tap-link.md); raising OSError fails the write.
        self.barrier: Callable[[], None] | None = None


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """The segment files of a stream directory, by first sequence number."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            name = entry.name
            if name.endswith(F.SEGMENT_SUFFIX) and len(name) == 24 and name[:20].isdigit():
                found.append((int(name[:20]), Path(entry.path)))
    found.sort()
    return found


def save_index(path: Path, entries: Iterable[tuple[int, int]]) -> None:
    """Write a sparse index (a hint for readers: never trusted by verification)."""
    body = b"".join(INDEX_ENTRY.pack(seq, off) for seq, off in entries)
    data = INDEX_MAGIC + body + struct.pack(">I", zlib.crc32(body))
    write_atomic(path, data, 0o640)


def load_index(path: Path) -> list[tuple[int, int]] | None:
    """A saved sparse index, or None when missing or damaged."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    body = data[len(INDEX_MAGIC) : -4]
    if (
        not data.startswith(INDEX_MAGIC)
        or len(body) % INDEX_ENTRY.size
        or struct.unpack(">I", data[-4:])[0] != zlib.crc32(body)
    ):
        return None
    return [tuple(e) for e in INDEX_ENTRY.iter_unpack(body)]  # type: ignore[misc]


class SegmentScan(NamedTuple):
    """What a full scan of one segment found."""

    header: F.SegmentHeader
    records: int
    next_seq: int  # one past the last good data record
    chain: bytes  # chain value after the last good data record
    good_end: int  # offset just past the last good frame
    size: int  # file size
    fault: str | None  # why scanning stopped before ``size``; None: clean (maybe zero fill)
    since_checkpoint: int  # good data records after the last checkpoint
    index: list[tuple[int, int]]


def scan_segment(
    path: Path, index_interval: int, key: LogKey | None = None, chain: bool = True
) -> SegmentScan:
    """Check every frame of a segment, as recovery does for the active one.

    Stops at the first frame that is cut short, fails its CRC, or does not
    carry the next sequence number; ``good_end`` is where it stopped. Only
    zero bytes after the last good frame are an open segment's fill
    (:class:`SegmentWriter`), not a fault: ``fault`` is then None and
    ``good_end`` less than ``size``.

    Args:
        key: the log key, to decrypt an encrypted segment's records.
        chain: compute the chain value (which decrypts); False: only find
            frames and sequence numbers (``SegmentScan.chain`` is then the
            header's), which needs no key.

    Raises:
        ValueError: the segment header itself is bad (see ``decode_header``).
        LogCorrupted: a record with a good CRC does not decrypt (altered):
            no crash explains it.
        WrongLogKey: the segment was written with another log key.
        LogKeyRequired: ``chain`` of an encrypted segment without a key.
        OSError: the file cannot be read.
    """
    data = path.read_bytes()
    header = F.decode_header(data)
    reader = BodyReader(header, key, path.name) if chain else None
    value, seq, offset = header.prev_chain, header.first_seq, header.size
    records = since = 0
    shortest = F.CLEAR_META_SIZE + F.TAG_SIZE if header.encrypted else F.META_SIZE
    index: list[tuple[int, int]] = []
    fault = None
    while offset < len(data):
        try:
            body, stop = F.read_frame(data, offset)
        except F.FrameError as exc:
            if F.fill_start(data, offset) > offset:
                fault = exc.reason
            break
        kind = body[0]
        if kind == F.TYPE_DATA and len(body) >= shortest and F.body_seq(body) == seq:
            if seq % index_interval == 0:
                index.append((seq, offset))
            if reader is not None:
                try:
                    value = F.chain_next(value, reader.body(body))
                except RecordUnreadable as exc:
                    raise LogCorrupted(f"{path.name} byte {offset}: sequence {seq} {exc}") from None
            seq, records, since = seq + 1, records + 1, since + 1
        elif kind == F.TYPE_CHECKPOINT and len(body) == F.CHECKPOINT.size:
            since = 0
        else:
            fault = f"unexpected record (type {kind}, sequence {F.body_seq(body)})"
            break
        offset = stop
    return SegmentScan(header, records, seq, value, offset, len(data), fault, since, index)


class DiskRead(NamedTuple):
    items: list  # LogRecord and (if asked) Checkpoint, in file order
    offset: int  # where the next read of this segment continues
    next_seq: int
    at_end: bool  # the segment has nothing more (up to the bound)


def read_range(
    path: Path,
    stream: StreamId,
    offset: int,
    start_seq: int,
    end_seq: int,
    max_records: int,
    checkpoints_after: int | None,
    key: LogKey | None = None,
) -> DiskRead:
    """Records ``start_seq..end_seq`` (at most ``max_records``) from a segment, in plaintext.

    ``offset`` is a frame boundary at or before ``start_seq`` (from the
    sparse index), or 0 for the segment's first frame. Unless
    ``checkpoints_after`` is None, checkpoints met on the way that cover a
    sequence number in ``checkpoints_after+1..end_seq`` are included.

    Raises:
        LogCorrupted: a frame fails its check below ``end_seq`` (durable
            data), the header is bad, or a record does not decrypt.
        WrongLogKey, LogKeyRequired: an encrypted segment and no right key.
    """
    items: list = []
    seq = start_seq
    label = F.stream_label(stream)
    with open(path, "rb", buffering=1 << 20) as f:
        try:
            header = F.decode_header(f.read(F.MAX_HEADER_SIZE))
        except ValueError as exc:
            raise LogCorrupted(f"{label}: {path.name}: {exc}") from None
        reader = BodyReader(header, key, f"{label} {path.name}")
        offset = max(offset, header.size)
        f.seek(offset)
        while len(items) < max_records:
            head = f.read(F.FRAME_SIZE)
            if len(head) < F.FRAME_SIZE:
                return DiskRead(items, offset, seq, True)
            length, crc = F.FRAME.unpack(head)
            body = f.read(length) if 0 < length <= F.MAX_BODY else b""
            # Length 0: an open segment's zero fill (no frame is empty), its written end.
            if not length or len(body) != length or zlib.crc32(body) != crc:
                if seq > end_seq:
                    return DiskRead(items, offset, seq, True)
                raise LogCorrupted(f"{label}: {path.name} byte {offset}: bad frame")
            if body[0] == F.TYPE_DATA:
                rec_seq = F.body_seq(memoryview(body))
                if rec_seq > end_seq:
                    return DiskRead(items, offset, seq, True)
                if rec_seq >= start_seq:
                    try:
                        items.append(F.decode_data(memoryview(reader.body(body))))
                    except (RecordUnreadable, ValueError) as exc:
                        raise LogCorrupted(
                            f"{label}: {path.name} byte {offset}: sequence {rec_seq}: {exc}"
                        ) from None
                    seq = rec_seq + 1
            elif checkpoints_after is not None and body[0] == F.TYPE_CHECKPOINT:
                cp = F.decode_checkpoint(memoryview(body), stream)
                if checkpoints_after < cp.last_seq <= end_seq:
                    items.append(cp)
            offset += F.FRAME_SIZE + length
    return DiskRead(items, offset, seq, False)


# Zero fill ahead (docs/evidence-log.md, "Segment file: zero fill"): a synced
# write that grows the file also writes its inode (the size) and commits the
# file system's journal; one over blocks already written does neither.
# Measured on the project's VM, 11 KB synced: an append 130-153 us of CPU and
# 306-357 us of wall time against 78-96 and 185-216 for an overwrite one day,
# 94-101 and 339-426 against 88-95 and 291-318 another (docs/architecture.md,
# "Segments zero-filled ahead"). fallocate does not help: an unwritten extent
# still needs its metadata changed at the first write. So a write that passes the zero-filled end
# carries zeros after its records, FILL_FIRST the first time in a segment,
# doubling up to FILL_MAX, ending on a 4 KiB block.
FILL_FIRST = 16 * 1024
FILL_MAX = 256 * 1024
_BLOCK = 4096
_ZEROS = memoryview(bytes(FILL_MAX))
# A write that failed for want of room is tried again without the fill.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class SegmentWriter:
    """Appends chunks to the active segment and makes them durable.

    Not thread-safe: one pool thread at a time uses it (its stream's).
    On any OSError the segment is cut back to its last durable size, so a
    retry writes the same bytes again at the same place. The file is opened
    on the first write and may be closed between writes (:meth:`release`).

    While a segment is active its file holds zeros after the records (the
    fill, at most ``FILL_MAX`` octets), so most syncs overwrite blocks that
    exist and the file's size does not change; the fill is cut when the
    segment is rolled or closed, so a sealed segment is exactly its frames.
    Recovery cuts what a crash left of it (:mod:`mediation.log.recovery`).
    """

    def __init__(
        self,
        directory: Path,
        stream: StreamId,
        first: int | None,
        size: int,
        index: list[tuple[int, int]],
    ) -> None:
        self.directory = directory
        self.stream = stream
        self.first = first  # first seq of the active segment; None: no segment yet
        self.size = size  # durable bytes in the active segment
        self.filled = size  # the file's size: zeros from ``size`` to here
        self._fill = FILL_FIRST  # the next fill's size (0: no room for one in this segment)
        self._index = list(index)
        self._fd: int | None = None
        self.syncs = 0

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def write(self, chunks: list[Chunk]) -> None:
        """Write chunks of one segment at its end, then one fdatasync.

        Each chunk's ``barrier`` runs first, before any byte is written.

        Raises:
            OSError: a barrier, the write or the sync failed (ENOSPC, EFBIG,
                EIO, ...); the segment is as it was before the call (its
                fill perhaps cut).
        """
        for chunk in chunks:  # e.g. the tap journal: durable before these records are written
            if chunk.barrier is not None:
                chunk.barrier()
        first = chunks[0]
        if first.new_segment and first.segment != self.first:
            self._roll(first.segment, first.header)
        elif self._fd is None:
            assert self.first is not None, "chunk for a segment that was never created"
            self._fd = os.open(self.directory / F.segment_name(self.first), os.O_WRONLY)
        fd = self._fd
        assert fd is not None
        views = [memoryview(c.data) for c in chunks]
        end = self.size + sum(len(v) for v in views)
        try:
            if end <= self.filled or not self._fill:
                self._write(fd, views, end)
            else:
                self._write_filled(fd, views, end)
        except OSError:
            # Cut what did get written; if even that fails, the next attempt
            # overwrites it in place, and recovery would cut it as torn.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self.size)
            self.filled = self.size  # the next write makes its fill anew
            raise
        self.syncs += 1
        self.size = end
        for c in chunks:
            self._index.extend(c.index)

    def _write(self, fd: int, views: list[memoryview], end: int) -> None:
        write_synced(fd, views, self.size)
        self.filled = max(self.filled, end)

    def _write_filled(self, fd: int, views: list[memoryview], end: int) -> None:
        """The records and a zero fill after them, in one synced write.

        Without room for the fill (ENOSPC, EDQUOT, EFBIG), the records alone,
        and no fill in this segment again: the records must not be lost to it.
        """
        filled = max((end + self._fill) // _BLOCK * _BLOCK, end)
        try:
            write_synced(fd, [*views, _ZEROS[: filled - end]], self.size)
        except OSError as exc:
            if exc.errno not in _NO_ROOM:
                raise
            os.ftruncate(fd, self.size)  # what part of the fill did get written
            self.filled, self._fill = self.size, 0
            self._write(fd, views, end)
            return
        self.filled, self._fill = filled, min(self._fill * 2, FILL_MAX)

    def _cut_fill(self) -> None:
        """Cut the zero fill off the active segment, durably: it ends with its last frame."""
        if self.first is None or self.filled <= self.size:
            return
        truncate_synced(self.directory / F.segment_name(self.first), self.size, self._fd)
        self.filled = self.size

    def _roll(self, first: int, header: bytes) -> None:
        """Seal the active segment (it is already durable) and start ``first`` with ``header``.

        The sealed segment's fill is cut durably before the new one exists, so
        only the last segment ever ends in zeros.
        """
        self.close()
        fd = create_open(self.directory / F.segment_name(first), header, 0o640)
        self._fd, self.first, self.size, self._index = fd, first, len(header), []
        self.filled, self._fill = self.size, FILL_FIRST

    def release(self) -> None:
        """Close the file for now (everything written is durable); the next write reopens it.

        The fill stays: the next write is an overwrite again.
        """
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        """Cut the fill, close the active segment, leave its sparse index beside it.

        Raises:
            OSError: the fill could not be cut (the segment stays open).
        """
        try:
            self._cut_fill()
        finally:
            self.release()
        if self.first is not None and self._index:
            with contextlib.suppress(OSError):
                save_index(
                    self.directory / (F.segment_name(self.first)[:20] + F.INDEX_SUFFIX), self._index
                )
