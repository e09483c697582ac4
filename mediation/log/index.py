"""Where a stored record is: segments by first sequence number, a sparse index in each.

A replay of an old range finds its segment by bisection over the segment
names, then the nearest indexed record at or before it (one every
``index_interval`` records), and reads forward from there: at most
``index_interval - 1`` records are read and skipped, never the log from
its start.
"""

from __future__ import annotations

import bisect
from pathlib import Path

from mediation.log import format as F
from mediation.log.segments import Chunk, load_index, scan_segment


class SegmentTable:
    """The segments of one stream and their sparse indexes (loaded lazily).

    Appended to from the event loop, read from worker threads: segments are
    only ever added at the end and lists only grow, which is safe under the
    GIL for ``bisect`` readers.
    """

    def __init__(
        self,
        directory: Path,
        segments: tuple[tuple[int, Path], ...],
        active_first: int | None,
        active_index: tuple[tuple[int, int], ...],
        interval: int,
    ) -> None:
        self._dir = directory
        self._interval = interval
        self._firsts = [first for first, _ in segments]
        self._index: dict[int, tuple[list[int], list[int]]] = {}
        if active_first is not None:
            self._index[active_first] = ([s for s, _ in active_index], [o for _, o in active_index])

    def add(self, chunk: Chunk) -> None:
        """Take note of a durable chunk: its segment if new, its index entries."""
        if chunk.new_segment and (not self._firsts or self._firsts[-1] != chunk.segment):
            self._firsts.append(chunk.segment)
            self._index[chunk.segment] = ([], [])
        if chunk.index:
            seqs, offsets = self._index.setdefault(chunk.segment, ([], []))
            for seq, offset in chunk.index:
                seqs.append(seq)
                offsets.append(offset)

    def locate(self, seq: int) -> tuple[Path, int]:
        """The segment holding ``seq`` and a frame offset at or before it.

        May read a segment's ``.idx`` file, or scan the segment when that is
        missing: call it from a worker thread.

        Raises:
            LookupError: ``seq`` is before the first segment.
        """
        i = bisect.bisect_right(self._firsts, seq) - 1
        if i < 0:
            raise LookupError(seq)
        first = self._firsts[i]
        index = self._index.get(first)
        if index is None:
            index = self._load(first)
        seqs, offsets = index
        j = bisect.bisect_right(seqs, seq) - 1
        return self._path(first), offsets[j] if j >= 0 else 0  # 0: after the header

    def _path(self, first: int) -> Path:
        return self._dir / F.segment_name(first)

    def _load(self, first: int) -> tuple[list[int], list[int]]:
        entries = load_index(self._path(first).with_suffix(F.INDEX_SUFFIX))
        if entries is None:
            entries = scan_segment(self._path(first), self._interval, chain=False).index
        index = ([s for s, _ in entries], [o for _, o in entries])
        self._index[first] = index
        return index
