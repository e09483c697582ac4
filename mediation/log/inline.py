"""Writing a held batch in the event loop's own thread (light load).

:meth:`mediation.log.writer.WriterPool.held` hands a small batch (a tap
batch's CmII and CmCC at light load) to :func:`write_inline` instead of a
pool thread when no thread is at work and :class:`InlineBudget` allows it:
the writes are made here and their reports called at once, as a pool
thread's turns would be, with no thread woken, no GIL hand-over and no
wake-up of the loop for the reports (docs/evidence-log.md, "Writing: group
commit"). The pool's lock and bookkeeping stay the pool's: this module is
its friend, not a second owner.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mediation.log.segments import Chunk
    from mediation.log.writer import StreamWriter, WriterPool

# A held batch of at most this many octets, with no pool thread at work, is
# written by the event loop's thread itself at held()'s exit (light load: a
# tap batch of ~15 PDUs, ~25 KiB). Handing it to a thread cost more than the
# writes: the thread's wake (Condition.notify was ~7% of the loop's
# GIL-holding time), a GIL re-take after each of its system calls, and its
# report's wake-up of the loop (docs/architecture.md, "The server at light
# load: writing in the loop"). Larger batches (a busy tap's are 64 KiB and
# more) still go to the threads, so the loop goes on reading while the disk
# syncs.
INLINE_BYTES = 48 * 1024
# ... and while the loop has spent less than INLINE_SHARE of the last
# INLINE_WINDOW seconds writing: under traffic the loop must read, not wait
# for the disk (a batch's three synced writes take ~1.3 ms here, so 70 tap
# batches a second already take ~0.09 s of each second).
INLINE_SHARE = 0.2
INLINE_WINDOW = 1.0
# A write in the loop that took longer than INLINE_SLOW sends held batches to
# the threads for INLINE_PAUSE: the loop must not stall behind a disk that has
# stopped keeping up. Not less: on this project's test VM a batch's three
# synced writes take 1.3 ms (median), 6 ms (p90), 13 ms (p99) with other work
# on the disk, and a pause at every such jitter made the loop write few batches.
# Writes over 25 ms came a few times a minute there: a short pause, so one of
# them does not send a second's batches to the threads.
INLINE_SLOW = 0.025
INLINE_PAUSE = 0.25

Turns = list[tuple["StreamWriter", list["Chunk"]]]


class InlineBudget:
    """When the loop may write held batches itself: size, share of the last second, pauses."""

    def __init__(self) -> None:
        self.max_bytes = INLINE_BYTES  # 0: held batches always go to a thread
        self._after = 0.0  # monotonic: no writing in the loop before then
        self._window = (0.0, 0.0)  # (start, seconds written in the loop since)

    def open(self) -> bool:
        """Whether the loop may write now: no pause, under its share of the window."""
        now = time.monotonic()
        if now < self._after:
            return False
        start, spent = self._window
        if now - start >= INLINE_WINDOW:
            self._window = (now, 0.0)
        elif spent >= INLINE_SHARE * INLINE_WINDOW:  # busy: the loop must read, not wait
            return False
        return True

    def spent(self, began: float, now: float) -> None:
        """The loop wrote from ``began`` to ``now`` (monotonic): counted; slow: a pause."""
        if now - began > INLINE_SLOW:  # the disk is slow: threads for a while
            self._after = now + INLINE_PAUSE
        start, spent = self._window
        self._window = (start, spent + now - began)


def take_turns(ready: deque[StreamWriter], max_bytes: int) -> Turns | None:
    """The ready writers' turns if all are small and healthy (the pool's lock held); else None.

    Args:
        ready: the pool's ready queue; emptied when the turns are taken.
        max_bytes: the most octets queued over all of them.
    """
    total = 0
    for writer in ready:
        if writer.stopping or writer.failing:
            return None
        total += sum(len(chunk.data) for chunk in writer.queue)
        if total > max_bytes:
            return None
    turns = []
    for writer in ready:
        chunks, writer.queue = writer.queue, []
        writer.busy = True
        turns.append((writer, chunks))
    ready.clear()
    return turns


def write_inline(pool: WriterPool, turns: Turns) -> None:
    """Write ``turns`` in this thread (the event loop's); report at once, in order.

    As a pool thread's turns (``WriterPool._run``), then its release, with
    the reports called here instead of posted to the loop.
    """
    posts: list[tuple[object, Callable, tuple]] = []
    pool._local.posts = posts
    done: Turns = []
    began = time.monotonic()
    try:
        for writer, chunks in turns:
            done.append((writer, writer.write_all(chunks)))
            with pool._cond:
                pool._opened(writer)
                if len(pool._open) > pool._max_open:  # as a thread's turn does
                    writer.segment.release()
                    pool._open.pop(writer, None)
    finally:
        del pool._local.posts
        pool.inline.spent(began, time.monotonic())
        for _token, fn, args in posts:
            fn(*args)
        with pool._cond:
            for writer, left in done:
                writer.busy = False
                pool._after(writer, left)
            for writer, chunks in turns[len(done) :]:  # not tried (cannot happen)
                writer.busy = False
                pool._after(writer, chunks)
            if pool._ready or pool._retry:  # a retry, or chunks queued by a report
                pool._wake()
