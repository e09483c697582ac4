"""What a stream reports: storage health (and who waits for it), counters, an append's receipt."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import TYPE_CHECKING

import trio

from mediation.log.errors import StorageUnavailable
from mediation.log.recovery import TornTail

if TYPE_CHECKING:
    from collections.abc import Callable

    from mediation.log.stream import StreamLog


@dataclasses.dataclass(frozen=True)
class StorageState:
    """Whether a stream can store records, and since when.

    Attributes:
        healthy: True while records are being stored.
        since: when the current state began (UTC).
        reason: why storing fails (the OS error), None when healthy.
        refused: records refused in the current outage, or in the last one
            once healthy again (for the completeness notice's lostCount).
    """

    healthy: bool
    since: dt.datetime
    reason: str | None = None
    refused: int = 0


logger = logging.getLogger(__name__)


class StorageWatch:
    """A stream's storage state, as its writer reports it, and the tasks waiting for a change."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.state = StorageState(True, dt.datetime.now(dt.UTC))
        self._changed = trio.Event()

    def refuse(self) -> StorageUnavailable:
        """A record refused while storing fails: counted; the error for its appender."""
        state = self.state = dataclasses.replace(self.state, refused=self.state.refused + 1)
        return StorageUnavailable(self.label, state.since, state.reason or "")

    def failed(self, exc: Exception) -> None:
        """Storing stopped (the writer's ``OSError``, or a bug's exception)."""
        reason = getattr(exc, "strerror", None) or repr(exc)
        self._set(StorageState(False, dt.datetime.now(dt.UTC), reason))
        logger.error("%s: unable to store: %s", self.label, reason)

    def restored(self) -> None:
        """Storing works again (the outage's refused count is kept)."""
        self._set(StorageState(True, dt.datetime.now(dt.UTC), None, self.state.refused))
        logger.warning("%s: storing again", self.label)

    def _set(self, state: StorageState) -> None:
        self.state = state
        self._changed.set()
        self._changed = trio.Event()

    async def wait_change(self, seen: StorageState) -> StorageState:
        """Return the storage state once it differs from ``seen`` in health."""
        while self.state.healthy == seen.healthy:
            await self._changed.wait()
        return self.state


@dataclasses.dataclass(frozen=True)
class StreamStats:
    appended: int  # records appended since open
    syncs: int  # fdatasync calls made
    durable_seq: int  # highest durable sequence number, -1: none
    batch_sizes: tuple[int, ...]  # records per sync, most recent last (bounded)
    torn: tuple[TornTail, ...]  # what recovery cut at open


class Appended:
    """A record accepted by the log; ``await appended.durable()`` until it is on disk."""

    __slots__ = ("_stream", "seq")

    def __init__(self, stream: StreamLog, seq: int) -> None:
        self._stream = stream
        self.seq = seq

    @property
    def is_durable(self) -> bool:
        return self._stream.durable_seq >= self.seq

    async def durable(self) -> None:
        """Return once the record is fdatasynced.

        Raises:
            LogClosed: the stream was closed before the record was stored.
        """
        await self._stream.wait_durable(self.seq)

    def when_durable(
        self, callback: Callable[[], None], closed: Callable[[], None] | None = None
    ) -> None:
        """Call ``callback()`` in the event loop once the record is fdatasynced.

        At once if it is already; if the stream closes first, ``closed()``
        instead (see :meth:`StreamLog.when_durable`).
        """
        self._stream.when_durable(self.seq, callback, closed)
