"""The writing side of a stream: a segment writer and the thread that runs it.

Each stream has one writer thread. The event loop hands it sealed chunks in
order; the thread writes each at the end of its segment, fdatasyncs it, and
reports back through the trio token. Why a long-lived thread rather than
``trio.to_thread`` per batch: with a producer keeping the interpreter busy,
every hand-over of the GIL waits for the producer to yield, and per-batch
threads needed about four of them; measured on the development machine, the
gap between one batch's sync and the next write was 9 ms, as long as the
write itself. The dedicated thread takes the next chunk as soon as the last
is durable and needs two hand-overs per batch.

On a failed write (ENOSPC, EFBIG, EIO) the segment is cut back to its last
durable size and the same chunk is tried again every ``retry_interval``
seconds until it succeeds or the stream is closed: order is kept, nothing
written twice, and the event loop is told once when storing stops and once
when it resumes. Any other exception (a bug) is treated the same way and
logged with its traceback, so the stream reports "unable to store" instead
of hanging.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

import trio

from mediation.durable import fsync_dir
from mediation.log import format as F
from mediation.log.segments import Chunk, save_index
from mediation.pdu import StreamId

logger = logging.getLogger(__name__)


def _pwrite_all(fd: int, views: list[memoryview], offset: int) -> None:
    """Write every byte of ``views`` at ``offset`` (pwritev may write less)."""
    while views:
        n = os.pwritev(fd, views, offset)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        offset += n
        while views and n >= len(views[0]):
            n -= len(views.pop(0))
        if n:
            views[0] = views[0][n:]


class SegmentWriter:
    """Appends chunks to the active segment and makes them durable.

    Not thread-safe: the stream's writer thread is its only user.
    On any OSError the segment is cut back to its last durable size, so a
    retry writes the same bytes again at the same place.
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
        self._index = list(index)
        self._fd: int | None = None
        if first is not None:
            self._fd = os.open(directory / F.segment_name(first), os.O_WRONLY)
        self.syncs = 0

    def write(self, chunks: list[Chunk]) -> None:
        """Write chunks of one segment at its end, then one fdatasync.

        Raises:
            OSError: the write or sync failed (ENOSPC, EFBIG, EIO, ...); the
                segment is as it was before the call.
        """
        first = chunks[0]
        if first.new_segment and first.segment != self.first:
            self._roll(first.segment, first.header)
        assert self._fd is not None, "chunk for a segment that was never created"
        total = sum(len(c.data) for c in chunks)
        try:
            _pwrite_all(self._fd, [memoryview(c.data) for c in chunks], self.size)
            os.fdatasync(self._fd)
        except OSError:
            # Cut what did get written; if even that fails, the next attempt
            # overwrites it in place, and recovery would cut it as torn.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.size)
            raise
        self.syncs += 1
        self.size += total
        for c in chunks:
            self._index.extend(c.index)

    def _roll(self, first: int, header: bytes) -> None:
        """Seal the active segment (it is already durable) and start ``first`` with ``header``."""
        self.close()
        path = self.directory / F.segment_name(first)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            os.write(fd, header)
            os.fdatasync(fd)
            fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self._fd, self.first, self.size, self._index = fd, first, len(header), []

    def close(self) -> None:
        """Close the active segment, leaving its sparse index beside it."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        if self.first is not None and self._index:
            with contextlib.suppress(OSError):
                save_index(
                    self.directory / (F.segment_name(self.first)[:20] + F.INDEX_SUFFIX), self._index
                )


class WriterThread:
    """Writes a stream's chunks in order in its own thread (see the module docstring)."""

    def __init__(
        self,
        writer: SegmentWriter,
        retry_interval: float,
        name: str,
        on_done: Callable[[list[Chunk]], None],
        on_failed: Callable[[Exception], None],
        on_restored: Callable[[], None],
    ) -> None:
        self._writer = writer
        self._name = name
        self._retry = retry_interval
        self._queue: queue.SimpleQueue[Chunk | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._token = trio.lowlevel.current_trio_token()
        self._on_done, self._on_failed, self._on_restored = on_done, on_failed, on_restored
        self._thread = threading.Thread(target=self._run, name=f"log-writer {name}", daemon=True)
        self._thread.start()

    @property
    def syncs(self) -> int:
        return self._writer.syncs

    def submit(self, chunk: Chunk) -> None:
        """Queue a sealed chunk (from the event loop; never blocks)."""
        self._queue.put(chunk)

    async def stop(self) -> None:
        """Stop after the queued chunks (or at once if storing is failing); wait for it."""
        self._queue.put(None)
        self._stop.set()
        await trio.to_thread.run_sync(self._thread.join, abandon_on_cancel=False)

    def _post(self, fn: Callable, *args: object) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn, *args)

    def _run(self) -> None:
        try:
            stop = False
            while not stop:
                batch = [self._queue.get()]
                # Group commit proper: whatever queued while the last sync ran
                # goes out with one more, so a slow disk gets larger batches.
                while True:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                if None in batch:
                    stop = True
                    batch = batch[: batch.index(None)]
                for group in _by_segment(batch):
                    if not self._write(group):
                        return
                    self._post(self._on_done, group)
        finally:
            with contextlib.suppress(OSError):
                self._writer.close()

    def _write(self, group: list[Chunk]) -> bool:
        """Write chunks of one segment, retrying until stored; False: stopped first."""
        failing = False
        while True:
            try:
                self._writer.write(group)
            except Exception as exc:
                if not isinstance(exc, OSError):
                    logger.exception("%s: writer failed", self._name)
                if not failing:
                    failing = True
                    self._post(self._on_failed, exc)
                if self._stop.wait(self._retry):
                    return False
                continue
            if failing:
                self._post(self._on_restored)
            return True


def _by_segment(chunks: list[Chunk]) -> list[list[Chunk]]:
    """Split queued chunks where a new segment starts (a roll needs its own sync)."""
    groups: list[list[Chunk]] = []
    for chunk in chunks:
        if not groups or chunk.new_segment:
            groups.append([chunk])
        else:
            groups[-1].append(chunk)
    return groups
