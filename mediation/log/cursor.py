"""Reading a stream: cursors, the in-memory ring, disk reads, named positions.

A cursor reads durable records from any sequence number on. Recent records
come from a bounded ring in memory (a list slice: no copy of the payloads,
no disk, already plaintext), older ones from the segments through the
sparse index in a worker thread, decrypted by ``segments.read_range``. A
named cursor's acknowledged position is persisted (``cursors.json``,
atomic replace), so an agency resumes where it acked.
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

import trio

from mediation.durable import write_atomic
from mediation.log import format as F
from mediation.log.config import LogConfig
from mediation.log.crypto import LogKey
from mediation.log.errors import LogClosed, LogCorrupted, LogError, RecordsUnavailable
from mediation.log.index import SegmentTable
from mediation.log.recovery import Recovered
from mediation.log.segments import Chunk, read_range
from mediation.pdu import StreamId

CURSORS = "cursors.json"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
RING_OVERHEAD = 120  # bytes a ring entry costs beyond its payload (tuple, ints, slot)
Item = F.LogRecord | F.Checkpoint


class CursorStore:
    """Named cursor positions of one stream: ``{name: next expected sequence}``."""

    def __init__(self, directory: Path) -> None:
        self._path = directory / CURSORS
        self._positions: dict[str, int] = {}
        self._dirty_since = math.inf
        self.on_dirty: Callable[[], None] = lambda: None  # the stream asks its timer
        try:
            data = json.loads(self._path.read_text("ascii"))
            self._positions = {str(k): int(v) for k, v in data["cursors"].items()}
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, AttributeError):
            raise LogCorrupted(f"{self._path}: not a cursor file") from None

    def get(self, name: str) -> int | None:
        return self._positions.get(name)

    def set(self, name: str, next_expected: int) -> None:
        """Move ``name`` forward (a stale, smaller ack changes nothing)."""
        if next_expected > self._positions.get(name, -1):
            self._positions[name] = next_expected
            if self._dirty_since == math.inf:
                self._dirty_since = trio.current_time()
                self.on_dirty()

    def due_at(self, interval: float) -> float:
        """When unsaved positions should be written (inf: nothing to write)."""
        return self._dirty_since + interval

    def snapshot(self) -> str | None:
        """The positions to write, marking them written (None: nothing new)."""
        if self._dirty_since == math.inf:
            return None
        self._dirty_since = math.inf
        return json.dumps({"version": 1, "cursors": self._positions}, sort_keys=True)

    def write(self, data: str) -> None:
        """Write a snapshot: temp file, fsync, rename, fsync the directory (blocking)."""
        write_atomic(self._path, data.encode("ascii"), 0o640)

    def retry_later(self) -> None:
        """Writing failed: the positions are unsaved again (tried after the interval)."""
        if self._dirty_since == math.inf:
            self._dirty_since = trio.current_time()
            self.on_dirty()


class RingShare:
    """How many bytes of recent records each stream keeps in memory.

    One object shared by every stream of a log, so a stream opening or
    closing changes every stream's share at once (each trims on its next
    append).
    """

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        self.limit = limit


class ReadSide:
    """The read half of a stream: what is durable, the ring, the segment table."""

    def __init__(
        self,
        stream: StreamId,
        directory: Path,
        config: LogConfig,
        recovered: Recovered,
        key: LogKey | None,
    ) -> None:
        self.id = stream
        self.directory = directory
        self.label = F.stream_label(stream)
        self._closed = False
        self._read_key = key
        self._durable_seq = recovered.next_seq - 1
        self._first_seq = recovered.first_seq
        self._ring: list[F.LogRecord] = []
        self._ring_base = recovered.next_seq  # sequence number of _ring[0]
        self._ring_bytes = 0
        self._rings = RingShare(config.ring_bytes)  # the log gives its shared one
        self._checkpoints: deque[F.Checkpoint] = deque(maxlen=config.checkpoint_memory)
        self._durable_event = trio.Event()
        self._table = SegmentTable(
            directory,
            recovered.segments,
            recovered.active_first,
            recovered.active_index,
            config.index_interval,
        )
        self.cursors = CursorStore(directory)

    @property
    def durable_seq(self) -> int:
        """The highest sequence number on disk (-1: none yet)."""
        return self._durable_seq

    @property
    def first_seq(self) -> int:
        """The lowest sequence number still stored (retention removes older)."""
        return self._first_seq

    @property
    def latest_checkpoint(self) -> F.Checkpoint | None:
        """The newest durable checkpoint written since the stream was opened."""
        return self._checkpoints[-1] if self._checkpoints else None

    async def wait_durable(self, seq: int) -> None:
        """Return once record ``seq`` is durable.

        Raises:
            LogClosed: the stream closed first.
        """
        if self._durable_seq >= seq:
            await trio.lowlevel.checkpoint()
            return
        while self._durable_seq < seq:
            if self._closed:
                raise LogClosed(f"{self.label}: closed before sequence {seq} was stored")
            await self._durable_event.wait()

    def cursor(self, start_seq: int, checkpoints: bool = False) -> Cursor:
        """A reader from ``start_seq`` on (``checkpoints``: also yield checkpoints)."""
        return Cursor(self, start_seq, None, checkpoints)

    def named_cursor(self, name: str, default_start: int = 0, checkpoints: bool = False) -> Cursor:
        """A reader that resumes where ``name`` last acknowledged.

        Args:
            name: opaque, like an agency endpoint id: ``[A-Za-z0-9._-]{1,64}``.
            default_start: where a cursor never acknowledged starts.
        """
        start = self.cursors.get(name)
        return Cursor(self, default_start if start is None else start, name, checkpoints)

    def _ring_trim(self) -> None:
        """Drop the oldest quarter of the ring: one list move per many appends."""
        target, ring, i, size = self._rings.limit * 3 // 4, self._ring, 0, self._ring_bytes
        while size > target and i < len(ring):
            size -= len(ring[i].payload) + RING_OVERHEAD
            i += 1
        del ring[:i]
        self._ring_base += i
        self._ring_bytes = size

    def _publish(self, chunk: Chunk) -> None:
        """A chunk is durable: show its records and checkpoints to readers."""
        if chunk.last_seq > self._durable_seq:
            self._durable_seq = chunk.last_seq
        self._checkpoints.extend(chunk.checkpoints)
        self._table.add(chunk)
        self._wake_readers()

    def _wake_readers(self) -> None:
        self._durable_event.set()
        self._durable_event = trio.Event()

    def _read_memory(self, pos: int, limit: int, cp_after: int | None) -> list[Item] | None:
        """Durable items from ``pos`` held in memory; None: go to the disk."""
        if pos < self._first_seq:
            raise RecordsUnavailable(self.label, pos, self._first_seq)
        durable = self._durable_seq
        if pos <= durable and pos < self._ring_base:
            return None
        end = durable + 1 if durable < pos + limit else pos + limit  # min(), without the call
        items: list[Item] = (
            self._ring[pos - self._ring_base : end - self._ring_base] if pos < end else []
        )
        if cp_after is None:
            return items
        fresh = [c for c in self._checkpoints if cp_after < c.last_seq < end]
        return _merge(items, fresh, pos) if fresh else items

    def _read_disk(
        self, pos: int, limit: int, cp_after: int | None, hint: tuple[int, Path, int] | None
    ) -> tuple[list[Item], tuple[int, Path, int] | None]:
        """Read from the segments, across segment ends (blocking: run in a thread).

        Returns:
            The items, and where a sequential reader continues (None: look it up).
        """
        end = min(self._durable_seq, self._ring_base - 1)
        items: list[Item] = []
        empty = 0
        while len(items) < limit and pos <= end:
            if hint is not None and hint[0] == pos:
                path, offset = hint[1], hint[2]
            else:
                try:
                    path, offset = self._table.locate(pos)
                except LookupError:
                    raise RecordsUnavailable(self.label, pos, self._first_seq) from None
            result = read_range(
                path, self.id, offset, pos, end, limit - len(items), cp_after, self._read_key
            )
            items.extend(result.items)
            empty = 0 if result.next_seq > pos else empty + 1
            if empty > 1:
                raise LogCorrupted(f"{self.label}: sequence {pos} is durable but not on disk")
            pos = result.next_seq
            hint = None if result.at_end else (pos, path, result.offset)
        return items, hint


def _merge(records: list[Item], checkpoints: list[F.Checkpoint], pos: int) -> list[Item]:
    """Records with each checkpoint placed after the record it covers."""
    out: list[Item] = []
    done = 0
    for cp in checkpoints:
        cut = cp.last_seq - pos + 1
        if cut > done:
            out.extend(records[done:cut])
            done = cut
        out.append(cp)
    out.extend(records[done:])
    return out


class Cursor:
    """A reader of one stream from a sequence number on.

    ``await cursor.read(n)`` returns up to n durable items, waiting for the
    first; ``await cursor.next()`` returns one; ``async for`` iterates. Items
    are ``LogRecord`` (and ``Checkpoint`` if the cursor was made with
    ``checkpoints=True``), in log order.
    """

    def __init__(self, side: ReadSide, position: int, name: str | None, checkpoints: bool) -> None:
        if name is not None and not _NAME.fullmatch(name):
            raise LogError("cursor name: 1 to 64 of A-Z a-z 0-9 . _ -")
        if position < 0:
            raise LogError(f"cursor position: must be 0 or more, got {position}")
        self._side = side
        self.name = name
        self._pos = position  # next sequence number not yet fetched
        self._want_cps = checkpoints
        self._cp_after: int | None = position - 1 if checkpoints else None
        self._hint: tuple[int, Path, int] | None = None
        self._buf: deque[Item] = deque()
        self.acked: int | None = side.cursors.get(name) if name else None

    @property
    def position(self) -> int:
        """The sequence number of the next record this cursor returns."""
        for item in self._buf:
            if isinstance(item, F.LogRecord):
                return item.seq
        return self._pos

    @property
    def caught_up(self) -> bool:
        """Nothing durable is left to read now (a cheap test: no read, no allocation).

        True until the log publishes more: a delivery round that finds it so
        can sleep on the log's wake-up instead of running a round that reads
        nothing.
        """
        if self._buf:
            return False
        side = self._side
        if self._pos <= side._durable_seq:
            return False
        cp_after, checkpoints = self._cp_after, side._checkpoints
        return cp_after is None or not checkpoints or checkpoints[-1].last_seq <= cp_after

    @staticmethod
    def any_behind(cursors: Iterable[Cursor | None]) -> bool:
        """Whether one of ``cursors`` (None: a stream not yet opened) is not :attr:`caught_up`:
        a delivery round that sent runs another at once only then, else the
        log's wake-up starts the next (no empty round)."""
        return any(cursor is not None and not cursor.caught_up for cursor in cursors)

    def seek(self, seq: int) -> None:
        """Read from ``seq`` next (an agency's replay, or a resume)."""
        self._pos, self._hint = seq, None
        self._buf.clear()
        self._cp_after = seq - 1 if self._want_cps else None

    def read_nowait(self, max_records: int = 1024) -> list[Item] | None:
        """Up to ``max_records`` items durable in memory now, without waiting or yielding.

        Returns:
            The items (empty: none yet), or None when the next ones are on
            disk only (``read`` fetches them).

        Raises:
            RecordsUnavailable: the position was removed by retention.
            LogClosed: the stream closed and nothing is left to read.
        """
        if self._buf:
            return [self._buf.popleft() for _ in range(min(max_records, len(self._buf)))]
        side = self._side
        items = side._read_memory(self._pos, max_records, self._cp_after)
        if items:
            self._advance(items)
        elif items is not None and side._closed:
            raise LogClosed(f"{side.label}: closed")
        return items

    async def read(self, max_records: int = 1024) -> list[Item]:
        """Up to ``max_records`` items, waiting until there is at least one.

        Raises:
            RecordsUnavailable: the position was removed by retention.
            LogClosed: the stream closed while waiting.
        """
        if self._buf:
            n = min(max_records, len(self._buf))
            return [self._buf.popleft() for _ in range(n)]
        side = self._side
        waited = False  # a wait is a checkpoint: a reader woken by a commit takes one step
        while True:
            items = side._read_memory(self._pos, max_records, self._cp_after)
            if items is None:
                items, self._hint = await trio.to_thread.run_sync(
                    side._read_disk, self._pos, max_records, self._cp_after, self._hint
                )
                waited = True
            if items:
                if not waited:  # before advancing: a cancel here loses nothing
                    await trio.lowlevel.checkpoint()
                self._advance(items)
                return items
            if side._closed:
                raise LogClosed(f"{side.label}: closed")
            await side._durable_event.wait()
            waited = True

    def _advance(self, items: list[Item]) -> None:
        first, last = items[0], items[-1]
        if (
            last.__class__ is F.LogRecord
            and first.__class__ is F.LogRecord
            and last.seq - first.seq + 1 == len(items)
        ):  # consecutive records only (the usual read): no checkpoint among them
            self._pos = last.seq + 1
            return
        for item in reversed(items):
            if isinstance(item, F.LogRecord):
                self._pos = item.seq + 1
                break
        if self._cp_after is not None:
            for item in reversed(items):
                if isinstance(item, F.Checkpoint):
                    self._cp_after = max(self._cp_after, item.last_seq)
                    break

    async def next(self) -> Item:
        """The next item, waiting for it (refills 256 at a time)."""
        if not self._buf:
            self._buf.extend(await self.read(256))
        return self._buf.popleft()

    def __aiter__(self) -> Cursor:
        return self

    async def __anext__(self) -> Item:
        return await self.next()

    def ack(self, next_expected: int) -> None:
        """The agency has everything below ``next_expected``.

        For a named cursor the position is persisted within
        ``cursor_persist_interval`` (and at close); resuming starts there.

        Raises:
            LogError: ``next_expected`` is beyond what has been stored.
        """
        if next_expected > self._side.durable_seq + 1:
            raise LogError(f"{self._side.label}: ack of {next_expected} beyond stored records")
        self.acked = max(self.acked or 0, next_expected)
        if self.name is not None:
            self._side.cursors.set(self.name, next_expected)
