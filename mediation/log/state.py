"""What a stream reports: storage health, counters, and an append's receipt."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import TYPE_CHECKING

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
