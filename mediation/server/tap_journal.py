"""The per-tap journal of batches being appended: what makes the tap link exactly once.

Before a batch's first record is appended, :class:`TapJournal` writes and
fdatasyncs, per tap, the batch id and, per stream, the first sequence
number and the count the batch takes there (docs/tap-link.md). After a
restart, each stream's next sequence number when it was opened says how
much of a journalled batch survived (:mod:`mediation.server.tap_ingest`).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from pathlib import Path

from mediation.durable import write_atomic
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
    """Per tap, the batches appended and not yet known durable (fsynced before their records).

    Each state is one JSON line: ``last`` (the highest batch id ever
    begun) and the entries; an entry is dropped once all its records are
    durable, so a line stays small: about one entry per batch in flight.
    A new state is *appended* and fdatasynced (one sync per batch, in the
    event loop, which must not yield here); the last whole line is the
    state, so a line cut by a crash (its batch was never appended) leaves
    the one before. The first write of a process, and any past
    ``COMPACT_BYTES``, replaces the file with one line (``write_atomic``);
    a failed append does too, next time, so nothing is ever glued onto a
    cut line. A file of one JSON object without a newline (the form
    before lines) reads the same.
    """

    COMPACT_BYTES = 64 * 1024

    def __init__(self, data_dir: Path) -> None:
        self.directory = data_dir / JOURNAL_DIR
        self._taps: dict[str, tuple[int, dict[int, JournalEntry]]] = {}
        self._files: dict[str, tuple[int, int]] = {}  # tap -> (fd appending, bytes in file)

    def _path(self, tap: str) -> Path:
        return self.directory / f"{tap}.journal"

    def state(self, tap: str) -> tuple[int, dict[int, JournalEntry]]:
        """``(last, entries by batch id)`` of ``tap`` (read from disk the first time)."""
        if tap not in self._taps:
            self._taps[tap] = self._load(tap)
        return self._taps[tap]

    def _load(self, tap: str) -> tuple[int, dict[int, JournalEntry]]:
        try:
            lines = self._path(tap).read_bytes().splitlines()
        except FileNotFoundError:
            return 0, {}
        data = None
        for line in reversed(lines):
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
        """Forget the tap's batches (its ids start again)."""
        self._taps[tap] = (0, {})
        self._write(tap)

    def begin(self, tap: str, entry: JournalEntry, done: list[int]) -> None:
        """Record ``entry`` durably, dropping the entries in ``done``.

        Blocking on purpose: the caller must not yield between this and
        appending the batch, or another append could land inside a span.
        """
        last, entries = self.state(tap)
        for batch in done:
            entries.pop(batch, None)
        entries[entry.batch] = entry
        self._taps[tap] = (max(last, entry.batch), entries)
        self._write(tap)

    def _write(self, tap: str) -> None:
        last, entries = self._taps[tap]
        data = {
            "last": last,
            "entries": [
                {
                    "batch": e.batch,
                    "spans": {
                        str(sid): [x.start, x.count, x.already] for sid, x in e.spans.items()
                    },
                }
                for e in entries.values()
            ],
        }
        line = json.dumps(data).encode() + b"\n"
        fd, size = self._files.pop(tap, (None, 0))
        if fd is not None and size + len(line) <= self.COMPACT_BYTES:
            try:
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(errno.ENOSPC, "journal: short write")
                os.fdatasync(fd)
            except OSError:
                os.close(fd)  # the next state replaces the file: nothing after a cut line
                raise
            self._files[tap] = (fd, size + len(line))
            return
        if fd is not None:
            os.close(fd)
        self.directory.mkdir(mode=0o700, exist_ok=True)
        write_atomic(self._path(tap), line)
        self._files[tap] = (os.open(self._path(tap), os.O_WRONLY | os.O_APPEND), len(line))
