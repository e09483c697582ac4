"""The per-tap journal of batches being appended: what makes the tap link exactly once.

Before a batch's first record is appended, :class:`TapJournal` records,
per tap, the batch id and, per stream, the first sequence number and the
count the batch takes there (docs/tap-link.md); the line is written and
fdatasynced by the log's writer thread before it writes any of the batch's
records (the chunk's barrier), in the same turn as the log's own commit:
the event loop never waits for the journal's disk, and while the disk is
behind, the states of several batches go out as one line and one sync.
Each state overwrites the older of two fixed slots of the file in place
(:class:`JournalFile`): the file's size never changes after it is made,
so the sync writes the line's block and no inode (one disk write fewer a
tap batch than appending: docs/tap-link.md, exactly once, step 3).
After a restart, each stream's next sequence number when it was opened
says how much of a journalled batch survived
(:mod:`mediation.server.tap_ingest`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

from mediation.durable import write_atomic, write_synced
from mediation.pdu import StreamId, StreamKind

JOURNAL_DIR = "taps"


@dataclasses.dataclass(frozen=True)
class Span:
    """One stream's share of a batch: ``already`` records stored by an earlier
    attempt, then ``count`` appended by this one from sequence number ``start``."""

    start: int
    count: int
    already: int = 0


@dataclasses.dataclass
class JournalEntry:
    """A batch of a tap being appended, per stream."""

    batch: int
    spans: dict[StreamId, Span]
    loaded: bool = False  # read from disk at start: a crash may have cut it
    stopped: dict[StreamId, int] | None = None  # storing stopped part-way in this process


class TapJournal:
    """Per tap, the batches appended and not yet known durable (durable before their records).

    Each state is one JSON line: ``last`` (the highest batch id ever
    begun) and the entries; an entry is dropped once all its records are
    durable, so a line stays small: about one entry per batch in flight.
    :meth:`begin` returns the barrier that makes the new state durable: the
    log's writer runs it before writing the batch's records, and it writes
    the tap's *latest* state and syncs it (a state supersedes every one
    before it, so one write and one sync cover all the batches begun since
    the last). Where it goes: see :class:`JournalFile` (two slots, the
    newest whole one is the state). A file of JSON lines, or of one JSON
    object (the forms before slots), reads as its last whole line.
    """

    def __init__(self, data_dir: Path) -> None:
        self.directory = data_dir / JOURNAL_DIR
        self._taps: dict[str, tuple[int, dict[int, JournalEntry]]] = {}
        self._files: dict[str, JournalFile] = {}

    def _path(self, tap: str) -> Path:
        return self.directory / f"{tap}.journal"

    def state(self, tap: str) -> tuple[int, dict[int, JournalEntry]]:
        """``(last, entries by batch id)`` of ``tap`` (read from disk the first time)."""
        if tap not in self._taps:
            self._taps[tap] = self._load(tap)
        return self._taps[tap]

    def _load(self, tap: str) -> tuple[int, dict[int, JournalEntry]]:
        try:
            raw = self._path(tap).read_bytes()
        except FileNotFoundError:
            return 0, {}
        version, line = newest_slot(raw)
        if version:
            file = self._files[tap] = JournalFile(self._path(tap))
            file.version = version  # the next write takes the other slot
            data = json.loads(line)
        else:  # lines (before slots)
            data = None
            for line in reversed(raw.splitlines()):
                try:
                    data = json.loads(line)
                    break
                except ValueError:
                    continue  # cut by a crash: its batch was never appended
        if data is None:
            return 0, {}
        entries = {}
        for item in data["entries"]:
            spans = {}
            for key, (start, count, already) in item["spans"].items():
                handle, kind = key.rsplit("/", 1)
                spans[StreamId(handle, StreamKind(kind))] = Span(start, count, already)
            entries[item["batch"]] = JournalEntry(item["batch"], spans, loaded=True)
        return int(data["last"]), entries

    def reset(self, tap: str) -> None:
        """Forget the tap's batches (its ids start again); durable on return."""
        self._taps[tap] = (0, {})
        self._set(tap)()

    def begin(self, tap: str, entry: JournalEntry, done: list[int]) -> Callable[[], None]:
        """Record ``entry``, dropping the entries in ``done``; the barrier that makes it durable.

        The caller must not yield between this and appending the batch, or
        another append could land inside a span; and none of the batch's
        records may be written before the barrier has returned (it blocks:
        the log's writer thread runs it).
        """
        last, entries = self.state(tap)
        for batch in done:
            entries.pop(batch, None)
        entries[entry.batch] = entry
        self._taps[tap] = (max(last, entry.batch), entries)
        return self._set(tap)

    def _set(self, tap: str) -> Callable[[], None]:
        """Make the tap's state its latest line; the barrier that writes it."""
        last, entries = self._taps[tap]
        file = self._files.get(tap)
        if file is None:
            file = self._files[tap] = JournalFile(self._path(tap))
        return file.set(state_line(last, entries.values()))


