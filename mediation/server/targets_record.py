"""The static half of the confirmation record: each warrant's targets, as they stood.

When a warrant becomes active (or is active when the server starts), and
whenever ``mediate modify`` changes its targets while it is active, the
server appends a targets report (:func:`mediation.pdu.confirmation.targets_report`)
to the warrant's CmII stream: stored, chained, signed and delivered like any
PDU, so the agency holds it too. With the DHCP and RADIUS events the taps
send, it is what ``mediate confirm`` reads back (docs/carrier.md, "Proving
later whom the intercept followed").

The targets are case data: they go into the PDU (encrypted at rest) and
nowhere else; the log line names the handle only.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

import trio

from mediation.log import ContentKind, LogError, StorageUnavailable, StreamLog
from mediation.pdu import StreamId, StreamKind, encode
from mediation.pdu.confirmation import targets_report
from mediation.server.ingest import Ingest
from mediation.server.warrant_table import TableChange, WarrantTable
from mediation.warrants.model import Warrant, WarrantState

log = logging.getLogger("mediation.server")

# The report's iAPSystemId when the warrant names no IAP: the server itself
# is where this record is made (a tap uses its own configured identity).
SERVER_IAP = "mediation"

ACTIVE = "warrant-active"
ALREADY_ACTIVE = "already-active"  # active when the server started
MODIFIED = "warrant-modified"


def targets_of(warrant: Warrant) -> tuple[str, ...]:
    """The warrant's targets as text, sorted; empty when its details are not loaded."""
    if warrant.details is None:
        return ()
    return tuple(sorted(str(t) for t in warrant.details.targets))


class TargetsRecord:
    """Appends a warrant's targets to its CmII stream when they start to count or change.

    Args:
        table: the server's warrant table (with case details loaded).
        ingest: whose open streams the report is appended to. Not through
            :meth:`Ingest.ingest`: the report is the server's own record,
            like a notice, not a PDU a tap sent, so it is not in the ingest
            counters.
        clock: the server's clock, for the report's timestamp.
        nursery: where a report the log could not store (a full disk) waits
            for storage to return and is then appended; None: not retried.
    """

    def __init__(
        self,
        table: WarrantTable,
        ingest: Ingest,
        clock: Callable[[], dt.datetime],
        nursery: trio.Nursery | None = None,
    ) -> None:
        self.table = table
        self.ingest = ingest
        self.clock = clock
        self.recorded: dict[str, tuple[str, ...]] = {}  # handle -> targets last recorded
        self.refused = 0  # reports the log did not take (counted by ingest too)
        self._nursery = nursery
        self._waiting: set[str] = set()  # handles whose report waits for storage

    async def on_change(self, change: TableChange, at_start: bool = False) -> None:
        """Record what ``change`` made count: activations, and modified targets."""
        for handle in change.activated:
            await self.record(handle, ALREADY_ACTIVE if at_start else ACTIVE)
        for handle in change.modified:
            warrant = self.table.warrant(handle)
            if warrant is None or self.table.state(handle) is not WarrantState.ACTIVE:
                continue
            if handle in self.recorded and targets_of(warrant) != self.recorded[handle]:
                await self.record(handle, MODIFIED)
        for handle in (*change.deactivated, *change.removed):
            self.recorded.pop(handle, None)

    async def record(self, handle: str, reason: str) -> bool:
        """Append warrant ``handle``'s current targets; False if the log did not take them."""
        warrant = self.table.warrant(handle)
        if warrant is None or warrant.details is None:
            return False
        targets = targets_of(warrant)
        details = warrant.details
        report = targets_report(
            details.case_id, details.iap or SERVER_IAP, self.clock(), reason, list(targets)
        )
        stream = self.ingest.streams.get(StreamId(handle, StreamKind.CMII))
        if stream is None:
            return False
        try:
            await self.ingest.before_batch({handle})  # held notices keep their numbers
            appended = await stream.append(
                encode(report), ContentKind.CMII, self.ingest.clock.status
            )
        except LogError as exc:  # unable to store, or closing
            self.refused += 1
            log.error("%s: targets (%s) not recorded: %s", handle, reason, exc)
            retry = isinstance(exc, StorageUnavailable) and self._nursery is not None
            if retry and handle not in self._waiting:
                assert self._nursery is not None
                self._waiting.add(handle)
                self._nursery.start_soon(self._when_stored, handle, reason, stream)
            return False
        self.recorded[handle] = targets
        log.info("%s: targets recorded (%s, cmii sequence %d)", handle, reason, appended.seq)
        return True

    async def _when_stored(self, handle: str, reason: str, stream: StreamLog) -> None:
        """Record the targets once the stream can store again (woken by its state change).

        The targets recorded are the warrant's then, which are the ones in
        force: a change made meanwhile is not lost, only dated later.
        """
        try:
            while not stream.state.healthy:
                await stream.wait_state_change(stream.state)
        finally:
            self._waiting.discard(handle)
        if self.table.state(handle) is WarrantState.ACTIVE:
            await self.record(handle, reason)
