"""One delivery task's rounds over every stream of an endpoint.

UDP and TLS delivery each run one task per endpoint (not per stream): a
round offers every stream's new records; a round that sent nothing sleeps
until :meth:`Rounds.wake` (a log committed, an ack made room); two busy
rounds in a row yield a turn so other tasks run while catching up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn

import trio


class Rounds:
    """The wake-up of one endpoint's delivery task, and its loop."""

    def __init__(self) -> None:
        self._more = trio.Event()

    def wake(self) -> None:
        """Something may be ready: the task runs another round (callable from a log's callback)."""
        self._more.set()

    async def run(self, one_round: Callable[[], Awaitable[bool]]) -> NoReturn:
        """Call ``one_round`` (True: run another now) forever; else sleep until a wake.

        Args:
            one_round: offers every stream's ready records once.
        """
        sent_last = False
        while True:
            self._more = trio.Event()  # set by a wake from here on
            sent = await one_round()
            if not sent:
                await self._more.wait()
            elif sent_last:  # back to back (busy, or catching up): let others run
                await trio.lowlevel.checkpoint()
            sent_last = sent
