"""One timer for every stream of a log: commit deadlines, checkpoints, cursor saves.

A stream asks to be woken at a time (:meth:`StreamTimer.at`); one trio
task sleeps until the earliest time asked for, calls each due stream's
``on_timer(now)`` (which submits, checkpoints, and returns when it next
wants waking, or ``inf``), and writes the due cursor files of all streams
in one worker-thread call. Nothing due: the task sleeps without a timeout,
so an idle log costs no wake-ups. Why not a task per stream: 2,000 streams
would be 2,000 tasks and, under load, as many timeouts to arm and cancel
(docs/architecture.md).
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Protocol

import trio

from mediation.log.cursor import CursorStore


class Timed(Protocol):
    """What the timer wakes: a stream of the log."""

    timer_at: float  # the time it is queued for (inf: none); the timer's to change

    def on_timer(self, now: float) -> float:
        """Do what is due at ``now``; return when to be woken next (inf: not)."""
        ...

    @property
    def cursors(self) -> CursorStore: ...


class StreamTimer:
    """The single timer task of an :class:`~mediation.log.EvidenceLog`."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timed]] = []
        self._order = itertools.count()
        self._wake = trio.Event()
        self._sleeping_until = math.inf
        self._saves: list[Timed] = []
        self.wakeups = 0  # times the task woke (the bench counts them)

    def at(self, stream: Timed, when: float) -> None:
        """Wake ``stream`` at ``when`` (or earlier, if it already asked for earlier)."""
        if when >= stream.timer_at:
            return
        stream.timer_at = when
        heapq.heappush(self._heap, (when, next(self._order), stream))
        if when < self._sleeping_until:
            self._wake.set()

    def save_cursors(self, stream: Timed) -> None:
        """Write ``stream``'s cursor positions in the next batch of cursor saves."""
        self._saves.append(stream)
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Wake streams at their times, until cancelled."""
        task_status.started()
        while True:
            now = trio.current_time()
            heap = self._heap
            while heap and heap[0][0] <= now:
                when, _n, stream = heapq.heappop(heap)
                if stream.timer_at != when:
                    continue  # superseded by an earlier request
                stream.timer_at = math.inf
                following = stream.on_timer(now)
                if following < math.inf:
                    self.at(stream, following)
            if self._saves:
                await self._write_cursors()
                continue
            self._sleeping_until = heap[0][0] if heap else math.inf
            with trio.move_on_at(self._sleeping_until):
                await self._wake.wait()
            self._sleeping_until = -math.inf  # awake: no need to be woken
            self._wake = trio.Event()
            self.wakeups += 1

    async def _write_cursors(self) -> None:
        """Every due cursor file, in one worker-thread call (a full disk: tried later)."""
        saves, self._saves = self._saves, []
        writes = []
        for stream in dict.fromkeys(saves):
            data = stream.cursors.snapshot()
            if data is not None:
                writes.append((stream.cursors, data))
        if writes:
            failed = await trio.to_thread.run_sync(_write_all, writes, abandon_on_cancel=False)
            for store in failed:
                store.retry_later()  # a full disk: acks are kept in memory meanwhile


def _write_all(writes: list[tuple[CursorStore, str]]) -> list[CursorStore]:
    """Write each snapshot (blocking); the stores whose write failed."""
    failed = []
    for store, data in writes:
        try:
            store.write(data)
        except OSError:
            failed.append(store)
    return failed
