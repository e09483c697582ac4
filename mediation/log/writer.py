"""The writing side of the log: the threads shared by all streams (``SegmentWriter``: segments).

A :class:`WriterPool` of at most ``writer_threads`` threads writes for
every stream of the log. A stream hands its :class:`StreamWriter` sealed
chunks in order; the writer is queued once (not once per chunk) on the
pool's ready queue, and a free thread takes it, writes *every* chunk it
holds by then at the end of its segment with one fdatasync (group commit:
a slow disk gets larger batches), and reports back through the trio
token. One thread at a time works for a stream, so its chunks are written
and reported in order; a stream that still has chunks afterwards goes to
the back of the queue, so a busy stream cannot starve the others.

Several streams queued together (a tap batch's CmII and CmCC, inside
:meth:`WriterPool.held`) wake one thread, which writes them back to back
and reports them in one call into the event loop (held at most
``POST_DELAY``); it frees those streams for other threads only after
reporting them, so a stream's reports are never overtaken. A chunk's
``barrier`` (the tap journal's sync) runs before any of its bytes are
written; if it fails, the write fails.

A held batch small enough while no thread is at work is written by the
event loop's thread itself at :meth:`WriterPool.held`'s exit, its reports
called there: at light load that is cheaper than any hand-over
(:mod:`mediation.log.inline`; docs/evidence-log.md, "Writing: group commit").

Why long-lived threads rather than ``trio.to_thread`` per batch: with a
producer keeping the interpreter busy, every hand-over of the GIL waits for
the producer to yield, and per-batch threads needed about four of them;
measured, the gap between one batch's sync and the next write was 9 ms,
as long as the write itself. A waiting pool thread takes the next chunk
as soon as it is queued. Why a pool rather than a thread per stream: a
server of 1,000 warrants has 2,000 streams (docs/architecture.md).

On a failed write (ENOSPC, EFBIG, EIO) the segment is cut back to its last
durable size and the stream is set aside for ``retry_interval`` seconds
(its thread goes on with other streams: one full or failing stream does
not stop another), then the same chunks are tried again, until it succeeds
or the stream is stopped: order is kept, nothing written twice, and the
event loop is told once when storing stops and once when it resumes. Any
other exception (a bug) is treated the same way and logged with its
traceback, so the stream reports "unable to store" instead of hanging.

Segment files are opened when first written and kept open in a
least-recently-used set of at most ``open_segments``; past that, the
descriptor of the stream written longest ago is closed (it is reopened on
its next write), so open files do not grow with the number of streams
(a file being written is not closed: at most ``open_segments`` plus one
per thread are open at any moment). Closing one keeps its segment's zero
fill (``SegmentWriter``): the next write there is still an overwrite.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator

import trio

from mediation.log.inline import InlineBudget, take_turns, write_inline
from mediation.log.segments import Chunk, SegmentWriter

logger = logging.getLogger(__name__)
# The longest a pool thread holds back what it has written from the event loop
# while it writes other streams queued behind (to tell the loop once). Long
# enough for the second stream of a tap batch (a journal sync and two segment
# syncs took over 1 ms a batch in ~60% of batches at light load, and then
# each stream cost the loop its own wake-up: docs/architecture.md).
POST_DELAY = 0.005
HELD_WRITERS = 2  # ... and at most this many streams (a tap batch's CmII and CmCC)


class WriterPool:
    """The writer threads shared by every stream of a log (see the module docstring).

    Args:
        threads: at most this many threads (started as work arrives).
        open_segments: at most this many segment files kept open.
    """

    def __init__(self, threads: int, open_segments: int) -> None:
        self._cond = threading.Condition()
        self._ready: collections.deque[StreamWriter] = collections.deque()
        self._retry: list[tuple[float, int, StreamWriter]] = []  # heap: (when, n, writer)
        self._order = itertools.count()
        self._threads: list[threading.Thread] = []
        self._max_threads = threads
        self._idle = 0  # threads waiting for work
        self._open: collections.OrderedDict[StreamWriter, None] = collections.OrderedDict()
        self._max_open = open_segments
        self._closing = False
        self._holding = 0  # inside held(): wake one thread for all of it, at its end
        self._local = threading.local()  # a pool thread's reports not yet sent
        self.inline = InlineBudget()  # when the loop may write held batches itself
        # Threads' reports posted to the loop and not yet run: a write in the loop
        # reports at once, so it must wait for these (a stream's reports in order).
        self._reports_queued = 0

    @property
    def inline_bytes(self) -> int:
        """A held batch of at most this many octets may be written in the loop (0: never)."""
        return self.inline.max_bytes

    @inline_bytes.setter
    def inline_bytes(self, value: int) -> None:
        self.inline.max_bytes = value

    @property
    def threads(self) -> int:
        """Threads started so far (at most ``writer_threads``)."""
        return len(self._threads)

    @property
    def open_segments(self) -> int:
        """Segment files open now (at most ``open_segments``)."""
        return len(self._open)

    def writer(
        self,
        segment: SegmentWriter,
        retry_interval: float,
        name: str,
        on_done: Callable[[list[Chunk]], None],
        on_failed: Callable[[Exception], None],
        on_restored: Callable[[], None],
    ) -> StreamWriter:
        """A stream's writer on this pool (call from the event loop)."""
        return StreamWriter(self, segment, retry_interval, name, on_done, on_failed, on_restored)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Writers queued inside are written at the end: by one thread woken once, or here.

        What a tap batch going to several streams uses (from the event loop):
        one thread writes them in turn instead of one thread each fighting the
        event loop for the GIL (docs/evidence-log.md, "Group commit"). A small
        batch while no thread is at work (``inline_bytes``) is written by the
        calling thread before this returns, its reports made at once (no
        thread, no wake-up of the loop: light load).
        """
        with self._cond:
            self._holding += 1
        try:
            yield
        finally:
            inline = None
            with self._cond:
                self._holding -= 1
                if not self._holding and self._ready:
                    inline = self._take_inline()
                    if inline is None:
                        self._wake()
            if inline:
                write_inline(self, inline)

    async def aclose(self) -> None:
        """Stop the threads once every writer has stopped; wait for them."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for thread in list(self._threads):
            await trio.to_thread.run_sync(thread.join, abandon_on_cancel=False)

    # -- called with the lock held ----------------------------------------------

    def _take_inline(self) -> list[tuple[StreamWriter, list[Chunk]]] | None:
        """The ready writers' turns, for :func:`write_inline`; None: for a thread."""
        if self._idle < len(self._threads) or self._retry:  # threads at work: under load
            return None
        if self._reports_queued:  # a thread's report still on its way: ours would overtake it
            return None
        if not self.inline.open():
            return None
        return take_turns(self._ready, self.inline.max_bytes)

    def _enqueue(self, writer: StreamWriter) -> None:
        self._ready.append(writer)
        if not self._holding:
            self._wake()

    def _wake(self) -> None:
        """Wake a waiting thread for the ready writers, or start one."""
        if self._idle:
            self._cond.notify()
        elif len(self._threads) < self._max_threads:
            thread = threading.Thread(
                target=self._run, name=f"log-writer {len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _retry_later(self, writer: StreamWriter) -> None:
        writer.retry_at = time.monotonic() + writer.retry_interval
        heapq.heappush(self._retry, (writer.retry_at, next(self._order), writer))

    def _next(self) -> StreamWriter | None:
        """The next writer with work (waiting for one); None: the pool is closing."""
        while True:
            now = time.monotonic()
            while self._retry and self._retry[0][0] <= now:
                when, _n, writer = heapq.heappop(self._retry)
                if writer.retry_at == when:  # not superseded by a stop
                    writer.retry_at = math.inf
                    self._ready.append(writer)
            if self._ready:
                return self._ready.popleft()
            if self._closing:
                return None
            self._idle += 1
            self._cond.wait(self._retry[0][0] - now if self._retry else None)
            self._idle -= 1

    def _opened(self, writer: StreamWriter) -> None:
        """``writer`` just wrote: most recently used; close the oldest past the bound."""
        if not writer.segment.is_open:
            self._open.pop(writer, None)
            return
        self._open[writer] = None
        self._open.move_to_end(writer)
        if len(self._open) <= self._max_open:
            return
        for other in list(self._open):
            if len(self._open) <= self._max_open:
                break
            if other is not writer and not other.busy:
                other.segment.release()
                del self._open[other]

    # -- the threads ------------------------------------------------------------

    def _run(self) -> None:
        posts: list[tuple[trio.lowlevel.TrioToken, Callable, tuple]] = []
        self._local.posts = posts  # what this thread's turns report, sent together
        done: list[tuple[StreamWriter, list[Chunk]]] = []  # written; not yet reported
        since = 0.0
        while True:
            with self._cond:
                # One wake-up of the event loop for the streams written back to
                # back (a tap batch's), but none held back more than POST_DELAY.
                flush = bool(done) and (not self._ready or time.monotonic() - since >= POST_DELAY)
                if not flush:
                    writer = self._next()
                    if writer is None:
                        break
                    chunks, writer.queue = writer.queue, []
                    writer.busy = True
            if flush:
                self._release(done, posts)
                continue
            if not done:
                since = time.monotonic()
            done.append((writer, writer.write_all(chunks)))
            with self._cond:
                self._opened(writer)
                if len(self._open) > self._max_open:  # held back: close it now, not later
                    writer.segment.release()
                    self._open.pop(writer, None)
            if len(done) >= HELD_WRITERS:
                self._release(done, posts)
        self._release(done, posts)

    def _release(
        self,
        done: list[tuple[StreamWriter, list[Chunk]]],
        posts: list[tuple[trio.lowlevel.TrioToken, Callable, tuple]],
    ) -> None:
        """Report what was written, then let other threads have those writers.

        In that order: a stream's reports must reach the loop in the order its
        chunks were written, and another thread may take the writer once free.
        """
        self._post_all(posts)
        with self._cond:
            for writer, left in done:
                writer.busy = False
                self._after(writer, left)
        done.clear()
        self._post_all(posts)  # a writer that stopped just now

    def _post_all(self, posts: list[tuple[trio.lowlevel.TrioToken, Callable, tuple]]) -> None:
        """Send a thread's reports to their event loops, in order, one call per loop; clear.

        Counted until they run (:attr:`_reports_queued`), before the writers
        are freed: a write in the loop must not report ahead of them.
        """
        while posts:
            token = posts[0][0]
            mine = [(fn, args) for t, fn, args in posts if t is token]
            posts[:] = [p for p in posts if p[0] is not token]
            with self._cond:
                self._reports_queued += 1
            try:
                token.run_sync_soon(self._run_reports, mine)
            except trio.RunFinishedError:
                with self._cond:
                    self._reports_queued -= 1

    def _run_reports(self, calls: list[tuple[Callable, tuple]]) -> None:
        """A thread's reports, in the event loop."""
        with self._cond:
            self._reports_queued -= 1
        _call_all(calls)

    def _after(self, writer: StreamWriter, left: list[Chunk]) -> None:
        """Where a writer goes after its turn (lock held)."""
        if left:  # failed: the same chunks first, after a pause (or never, if stopping)
            writer.queue = left + writer.queue
            if writer.stopping:
                writer.finish()
            else:
                self._retry_later(writer)
        elif writer.queue:
            self._ready.append(writer)
        elif writer.stopping:
            writer.finish()
        else:
            writer.scheduled = False


class StreamWriter:
    """One stream's place in a :class:`WriterPool`: its chunks, in order.

    The attributes below the callbacks belong to the pool and change only
    under its lock.
    """

    def __init__(
        self,
        pool: WriterPool,
        segment: SegmentWriter,
        retry_interval: float,
        name: str,
        on_done: Callable[[list[Chunk]], None],
        on_failed: Callable[[Exception], None],
        on_restored: Callable[[], None],
    ) -> None:
        self.pool = pool
        self.segment = segment
        self.retry_interval = retry_interval
        self.name = name
        self._token = trio.lowlevel.current_trio_token()
        self._on_done, self._on_failed, self._on_restored = on_done, on_failed, on_restored
        self._stopped = trio.Event()
        self.queue: list[Chunk] = []
        self.scheduled = False  # in the ready queue, the retry heap or being written
        self.busy = False  # a thread is writing for it now
        self.failing = False
        self.stopping = False
        self.retry_at = math.inf  # in the retry heap until then

    @property
    def syncs(self) -> int:
        return self.segment.syncs

    def submit(self, chunk: Chunk) -> None:
        """Queue a sealed chunk (from the event loop; never blocks on I/O)."""
        with self.pool._cond:
            self.queue.append(chunk)
            if not self.scheduled:
                self.scheduled = True
                self.pool._enqueue(self)

    async def stop(self) -> None:
        """Stop after the queued chunks (at once if storing is failing); wait for it."""
        pool = self.pool
        with pool._cond:
            self.stopping = True
            if not self.scheduled:
                self.scheduled = True
                pool._enqueue(self)  # a thread closes it
            elif self.retry_at != math.inf:  # failing: one last try now, then give up
                self.retry_at = math.inf
                pool._enqueue(self)
        await self._stopped.wait()

    def finish(self) -> None:
        """Close the segment and tell the stream (a pool thread, lock held)."""
        self.queue = []
        with contextlib.suppress(OSError):
            self.segment.close()
        self.pool._open.pop(self, None)
        self._post(self._stopped.set)

    def _post(self, fn: Callable, *args: object) -> None:
        posts = getattr(self.pool._local, "posts", None)
        if posts is not None:  # a pool thread: sent at the end of its run of turns
            posts.append((self._token, fn, args))
            return
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn, *args)

    def write_all(self, chunks: list[Chunk]) -> list[Chunk]:
        """Write ``chunks`` in order, a sync per segment; the ones not stored (a failure)."""
        done = 0
        for group in _by_segment(chunks):
            try:
                self.segment.write(group)
            except Exception as exc:
                if not isinstance(exc, OSError):
                    logger.exception("%s: writer failed", self.name)
                if not self.failing:
                    self.failing = True
                    self._post(self._on_failed, exc)
                return chunks[done:]
            if self.failing:
                self.failing = False
                self._post(self._on_restored)
            self._post(self._on_done, group)
            done += len(group)
        return []


def _call_all(calls: list[tuple[Callable, tuple]]) -> None:
    for fn, args in calls:
        fn(*args)


def _by_segment(chunks: list[Chunk]) -> list[list[Chunk]]:
    """Split queued chunks where a new segment starts (a roll needs its own sync)."""
    groups: list[list[Chunk]] = []
    for chunk in chunks:
        if not groups or chunk.new_segment:
            groups.append([chunk])
        else:
            groups[-1].append(chunk)
    return groups
