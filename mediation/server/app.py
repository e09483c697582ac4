"""``mediate serve``: the running server, as one trio nursery.

Today it keeps the warrant table current and answers the control socket;
ingest (tap listeners) and delivery (LEA workers) will be further tasks in
the same nursery, driven by :class:`~mediation.server.warrant_table.TableChange`
(see :meth:`MediationServer.on_change`).

Tasks, all children of :meth:`MediationServer.run`:

- the control socket (``reload``, ``status``);
- the window ticker: each second re-checks every warrant's window, so
  start and end happen on time;
- the registry poller: each second reloads if the registry's change
  counter moved without anyone telling us (a CLI that could not reach us);
- the signal watcher: SIGTERM or SIGINT cancels everything, cleanly.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from mediation.server.control import ControlError, ControlSocket, socket_path
from mediation.server.warrant_table import TableChange, WarrantTable
from mediation.warrants.keys import RegistryKey
from mediation.warrants.model import format_time, utc_now
from mediation.warrants.registry import load_snapshot, read_generation

log = logging.getLogger("mediation.server")
TICK_SECONDS = 1.0
Clock = Callable[[], dt.datetime]


class MediationServer:
    """Owns the warrant table and the tasks that keep it current."""

    def __init__(self, data_dir: Path, key: RegistryKey, clock: Clock = utc_now) -> None:
        self.data_dir = data_dir
        self.table = WarrantTable()
        self._key = key
        self._clock = clock
        self._reload_lock = trio.Lock()
        self.started = clock()
        self.taps_connected: set[str] = set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled or signalled; reports started once the socket listens."""
        await self.reload()
        control = await ControlSocket.bind(socket_path(self.data_dir))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_signals, nursery.cancel_scope)
                await nursery.start(control.serve, self.handle_request)
                nursery.start_soon(self._tick_windows)
                nursery.start_soon(self._poll_registry)
                count, active = len(self.table.states()), len(self.table.active())
                log.info(
                    "serving: warrants loaded %d, active %d; control socket ready", count, active
                )
                task_status.started()
        finally:
            control.close()
        log.info("stopped")

    async def reload(self) -> TableChange:
        """Read the registry again and apply it; one reload at a time."""
        async with self._reload_lock:
            snapshot = await trio.to_thread.run_sync(load_snapshot, self.data_dir, self._key)
            change = self.table.apply(snapshot, self._clock())
            self.on_change(change)
            return change

    def on_change(self, change: TableChange) -> None:
        """Log what changed. Ingest and delivery will start and stop streams here."""
        for line in change.log_lines(self.table.states()):
            log.info("%s", line)

    async def handle_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one control request (see ``control.py`` for the protocol)."""
        op = request["op"]
        if op == "reload":
            change = await self.reload()
            return {"ok": True, "op": op, "changes": change.to_json(), **self._status()}
        if op == "status":
            return {"ok": True, "op": op, **self._status()}
        raise ControlError(f"unknown op {op!r} (allowed: reload, status)")

    def _status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "started": format_time(self.started),
            "generation": self.table.generation,
            "warrants": self.table.statuses(),
            "taps_connected": sorted(self.taps_connected),
        }

    async def _tick_windows(self) -> None:
        """Each second, re-check every window: warrants start and end on time.

        Kept apart from :meth:`_poll_registry` (which waits on a thread) so
        that the timing of windows depends on the clock alone.
        """
        while True:
            await trio.sleep(TICK_SECONDS)
            self.on_change(self.table.tick(self._clock()))

    async def _poll_registry(self) -> None:
        """Each second, reload if the registry changed and nobody told us."""
        while True:
            await trio.sleep(TICK_SECONDS)
            try:
                generation = await trio.to_thread.run_sync(read_generation, self.data_dir)
                if generation != self.table.generation:
                    await self.reload()
            except Exception:  # a registry being replaced or damaged must not stop the server
                log.exception("registry poll failed; keeping the warrants loaded before")

    async def _watch_signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("%s: stopping", signal.Signals(signum).name)
                scope.cancel()
                return
