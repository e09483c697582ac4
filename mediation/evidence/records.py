"""Reading a warrant stream's records offline, and choosing what an export covers.

The exporter reads the segment files directly (no trio, no stream lock), so
it works beside a running server: the server only appends, every frame is
checked by its CRC, and a frame still being written at the end of the last
segment is where reading stops. Records are decrypted through the log's
one reader (``crypto.BodyReader``).

An export covers whole signed spans: from just after a checkpoint (or the
stream's first record) to a checkpoint, so every exported record is proven
by a signature and the chain value it starts from is signed too.
"""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Iterator
from pathlib import Path

from mediation.log import format as F
from mediation.log.crypto import BodyReader, LogKey, LogKeyRequired, RecordUnreadable, WrongLogKey
from mediation.log.errors import LogCorrupted
from mediation.log.retention import removed_prefix
from mediation.log.segments import list_segments
from mediation.pdu import StreamId

Item = F.LogRecord | F.Checkpoint


class ExportError(Exception):
    """The log cannot be exported as it is (names the stream and the reason)."""


def stream_items(
    directory: Path, key: LogKey | None, stream: StreamId | None = None
) -> Iterator[Item]:
    """Every record (and, given ``stream``, checkpoint) of a stream directory, in log order,
    in plaintext: the one offline reader (``mediate export``, ``mediate confirm``).

    Reads the files only (no lock: a running server may be appending). A
    segment header or a frame cut short at the end of the last segment, or
    its zero fill, ends the read (a server writing it, or a crash recovery
    will cut).

    Raises:
        LogCorrupted: a bad segment header or damaged frame before the end, a
            record that does not decrypt or decode.
        WrongLogKey: a segment written with another log key.
        LogKeyRequired: encrypted segments and no key.
    """
    segments = list_segments(directory)
    for n, (_first, path) in enumerate(segments):
        last = n == len(segments) - 1
        data = path.read_bytes()
        try:
            header = F.decode_header(data)
        except ValueError as exc:
            if last:
                return  # a segment being created
            raise LogCorrupted(f"{path.name}: {exc}") from None
        reader = BodyReader(header, key, path.name)
        if not reader.readable:
            raise LogKeyRequired(f"{path.name}: encrypted, and no log key was given")
        offset = header.size
        while offset < len(data):
            try:
                body, offset = F.read_frame(data, offset)
            except F.FrameError as exc:
                if last and (exc.torn or F.in_fill(data, exc.offset)):  # or its zero fill
                    return
                raise LogCorrupted(f"{path.name} byte {exc.offset}: {exc.reason}") from None
            try:
                if body[0] == F.TYPE_DATA:
                    yield F.decode_data(memoryview(reader.body(body)))
                elif body[0] == F.TYPE_CHECKPOINT and stream is not None:
                    yield F.decode_checkpoint(body, stream)
            except (RecordUnreadable, ValueError) as exc:
                raise LogCorrupted(f"{path.name}: sequence {F.body_seq(body)} {exc}") from None


def read_stream(directory: Path, stream: StreamId, key: LogKey | None) -> Iterator[Item]:
    """:func:`stream_items` for an export: every record and checkpoint.

    Raises:
        ExportError: as :func:`stream_items` raises, naming the stream.
    """
    label = F.stream_label(stream)
    try:
        yield from stream_items(directory, key, stream)
    except LogCorrupted as exc:
        raise ExportError(f"{label}: {exc} (`mediate log verify` shows the damage)") from None
    except (WrongLogKey, LogKeyRequired) as exc:
        raise ExportError(f"{label}: {exc}") from None


