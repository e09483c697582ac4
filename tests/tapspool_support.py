"""The tap spool's interface in memory, for the tap link's tests (one fake, not one a file)."""

from __future__ import annotations

import datetime as dt
from typing import Any


class MemorySpool:
    """What the link needs of a spool, in memory: the batches appended, in order.

    Args:
        batches: batches already spooled (say, before the connection).
        ahead: whether the link may send a batch before its append returns
            (the real spool's "Sending ahead"); off: each batch waits for it.
    """

    def __init__(self, batches: list[bytes] | None = None, *, ahead: bool = False) -> None:
        self.batches: list[bytes] = [] if batches is None else batches
        self.acked = 0
        self.overflow = None
        self.sends_ahead = ahead

    @property
    def last_id(self) -> int:
        return len(self.batches)

    def ahead(self, size: int) -> int | None:
        return len(self.batches) + 1 if self.sends_ahead else None

    def append(self, payload: bytes, first: dt.datetime, last: dt.datetime) -> int:
        self.batches.append(payload)
        return len(self.batches)

    def pending(self) -> Any:
        return [(i + 1, b) for i, b in enumerate(self.batches) if i + 1 > self.acked]

    def ack(self, upto: int) -> None:
        assert upto <= len(self.batches), "acknowledged before it was spooled"
        self.acked = max(self.acked, upto)

    def ack_in_memory(self, upto: int) -> bool:
        self.ack(upto)
        return True

    def clear_overflow(self) -> None:
        pass