def state_line(last: int, entries: Iterable[JournalEntry]) -> bytes:
    """A tap's state as its journal line: ``json.dumps`` of it, octet for octet, written by hand.

    ``{"last": L, "entries": [{"batch": B, "spans": {"handle/kind": [start,
    count, already], ...}}, ...]}`` and a newline; a few f-strings a batch
    instead of the encoder's calls (tests/test_hot_calls_same.py proves it
    the same as ``json.dumps`` on every state).
    """
    parts = []
    for e in entries:
        spans = []
        for sid, x in e.spans.items():
            handle = sid.warrant_handle  # visible ASCII (StreamId checks it)
            if '"' in handle or "\\" in handle:  # the only ones JSON escapes: its encoder's
                key = json.dumps(str(sid))
            else:
                key = f'"{handle}/{sid.kind._value_}"'
            spans.append(f"{key}: [{x.start}, {x.count}, {x.already}]")
        parts.append(f'{{"batch": {e.batch}, "spans": {{{", ".join(spans)}}}}}')
    return f'{{"last": {last}, "entries": [{", ".join(parts)}]}}\n'.encode()


class JournalFile:
    """One tap's journal file: the event loop sets states, writer threads make them durable.

    The file is two slots of ``size`` octets (a multiple of 4 KiB, so a
    write torn by a power cut damages one slot's blocks only). A state is
    written, with a header (a magic, its version, its length and CRC-32),
    over the slot of the one before the newest (version ``n`` goes in slot
    ``n % 2``), with the write's own sync. The newest slot whose header
    and CRC hold is the state: a write cut by a crash (none of its
    batches' records were written yet: the barrier had not returned)
    leaves the one before, which the other slot still holds. In place, the
    file's size never changes, so the sync writes no inode. A process's
    first write, a state too large for a slot, and the write after a
    failed one replace the file (``write_atomic``, slots sized to fit).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # one writer thread at a time
        self._fd: int | None = None  # open in place; None: the next write replaces the file
        self._size = 0  # of a slot
        self.version = 0  # of the newest state written (or read at start)
        self._latest: tuple[int, bytes] = (0, b"")  # (version, line): the loop's
        self._synced = 0  # the version known durable

    def set(self, line: bytes) -> Callable[[], None]:
        """The tap's new state (from the event loop); the barrier that makes it durable."""
        version = self._latest[0] + 1
        self._latest = (version, line)
        return functools.partial(self.sync_to, version)

    def sync_to(self, version: int) -> None:
        """Return once the state of ``version`` (or a later one) is durable (blocking).

        Raises:
            OSError: the write or sync failed; the next attempt replaces the file.
        """
        if self._synced >= version:
            return
        with self._lock:
            if self._synced >= version:
                return
            latest, line = self._latest
            try:
                self._write(line)
            except OSError:
                fd, self._fd = self._fd, None
                if fd is not None:
                    os.close(fd)
                raise
            self._synced = latest

    def _write(self, line: bytes) -> None:
        version = self.version + 1
        slot = _slot(version, line)
        fd = self._fd
        if fd is not None and len(slot) <= self._size:
            write_synced(fd, [memoryview(slot)], (version % 2) * self._size)
            self.version = version
            return
        if fd is not None:
            self._fd = None
            os.close(fd)
        size = SLOT_BYTES
        while size < len(slot):
            size *= 2
        image = bytearray(2 * size)  # written zeros: later writes change no block map
        at = (version % 2) * size
        image[at : at + len(slot)] = slot
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        write_atomic(self.path, image)
        self._fd = os.open(self.path, os.O_WRONLY)
        self._size, self.version = size, version


SLOT_BYTES = 4096
_MAGIC = b"TJS1"
_HEAD = struct.Struct(">4sQII")  # magic, version, length, CRC-32 of the line


def _slot(version: int, line: bytes) -> bytes:
    return _HEAD.pack(_MAGIC, version, len(line), zlib.crc32(line)) + line


def newest_slot(data: bytes) -> tuple[int, bytes]:
    """The newest whole state of a slotted journal file: (version, line); (0, b"") if none.

    A file of lines (before slots) has no slot: (0, b"").
    """
    best = (0, b"")
    half = len(data) // 2
    if not half or half % SLOT_BYTES or len(data) != 2 * half:
        return best
    for at in (0, half):
        magic, version, size, crc = _HEAD.unpack_from(data, at)
        line = data[at + _HEAD.size : at + _HEAD.size + size]
        if magic != _MAGIC or len(line) != size or zlib.crc32(line) != crc:
            continue  # torn by a crash, or never written
        if (version % 2) * half == at and version > best[0]:
            best = (version, bytes(line))
    return best
