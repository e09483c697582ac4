"""Refusals: every one counted, per reason; few log lines.

The project's one policy for logging refusals of outside input (connections,
datagrams, control requests). Anyone who can reach a listener can make it
refuse, so one warning per refusal would let them fill the log (and bury
what matters).
:class:`Refusals` counts each refusal under its reason and logs the first
of each reason in full; further refusals for that reason within
``interval`` seconds are only counted, and one summary line says how many
when the interval is over (at the next refusal, or :meth:`Refusals.tick`).
The counts go to ``mediate status`` (server) and the receiver's view and
summary (agency). The clock is injected (a callable returning monotonic
seconds), so sans-I/O code and tests with a fake clock use it as is; it
never sleeps and starts no task.

Reasons come from our own code or OpenSSL's short reason codes, a small
set; still, at most ``MAX_REASONS`` distinct ones are kept apart and the
rest counted as ``other``, so a peer cannot grow the table.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

DEFAULT_INTERVAL = 60.0
MAX_REASONS = 32
OTHER = "other"


@dataclasses.dataclass
class _Window:
    opened: float
    suppressed: int = 0


class Refusals:
    """Counts refusals per reason and logs at most one line per reason per interval."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        level: int = logging.WARNING,
        counts: dict[str, int] | None = None,
    ) -> None:
        """Args:
        logger: where the lines go.
        what: the lines' prefix, e.g. ``retrieval: client refused``.
        interval: seconds between lines for one reason.
        clock: monotonic seconds (injected for tests).
        level: the lines' level.
        counts: the dict to count in (shared with whoever shows the counts).
        """
        self._log = logger
        self._what = what
        self._interval = interval
        self._clock = clock
        self._level = level
        self.counts: dict[str, int] = {} if counts is None else counts
        self._windows: dict[str, _Window] = {}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def refuse(self, reason: str, peer: str | None = None, *, exc_info: bool = False) -> None:
        """Count one refusal; log it if it is the first of its reason this interval.

        Args:
            reason: why, from a small fixed set (see the module docstring);
                never a string the peer chose.
            peer: the peer's address, for the logged line only.
            exc_info: add the exception being handled to the line, if logged.
        """
        if reason not in self.counts and len(self.counts) >= MAX_REASONS:
            reason = OTHER
        now = self._clock()
        window = self._windows.get(reason)
        if window is not None and now - window.opened < self._interval:
            self.counts[reason] += 1
            window.suppressed += 1
            return
        if window is not None:  # its summary counts the refusals before this one
            self._summarise(reason, window)
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self._windows[reason] = _Window(now)
        where = f" {peer}" if peer else ""
        self._log.log(
            self._level,
            "%s%s: %s (further refusals for this reason: one line per %g s)",
            self._what,
            where,
            reason,
            self._interval,
            exc_info=exc_info,
        )

    def tick(self) -> None:
        """Log the summaries of intervals that are over (call now and then)."""
        now = self._clock()
        for reason, window in list(self._windows.items()):
            if now - window.opened >= self._interval:
                self._summarise(reason, window)
                del self._windows[reason]

    def flush(self) -> None:
        """Log every pending summary now (at the end of a run)."""
        for reason, window in self._windows.items():
            self._summarise(reason, window)
        self._windows.clear()

    def _summarise(self, reason: str, window: _Window) -> None:
        if window.suppressed:
            self._log.log(
                self._level,
                "%s: %d more (%s) in the last %.0f s; %d in all",
                self._what,
                window.suppressed,
                reason,
                max(self._clock() - window.opened, 0.0),
                self.counts[reason],
            )
            window.suppressed = 0


BUSY = "busy: too many connections at once"
MAX_CONNECTIONS = 64


class ConnectionLimit:
    """At most ``limit`` connections served at once; the caller refuses the rest as :data:`BUSY`.

    A TLS connection waiting for its handshake holds OpenSSL's buffers
    (measured: about 50 KiB each); without a limit, anyone who can reach a
    listener could make it hold as many as they open (2,000 idle TCP
    connections cost the server and the receiver 100 MiB each). 64 is far
    more than the legitimate peers of one listener (one connection per
    agency receiver, or per server endpoint) and costs at most ~3 MiB.
    Slots are freed when connections end, and an idle one ends at the
    handshake timeout, so a flood delays peers; it never exhausts memory
    or file descriptors.
    """

    def __init__(self, limit: int = MAX_CONNECTIONS) -> None:
        self.limit = limit
        self.active = 0

    def try_enter(self) -> bool:
        """Take a slot; False (nothing taken) when all are in use."""
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        """Give back a slot taken by :meth:`try_enter`."""
        self.active -= 1
