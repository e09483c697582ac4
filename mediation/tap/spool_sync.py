"""The tap spool's sync thread: records written in the event loop made durable behind it.

The link writes a batch's spool record in its event loop without a sync
(``TapSpool.append(..., sync=False)``, a page-cache write) and tells the
:class:`SpoolSyncer`, whose own thread then makes every record written so
far durable in one ``fdatasync`` (``TapSpool.sync_written``). So sealing
the next batch never waits for the last one's sync (it did: the spool's
lock was held through each append's sync in a worker thread), and a slow
disk's syncs cover several batches each. The event loop is woken only for
a task waiting in :meth:`SpoolSyncer.until` (an acknowledgement is
trusted only once its batches are durable), not once a batch.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Protocol

import trio


class SyncedSpool(Protocol):
    """What the syncer needs of the spool (:class:`mediation.tap.spool.TapSpool`)."""

    @property
    def durable(self) -> int: ...
    def sync_written(self) -> int: ...


class SpoolSyncer:
    """One thread syncing ``spool`` whenever :meth:`written` says there is more.

    Made and stopped in the event loop's thread (the link's timer task).

    Args:
        spool: the spool; only its ``sync_written`` runs in the thread.
        token: the event loop's, to wake a task waiting in :meth:`until`.
    """

    def __init__(self, spool: SyncedSpool, token: trio.lowlevel.TrioToken) -> None:
        self._spool = spool
        self._token = token
        self._cond = threading.Condition()
        self._wanted = False
        self._stopping = False
        self._waiting: trio.Event | None = None  # a task in until(), set from the thread
        self.error: OSError | None = None  # the sync that failed; the thread has ended
        self._thread = threading.Thread(target=self._run, name="tap-spool-sync", daemon=True)
        self._thread.start()

    def written(self) -> None:
        """A record was written unsynced: sync soon (a wake-up only if the thread sleeps)."""
        with self._cond:
            self._wanted = True
            self._cond.notify()

    def stop(self) -> None:
        """End the thread after its sync in progress, if any (not waited for: the
        spool's close syncs what is left, after that sync, under the spool's lock)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()

    async def until(self, upto: int) -> None:
        """Return once every record up to batch ``upto`` is durable.

        Raises:
            OSError: a sync failed (the spool's disk): nothing more becomes durable.
        """
        while self._spool.durable < upto:
            if self.error is not None:
                raise self.error
            event = trio.Event()
            self._waiting = event
            if self._spool.durable >= upto or self.error is not None:
                continue  # the thread synced after the check above, maybe before the event
            await event.wait()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._wanted and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                self._wanted = False
            try:
                self._spool.sync_written()
            except OSError as exc:
                self.error = exc
                self._wake()
                return
            self._wake()

    def _wake(self) -> None:
        event = self._waiting
        if event is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(event.set)
