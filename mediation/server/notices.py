"""Completeness notices: what makes an intercept incomplete, told to the agency in-band.

Each notice is a ``CompletenessNotice`` appended to the warrant's CmII
stream (see docs/architecture.md, "Completeness notices are sequenced"),
so it is stored, chained, numbered and delivered like any PDU. The server
emits them by itself for:

- the warrant window: ``warrantActive`` on activation (and at start-up for
  a warrant already active: T1.IAS's "already established" spirit, with a
  detail saying so), ``warrantInactive`` when it expires or is removed;
- storage: ``storageUnavailable`` when a stream of the warrant cannot
  store, ``storageRestored`` (with ``lostCount``, the PDUs refused
  meanwhile, and the period) when it can again;
- the clock: ``clockUnsynchronised`` / ``clockSynchronised`` when the
  kernel's synchronisation state changes (``adjtimex``);

and the tap links call :meth:`Notices.tap_lost`, :meth:`Notices.tap_restored`
and :meth:`Notices.upstream_gap`. Details never carry case data.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import trio

from mediation.clock import ClockReading
from mediation.log import StorageState, StreamLog
from mediation.pdu import ClockStatus, CompletenessEvent, CompletenessNotice, fast
from mediation.server.ingest import Ingest
from mediation.server.warrant_table import WarrantTable

log = logging.getLogger("mediation.server")
E = CompletenessEvent


def notice_der(event: CompletenessEvent, event_time: dt.datetime, **fields: Any) -> bytes:
    """The standalone DER of a ``CompletenessNotice`` (as the log stores it)."""
    _kind, der = fast.encode_content(CompletenessNotice(event, event_time, **fields))
    return der


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Notices:
    """Builds and appends completeness notices; watches storage and the clock."""

    def __init__(self, ingest: Ingest, table: WarrantTable) -> None:
        self.ingest = ingest
        self.table = table
        # What the agencies were last told about the clock; they assume it
        # is synchronised until told otherwise (UNKNOWN is never announced:
        # each record's clock status already says "unknown").
        self.announced_clock = ClockStatus.SYNCHRONISED

    def notice(self, handle: str, event: CompletenessEvent | str, **fields: Any) -> int | None:
        """Append one notice to warrant ``handle``'s CmII stream.

        Args:
            handle: the warrant.
            event: a :class:`CompletenessEvent` or its ASN.1 name (``"tapLost"``).
            fields: ``event_time`` (default now), ``period_start``,
                ``period_end``, ``lost_count``, ``source``, ``detail``.

        Returns:
            The notice's sequence number; None if the warrant has no open
            CmII stream (it was never active in this server).

        Raises:
            ValueError: an unknown event name.
            PDUError: a field the schema refuses.
        """
        event = CompletenessEvent(event)
        event_time = fields.pop("event_time", None) or _now()
        seq = self.ingest.append_notice(handle, notice_der(event, event_time, **fields))
        if seq is not None:
            log.info("notice %s for %s (cmii sequence %d)", event.value, handle, seq)
        return seq

    # What the table, the tap links and the watchers report ----------------

    def warrant_active(self, handle: str, at_start: bool = False) -> None:
        detail = "already active when the server started" if at_start else None
        self.notice(handle, E.WARRANT_ACTIVE, detail=detail)

    def warrant_inactive(self, handle: str) -> None:
        state = self.table.state(handle).value  # expired, or removed
        self.notice(handle, E.WARRANT_INACTIVE, detail=state)

    def tap_lost(self, tap_name: str) -> None:
        """A tap link is gone: every active warrant it serves is incomplete from now."""
        for warrant in self.table.warrants_for_tap(tap_name):
            self.notice(warrant.handle, E.TAP_LOST, source=tap_name)

    def tap_restored(self, tap_name: str) -> None:
        for warrant in self.table.warrants_for_tap(tap_name):
            self.notice(warrant.handle, E.TAP_RESTORED, source=tap_name)

    def upstream_gap(
        self,
        handle: str,
        lost_count: int,
        period_start: dt.datetime,
        period_end: dt.datetime,
        source: str,
    ) -> None:
        """The tap link lost ``lost_count`` PDUs of ``handle`` between those times."""
        self.notice(
            handle,
            E.UPSTREAM_GAP,
            lost_count=lost_count,
            period_start=period_start,
            period_end=period_end,
            source=source,
        )

    def clock_changed(self, reading: ClockReading) -> None:
        """Tell every active warrant when the clock's synchronisation changes."""
        status = reading.status
        if status is ClockStatus.UNKNOWN or status is self.announced_clock:
            return
        self.announced_clock = status
        event = (
            E.CLOCK_SYNCHRONISED if status is ClockStatus.SYNCHRONISED else E.CLOCK_UNSYNCHRONISED
        )
        detail = f"kernel clock ({reading.source})"
        if reading.max_error_us is not None:
            detail += f", maximum error {reading.max_error_us} us"
        log.warning("clock %s: telling the agencies", status.value)
        for warrant in self.table.active():
            self.notice(warrant.handle, event, detail=detail)

    async def watch_clock(self, interval: float) -> None:
        """Every ``interval`` seconds, ask the kernel and announce a change."""
        while True:
            self.clock_changed(self.ingest.clock.refresh())
            await trio.sleep(interval)

    async def watch_storage(self, handle: str, stream: StreamLog) -> None:
        """Announce each change of ``stream``'s ability to store, until cancelled."""
        kind = stream.id.kind.value
        state = stream.state
        while True:
            new = await stream.wait_state_change(state)
            if new.healthy:
                self._restored(handle, kind, state, new)
            else:
                self.notice(
                    handle,
                    E.STORAGE_UNAVAILABLE,
                    event_time=new.since,
                    detail=f"{kind}: {new.reason or 'unable to store'}",
                )
            state = new

    def _restored(self, handle: str, kind: str, old: StorageState, new: StorageState) -> None:
        self.notice(
            handle,
            E.STORAGE_RESTORED,
            event_time=new.since,
            period_start=old.since,
            period_end=new.since,
            lost_count=new.refused,
            detail=f"{kind}: {new.refused} PDUs refused while unable to store",
        )