@dataclasses.dataclass
class Span:
    """What of one stream an export holds, and what it cannot."""

    stream: StreamId
    first: int | None = None  # first exported sequence number (None: nothing)
    last: int | None = None
    anchor: int | None = None  # the checkpoint before ``first`` (None: from genesis)
    stored_first: int | None = None  # what the log holds
    stored_last: int | None = None
    wanted_first: int | None = None  # the records inside --from/--to
    wanted_last: int | None = None
    unsigned: tuple[int, int] | None = None  # wanted, but after the last checkpoint
    purged: int = 0  # records 0..purged-1 were removed by retention (its journal says)

    def to_json(self) -> dict[str, object]:
        return {
            "first": self.first,
            "last": self.last,
            "anchor_checkpoint": self.anchor,
            "stored": [self.stored_first, self.stored_last],
            "wanted": [self.wanted_first, self.wanted_last],
            "gaps": self.gaps(),
        }

    def gaps(self) -> list[dict[str, object]]:
        """Sequence ranges asked for that the export does not hold, with why."""
        out: list[dict[str, object]] = []
        if self.purged:
            why = "removed by retention (the log's signed retention journal)"
            out.append({"first": 0, "last": self.purged - 1, "why": why})
        gone = self.stored_first if self.stored_first is not None else self.purged
        if gone > self.purged:
            out.append({"first": self.purged, "last": gone - 1, "why": "not in the log"})
        if self.unsigned is not None:
            first, last = self.unsigned
            why = "after the last checkpoint: not yet signed, so not exported"
            out.append({"first": first, "last": last, "why": why})
        return out


def choose_span(
    directory: Path,
    stream: StreamId,
    key: LogKey | None,
    since_us: int | None,
    until_us: int | None,
) -> Span:
    """The records of one stream to export for a receive-time window.

    The window (inclusive; None: open) is widened to whole signed spans:
    back to just after the checkpoint before its first record, on to the
    first checkpoint at or after its last. Records past the last checkpoint
    are not exported (``Span.unsigned``).

    Raises:
        ExportError: as :func:`read_stream`.
    """
    span = Span(stream, purged=removed_prefix(directory, stream).next_seq)
    times = array("q")
    checkpoints: list[int] = []
    for item in read_stream(directory, stream, key):
        if isinstance(item, F.Checkpoint):
            checkpoints.append(item.last_seq)
            continue
        if span.stored_first is None:
            span.stored_first = item.seq
        span.stored_last = item.seq
        times.append(item.received_us)
    if span.stored_first is not None:
        _widen(span, times, checkpoints, since_us, until_us)
    return span


def _widen(
    span: Span, times: array, checkpoints: list[int], since_us: int | None, until_us: int | None
) -> None:
    """Set the span's wanted records, then widen them to the signed spans around them."""
    base = span.stored_first or 0
    inside = [
        i
        for i, t in enumerate(times)
        if (since_us is None or t >= since_us) and (until_us is None or t <= until_us)
    ]
    if not inside:
        return
    span.wanted_first, span.wanted_last = base + inside[0], base + inside[-1]
    before = [c for c in checkpoints if c < span.wanted_first]
    after = [c for c in checkpoints if c >= span.wanted_last]
    span.anchor = before[-1] if before else None
    first = span.anchor + 1 if span.anchor is not None else base
    last = after[0] if after else (checkpoints[-1] if checkpoints else first - 1)
    if last < span.wanted_last:
        span.unsigned = (max(last + 1, span.wanted_first), span.wanted_last)
    if last >= first:
        span.first, span.last = first, last


def start_chain(span: Span, first_item: Item) -> bytes:
    """The chain value before the span's first record: its anchor checkpoint's, or genesis.

    (A span never starts right after records retention removed: retention
    removes a warrant's streams whole.)
    """
    if isinstance(first_item, F.Checkpoint) and first_item.last_seq == (span.first or 0) - 1:
        return first_item.chain
    return F.genesis(span.stream)


def span_items(directory: Path, span: Span, key: LogKey | None) -> Iterator[Item]:
    """The span's records and the checkpoints that sign them (and its anchor), in order."""
    if span.first is None or span.last is None:
        return
    low = span.first - 1
    for item in read_stream(directory, span.stream, key):
        if isinstance(item, F.Checkpoint):
            if low <= item.last_seq <= span.last:
                yield item
        elif span.first <= item.seq <= span.last:
            yield item
        elif item.seq > span.last:
            return
