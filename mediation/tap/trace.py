"""A tap's batch trace for latency work: when each batch was sealed, spooled, sent, acknowledged.

Off unless ``MEDIATION_TAP_TRACE`` names a file (debugging and
``bench/e2e.py --stages`` only; never on by default). One line an event,
times in microseconds since 1970 (the clock the PDUs' capture time stamps
and the agency's arrival times use)::

    B <batch> <pdus> <first capture> <last capture> <sealed> <spooled>
                    (spooled: its record written; its sync may follow, in
                    the spool's sync thread: mediation/tap/spool_sync.py)
    S <batch> <sent>        (its TLS write returned)
    A <batch> <acked>       (an acknowledgement up to and including it read)

Numbers only: no case data, no addresses. The file is written through a
buffer and flushed when closed, so tracing costs a few microseconds a batch.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import IO

ENVIRONMENT = "MEDIATION_TAP_TRACE"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _us(when: dt.datetime) -> int:
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class BatchTrace:
    """Appends the events of one tap process's batches to a file (see the module docstring).

    Args:
        handle: a text file open for writing; closed by :meth:`close`.
    """

    def __init__(self, handle: IO[str]) -> None:
        self._handle = handle
        self._write = handle.write

    @classmethod
    def from_environment(cls) -> BatchTrace | None:
        """A trace into the file ``MEDIATION_TAP_TRACE`` names (truncated), or None when unset.

        Raises:
            OSError: the file cannot be opened.
        """
        path = os.environ.get(ENVIRONMENT)
        if not path:
            return None
        return cls(open(path, "w", encoding="ascii", buffering=1 << 16))

    def sealed(
        self, batch: int, pdus: int, first: dt.datetime, last: dt.datetime, sealed_us: int
    ) -> None:
        """Batch ``batch`` of ``pdus`` PDUs was sealed at ``sealed_us`` and is spooled now."""
        now = time.time_ns() // 1000
        self._write(f"B {batch} {pdus} {_us(first)} {_us(last)} {sealed_us} {now}\n")

    def sent(self, batches: list[int]) -> None:
        """These batches' TLS write returned now."""
        now = time.time_ns() // 1000
        self._write("".join(f"S {batch} {now}\n" for batch in batches))

    def acked(self, upto: int) -> None:
        """An acknowledgement of every batch up to ``upto`` was read now."""
        self._write(f"A {upto} {time.time_ns() // 1000}\n")

    def close(self) -> None:
        self._handle.close()
