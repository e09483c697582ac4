"""Who a stream tells when its records become durable: callbacks by sequence number, listeners.

:class:`StreamLog` (``stream``) owns one :class:`DurableWaiters` and calls
it from the event loop: after each durable chunk (:meth:`DurableWaiters.due`),
whenever its readers are woken (:meth:`DurableWaiters.notify`) and once
when it closes (:meth:`DurableWaiters.drop`). No I/O and no trio here: the
callbacks run in the writer's report, with no task and no turn of the
loop of their own (a tap link's acks).
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)


class DurableWaiters:
    """Callbacks waiting for a sequence number to be durable, and listeners of the readers.

    Args:
        label: the stream's name, for the log line of a callback that raises.
        durable: the last durable sequence number now (-1: none).
    """

    def __init__(self, label: str, durable: int) -> None:
        self.label = label
        self.durable = durable
        self.closed = False
        # A heap of (seq, order, callback, closed): the order keeps equal seqs first-come.
        self._heap: list[tuple[int, int, Callable[[], None], Callable[[], None] | None]] = []
        self._order = itertools.count()
        self._listeners: list[Callable[[], None]] = []

    def add(
        self, seq: int, callback: Callable[[], None], closed: Callable[[], None] | None = None
    ) -> None:
        """Call ``callback()`` in the event loop once record ``seq`` is durable.

        What a waiter that needs no task uses (a tap link's acks): the
        callback runs in the writer's report, with no turn of the loop of
        its own. At once if ``seq`` is durable already. If the stream
        closes first, ``callback`` is never called (nothing may be taken
        as stored then) and ``closed()`` is, if given (as ``durable()``
        raises ``LogClosed``). Neither may raise: an exception is logged
        and the others still run.
        """
        if self.durable >= seq:
            callback()
        elif self.closed:
            if closed is not None:
                closed()
        else:
            heapq.heappush(self._heap, (seq, next(self._order), callback, closed))

    def due(self, durable: int) -> None:
        """Records up to ``durable`` are durable: call their callbacks, in order."""
        self.durable = durable
        heap = self._heap
        while heap and heap[0][0] <= durable:
            _call(heapq.heappop(heap)[2], self.label)

    def drop(self) -> None:
        """The stream closed: what is not durable never will be; tell those who asked to know."""
        self.closed = True
        heap, self._heap = self._heap, []
        for _seq, _order, _callback, closed in sorted(heap):
            if closed is not None:
                _call(closed, self.label)

    def listen(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` whenever the stream's readers are woken (:meth:`notify`).

        That is: records or checkpoints became durable, storage stopped or
        resumed, or the stream closed. What one task reading several
        streams waits with (a UDP endpoint's), instead of a task per stream.
        The callback must be quick and must not raise.

        Returns:
            A function that stops the calls.
        """
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

    def notify(self) -> None:
        """The stream's readers were woken: tell every listener."""
        for callback in self._listeners:
            callback()


def _call(callback: Callable[[], None], label: str) -> None:
    try:
        callback()
    except Exception:  # one waiter's bug must not stop the log's reports
        logger.exception("%s: a durability callback failed", label)
