"""``mediate serve``: the running server, as one trio nursery.

Tasks, all children of :meth:`MediationServer.run`:

- the control socket (``reload``, ``status``);
- the window ticker: each second re-checks every warrant's window, so
  start and end happen on time (and their notices are appended);
- the registry poller: each second reloads if the registry's change
  counter moved without anyone telling us (a CLI that could not reach us);
- retention: at start and every ``[retention] check_interval`` (an hour),
  purges the records of warrants past retention (``retention.py``);
- delivery: one worker per agency endpoint, one cursor task per warrant
  stream (``delivery``), and the retrieval listener (``retrieval``);
- watchers: each stream's storage state, the kernel clock, held notices;
- the status line (a terminal) or status log lines (anything else);
- the signal watcher: SIGTERM or SIGINT cancels everything; the evidence
  log is checkpointed, flushed and closed on the way out. SIGHUP reloads
  the registry and the configuration's reloadable keys (``[status]``,
  ``[clock]``; see :data:`mediation.server.config.RELOADABLE`).

The data directory is locked (``server.lock``) for the server's whole life:
one server per data directory.

Taps feed it over the tap link (``[taps]``, :mod:`mediation.server.taps`);
in-process ingest (:meth:`MediationServer.ingest`) is for the demo and the tests.
Everything logged names warrants by handle.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from mediation import heap
from mediation.clock import ClockReading, read_clock
from mediation.log import LOG_KEY_PURPOSE, Appended, EvidenceLog, LogError, LogKey, StreamLog
from mediation.pdu import StreamId
from mediation.server.config import ServerConfig
from mediation.server.control import socket_path
from mediation.server.control_listener import ControlSocket
from mediation.server.control_requests import ControlRequests
from mediation.server.delivery import DeliveryManager
from mediation.server.ingest import ClockCache, Ingest
from mediation.server.lock import ServerLock
from mediation.server.notices import Notices
from mediation.server.radius import RadiusService, read_secret
from mediation.server.retrieval import RetrievalService
from mediation.server.status import StatusReporter, StatusRow
from mediation.server.tap_ingest import TapIngest, TapJournal
from mediation.server.taps import TapService
from mediation.server.targets_record import TargetsRecord
from mediation.server.tls import AgencyTrust, IdentityFiles, ensure_identity
from mediation.server.tzsp import TzspService
from mediation.server.upkeep import Upkeep
from mediation.server.warrant_table import TableChange, WarrantTable
from mediation.warrants.keys import RegistryKey
from mediation.warrants.model import WarrantState, utc_now
from mediation.warrants.registry import load_snapshot

log = logging.getLogger("mediation.server")
Clock = Callable[[], dt.datetime]


class NotRunning(RuntimeError):
    """Ingest or a notice was asked of a server that is not running (yet)."""


class MediationServer(Upkeep, ControlRequests):
    """Owns the warrant table, the evidence log, ingest and delivery.

    Its upkeep (window ticks, registry poll, retention, signals) is
    :class:`~mediation.server.upkeep.Upkeep`; its control socket's answers
    :class:`~mediation.server.control_requests.ControlRequests`.
    """

    def __init__(
        self,
        data_dir: Path,
        key: RegistryKey,
        clock: Clock = utc_now,
        config: ServerConfig | None = None,
        clock_reader: Callable[[], ClockReading] = read_clock,
        tty: bool = False,
        config_loader: Callable[[], ServerConfig] | None = None,
        settle_heap: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self._settle_heap = settle_heap  # the process is the server's own: mediation/heap.py
        self.table = WarrantTable()
        self.config = config or ServerConfig()
        self._key = key
        self._clock = clock
        self._clock_reader = clock_reader
        self._tty = tty
        self._reload_lock = trio.Lock()
        self._hangup_lock = trio.Lock()
        self.ticks = 0  # window checks completed, for whoever must wait on one
        self._ticked = trio.Event()
        self.started = clock()
        self.taps_connected: set[str] = set()
        self._owners: dict[str, str] = {}  # warrant handle -> agency handle, ever seen
        self._watchers: dict[StreamId, trio.CancelScope] = {}  # storage watchers, per stream
        self._nursery: trio.Nursery | None = None
        self.intake: Ingest | None = None
        self.notices: Notices | None = None
        self.targets_record: TargetsRecord | None = None
        self.delivery: DeliveryManager | None = None
        self.retrieval: RetrievalService | None = None
        self.taps: TapService | None = None
        self.tzsp: TzspService | None = None
        self.radius: RadiusService | None = None
        self.reporter: StatusReporter | None = None
        self.trust: AgencyTrust | None = None
        self.control: ControlSocket | None = None
        self._config_loader = config_loader  # re-reads the file on SIGHUP
        self._timers: trio.CancelScope | None = None
        self.reloads = 0  # SIGHUPs handled
        self.retention_passes = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled or signalled; reports started once everything listens.

        Raises:
            UsageError: another server holds this data directory, or it is
                not writable (before anything is started).
            ControlError: the control socket's path is taken by something else.
        """
        radius_secret = read_secret(self.config.radius)  # refused before anything starts
        # Signals are caught from the start to the very end, so a SIGTERM or
        # SIGHUP that arrives while the log closes cannot cut its checkpoint.
        with (
            trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals,
            ServerLock.acquire(self.data_dir),
        ):
            # We hold the lock: a socket left at the path is a dead server's.
            control = await ControlSocket.bind(socket_path(self.data_dir), owned=True)
            self.control = control
            try:
                await self._serve(control, signals, task_status, radius_secret)
            finally:
                self._nursery = None
                control.close()
        log.info("stopped")

    async def _serve(
        self,
        control: ControlSocket,
        signals: Any,
        task_status: trio.TaskStatus[None],
        radius_secret: bytes | None = None,
    ) -> None:
        identity = await trio.to_thread.run_sync(
            ensure_identity, self.data_dir, self._key, self.config.tls.server_names, utc_now()
        )
        trust = self.trust = AgencyTrust(identity)
        async with (
            EvidenceLog.open(
                self.data_dir, self.config.log, key=LogKey(self._key.derive(LOG_KEY_PURPOSE))
            ) as evidence,
            trio.open_nursery() as nursery,
        ):
            self._nursery = nursery
            nursery.start_soon(self._watch_signals, signals, nursery.cancel_scope)
            self._build(evidence, identity, trust, nursery)
            self._build_radius(radius_secret)
            await self.reload(at_start=True)
            await nursery.start(control.serve, self.handle_request)
            await self._start_tasks(nursery)
            count, active = len(self.table.states()), len(self.table.active())
            log.info("serving: warrants loaded %d, active %d; control socket ready", count, active)
            task_status.started()
            if self._settle_heap:
                heap.settle()

    def _build(
        self,
        evidence: EvidenceLog,
        identity: IdentityFiles,
        trust: AgencyTrust,
        nursery: trio.Nursery,
    ) -> None:
        self.intake = Ingest(evidence, self.table, ClockCache(self._clock_reader))
        self.notices = Notices(self.intake, self.table)
        self.targets_record = TargetsRecord(self.table, self.intake, self._clock, nursery)
        self.delivery = DeliveryManager(
            nursery,
            self.config.delivery,
            identity,
            trust,
            self._key.derive("endpoint-id"),
            files=(self.config.files, evidence.signer),
        )
        self.intake.on_held = self.delivery.deliver_from_memory
        tap_ingest = TapIngest(self.intake, TapJournal(self.data_dir))
        self.taps = TapService(
            self.config.taps, identity, self.table, tap_ingest, self, self._clock
        )
        tzsp_ingest = TapIngest(self.intake, TapJournal(self.data_dir))  # no journal: UDP
        self.tzsp = TzspService(self.config.tzsp, self.table, tzsp_ingest, self)

    def _build_radius(self, secret: bytes | None) -> None:
        """The RADIUS accounting listener, when ``[radius] listen`` is set (docs/tzsp.md)."""
        if secret is None or self.tzsp is None:
            return
        self.tzsp.radius_secret = secret  # accounting seen in mirrored frames: the same NAS
        self.radius = RadiusService(self.config.radius, secret, self.tzsp, self._clock)

    async def _start_tasks(self, nursery: trio.Nursery) -> None:
        assert self.intake is not None and self.notices is not None
        address = self.config.retrieval.address()
        if address is not None and self.trust is not None:
            self.retrieval = RetrievalService(
                address,
                self.trust,
                self.streams_of_agency,
                self.config.delivery,
                self.config.retrieval,
            )
            await nursery.start(self.retrieval.run)
        if self.taps is not None:
            await nursery.start(self.taps.run_tls)
            await nursery.start(self.taps.run_udp)
        if self.tzsp is not None:
            await nursery.start(self.tzsp.run)
        if self.radius is not None:
            await nursery.start(self.radius.run)
        nursery.start_soon(self._tick_windows)
        nursery.start_soon(self._poll_registry)
        nursery.start_soon(self.intake.run_flusher)
        nursery.start_soon(self._run_retention)
        await nursery.start(self._run_timers)

    async def _run_timers(self, *, task_status: trio.TaskStatus[None]) -> None:
        """The clock watcher and the status reporter, on the configured intervals.

        In a scope of their own, so that a reload (SIGHUP) that changes
        ``[status]`` or ``[clock]`` restarts them on the new intervals.
        """
        assert self.notices is not None
        with trio.CancelScope() as scope:
            self._timers = scope
            async with trio.open_nursery() as timers:
                timers.start_soon(self.notices.watch_clock, self.config.clock.check_interval)
                self.reporter = StatusReporter(
                    self.delivery_rows,
                    interval=self.config.status.interval,
                    log_interval=self.config.status.log_interval,
                    tty=self._tty,
                )
                timers.start_soon(self.reporter.run)
                task_status.started()

    # The warrant table ----------------------------------------------------------

    async def reload(self, at_start: bool = False) -> TableChange:
        """Read the registry again and apply it; one reload at a time."""
        async with self._reload_lock:
            snapshot = await trio.to_thread.run_sync(load_snapshot, self.data_dir, self._key)
            change = self.table.apply(snapshot, self._clock())
            await self.on_change(change, at_start)
            return change

    async def on_change(
        self, change: TableChange, at_start: bool = False, full: bool = True
    ) -> None:
        """Log what changed; open streams, update delivery, append the notices.

        ``full`` False (the window ticker) skips the work when nothing
        changed; a reload always does it, since agencies' endpoints are not
        part of a :class:`TableChange`.

        Order matters: streams are opened and delivery updated (which fixes
        each new UDP stream's starting position) before the warrantActive
        notice is appended, so every endpoint gets it.
        """
        for line in change.log_lines(self.table.states()):
            log.info("%s", line)
        if self.intake is None or self.delivery is None or self.notices is None:
            return
        if not (change or full):
            return  # a tick that changed nothing
        if self.trust is not None:
            self.trust.update(self.table.agencies.values())
        if self.taps is not None:
            self.taps.on_change()
        for handle in self.table.states():
            await self._open_streams(handle, at_start)
        self._watch_new_streams()
        self.delivery.sync(self._owners, self.table, self.intake.streams)
        if self.tzsp is not None:
            self.tzsp.on_change()
        for handle in change.activated:
            self.notices.warrant_active(handle, at_start=at_start)
        for handle in change.deactivated:
            self.notices.warrant_inactive(handle)
        if self.targets_record is not None:  # after warrantActive: the targets it starts with
            await self.targets_record.on_change(change, at_start)
        if at_start:
            self.notices.clock_changed(self.intake.clock.refresh())

    async def _open_streams(self, handle: str, at_start: bool) -> None:
        """Open an active warrant's streams (at start-up, an expired one's that exist)."""
        assert self.intake is not None
        warrant = self.table.warrant(handle)
        assert warrant is not None
        self._owners[handle] = warrant.agency
        state = self.table.state(handle)
        try:
            if state is WarrantState.ACTIVE:
                await self.intake.open_streams(warrant)
            elif at_start and state is WarrantState.EXPIRED:
                await self.intake.open_streams(warrant, create=False)  # deliver what is left
        except LogError as exc:  # one damaged stream must not stop the others
            log.error("%s: cannot open its log streams: %s", handle, exc)

    def _watch_new_streams(self) -> None:
        assert self.intake is not None and self.notices is not None
        for sid, stream in self.intake.streams.items():
            if sid not in self._watchers and self._nursery is not None:
                scope = self._watchers[sid] = trio.CancelScope()
                self._nursery.start_soon(self._watch_storage, scope, sid.warrant_handle, stream)

    def streams_of_agency(self, agency: str) -> dict[StreamId, StreamLog]:
        """Every open stream of the agency's warrants (what retrieval may serve it)."""
        streams = self.intake.streams if self.intake is not None else {}
        return {
            sid: s for sid, s in streams.items() if self._owners.get(sid.warrant_handle) == agency
        }

    # Ingest and notices: what tap links call ------------------------------------

    async def ingest(
        self, handle: str, kind: str, der: bytes, captured: dt.datetime | None = None
    ) -> Appended | None:
        """Store one PDU of warrant ``handle`` (``kind`` "cmII" or "cmCC").

        Returns:
            The log's receipt (``await appended.durable()``); None when the
            PDU is refused: unknown or inactive warrant, a content level
            without that stream, malformed, or the log cannot store. Each
            refusal is counted (``status`` op, ``ingest`` counters).

        Raises:
            NotRunning: the server has not started.
        """
        return await self._intake().ingest(handle, kind, der, captured)

    def notice(self, handle: str, event: str, **fields: Any) -> int | None:
        """Append a completeness notice (see :meth:`Notices.notice`)."""
        return self._notices().notice(handle, event, **fields)

    def tap_lost(self, tap_name: str) -> None:
        self._notices().tap_lost(tap_name)

    def tap_restored(self, tap_name: str) -> None:
        self._notices().tap_restored(tap_name)

    def upstream_gap(
        self,
        handle: str,
        lost_count: int,
        period_start: dt.datetime,
        period_end: dt.datetime,
        source: str,
    ) -> None:
        self._notices().upstream_gap(handle, lost_count, period_start, period_end, source)

    def _intake(self) -> Ingest:
        if self.intake is None:
            raise NotRunning("the server is not running")
        return self.intake

    def _notices(self) -> Notices:
        if self.notices is None:
            raise NotRunning("the server is not running")
        return self.notices

    # Status -------------------------------------------------------------------------

    def delivery_rows(self) -> list[StatusRow]:
        return self.delivery.rows() if self.delivery is not None else []
