"""The errors of the evidence log.

Messages name the stream by its opaque handle (``w-3f9a1c/cmii``), never by
a case identity: they end up in server logs and on operators' screens.
"""

from __future__ import annotations

import datetime as dt


class LogError(Exception):
    """Something about the evidence log was wrong; the message says what."""


class StorageUnavailable(LogError):
    """The stream cannot store records now (disk full, I/O error).

    The record was *not* appended and has no sequence number: the caller
    counts it as lost so a completeness notice can say how many.

    Attributes:
        stream: the stream, as ``handle/kind``.
        since: when storing stopped working (UTC).
        reason: the operating system's words (``No space left on device``).
    """

    def __init__(self, stream: str, since: dt.datetime, reason: str) -> None:
        self.stream = stream
        self.since = since
        self.reason = reason
        stamp = since.isoformat(timespec="seconds")
        super().__init__(f"{stream}: unable to store since {stamp}: {reason}")


class RecordsUnavailable(LogError):
    """A read asked for records the log no longer has (removed by retention).

    Attributes:
        first_available: the lowest sequence number still stored.
    """

    def __init__(self, stream: str, requested: int, first_available: int) -> None:
        self.stream = stream
        self.requested = requested
        self.first_available = first_available
        super().__init__(
            f"{stream}: sequence {requested} is no longer stored "
            f"(removed by retention; first stored is {first_available})"
        )


class LogClosed(LogError):
    """The stream was closed; nothing more can be appended or awaited."""


class LogCorrupted(LogError):
    """Stored data failed a check where no torn tail can explain it."""
