"""The running server's upkeep: the tasks that keep it current while it serves.

Each second the window ticker re-checks every warrant's window (start and
end on time) and the registry poller reloads if the registry changed
without anyone telling the server; retention passes purge what is past
retention; SIGHUP re-reads the configuration's reloadable keys and the
registry; SIGTERM or SIGINT stops the server. :class:`Upkeep` is a base
class of :class:`~mediation.server.app.MediationServer`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from mediation.errors import UsageError
from mediation.log import StreamLog
from mediation.pdu import StreamId, StreamKind
from mediation.server.config import ServerConfig, reloaded_config
from mediation.server.delivery import DeliveryManager
from mediation.server.ingest import Ingest
from mediation.server.notices import Notices
from mediation.server.retention import purge_due
from mediation.server.warrant_table import WarrantTable
from mediation.warrants.keys import RegistryKey
from mediation.warrants.registry import REGISTRY_DB, read_generation

log = logging.getLogger("mediation.server")
TICK_SECONDS = 1.0


class Upkeep:
    """The periodic and signalled tasks of a :class:`~mediation.server.app.MediationServer`.

    Uses the server's table, log intake, notices, delivery and
    configuration; applies changes with the server's own ``reload`` and
    ``on_change``, and restarts its timers with ``_run_timers``.
    """

    data_dir: Path
    table: WarrantTable
    config: ServerConfig
    intake: Ingest | None
    notices: Notices | None
    delivery: DeliveryManager | None
    ticks: int
    reloads: int
    retention_passes: int
    _key: RegistryKey
    _clock: Callable[[], dt.datetime]
    _reload_lock: trio.Lock
    _hangup_lock: trio.Lock
    _ticked: trio.Event
    _owners: dict[str, str]
    _watchers: dict[StreamId, trio.CancelScope]
    _nursery: trio.Nursery | None
    _config_loader: Callable[[], ServerConfig] | None
    _timers: trio.CancelScope | None

    async def _tick_windows(self) -> None:
        """Each second, re-check every window: warrants start and end on time.

        Kept apart from :meth:`_poll_registry` (which waits on a thread) so
        that the timing of windows depends on the clock alone.
        """
        while True:
            await trio.sleep(TICK_SECONDS)
            async with self._reload_lock:
                await self.on_change(self.table.tick(self._clock()), full=False)
            self.ticks += 1
            self._ticked.set()
            self._ticked = trio.Event()

    async def _run_retention(self) -> None:
        """At start, then every ``[retention] check_interval``: purge what is past retention."""
        while True:
            await self.retention_pass()
            await trio.sleep(self.config.retention.check_interval)

    async def retention_pass(self) -> None:
        """One retention pass (never raises: the next one tries again)."""
        assert self.intake is not None
        try:
            await purge_due(
                self.intake.evidence,
                self._key,
                self._clock(),
                self.config.retention.years,
                self._detach,
            )
        except Exception:
            log.exception("retention pass failed; the next one tries again")
        self.retention_passes += 1

    async def _watch_storage(self, scope: trio.CancelScope, handle: str, stream: StreamLog) -> None:
        assert self.notices is not None
        with scope:
            await self.notices.watch_storage(handle, stream)

    async def _detach(self, handle: str) -> None:
        """Stop delivering a warrant's streams before retention removes them."""
        assert self.intake is not None and self.delivery is not None
        for kind in StreamKind:
            sid = StreamId(handle, kind)
            self.intake.streams.pop(sid, None)
            watcher = self._watchers.pop(sid, None)
            if watcher is not None:
                watcher.cancel()  # its stream is gone: nothing left to announce
        self.delivery.sync(self._owners, self.table, self.intake.streams)

    async def wait_ticks(self, count: int) -> None:
        """Return once ``count`` window checks have completed (and applied)."""
        while self.ticks < count:
            await self._ticked.wait()

    async def _poll_registry(self) -> None:
        """Each second, reload if the registry changed and nobody told us.

        The file's identity, size and modification time are looked at in
        the event loop (one stat); the generation is read (in a worker
        thread) only when they moved, or were written in the last two
        seconds (a file system's time stamps are coarser than a second
        write), so an idle server's poll is one system call a second, not
        a thread hand-over.
        """
        seen: tuple[int, int, int] | None = None
        while True:
            await trio.sleep(TICK_SECONDS)
            try:
                now = _file_stamp(self.data_dir / REGISTRY_DB)
                settled = now is not None and time.time_ns() - now[2] > 2_000_000_000
                if settled and now == seen:
                    continue
                generation = await trio.to_thread.run_sync(read_generation, self.data_dir)
                if generation != self.table.generation:
                    await self.reload()
                seen = now
            except Exception:  # a registry being replaced or damaged must not stop the server
                log.exception("registry poll failed; keeping the warrants loaded before")

    async def _watch_signals(self, signals: Any, scope: trio.CancelScope) -> None:
        """SIGHUP reloads; SIGTERM or SIGINT cancels ``scope`` (the log then closes)."""
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.info("SIGHUP: reloading the registry and the configuration")
                if self._nursery is not None:
                    self._nursery.start_soon(self.reload_all)
                continue
            log.info("%s: stopping", signal.Signals(signum).name)
            scope.cancel()
            return

    async def reload_all(self) -> None:
        """What SIGHUP does: re-read the configuration's reloadable keys and the registry.

        Never raises: a configuration or registry that cannot be read now is
        logged, and the server keeps what it had.
        """
        async with self._hangup_lock:  # two SIGHUPs in a row: one after the other
            self.reloads += 1
            try:
                await self._reload_config()
                await self.reload()
            except Exception:
                log.exception("reload failed; keeping the configuration and warrants loaded before")

    async def _reload_config(self) -> None:
        if self._config_loader is None:
            return
        try:
            new = await trio.to_thread.run_sync(self._config_loader)
        except UsageError as exc:
            log.error("reload: %s; keeping the configuration loaded before", exc)
            return
        merged, applied, kept = reloaded_config(self.config, new)
        for key, old_value, new_value in kept:
            log.warning(
                "reload: %s changed (%r to %r) but applies only at a restart; still %r",
                key,
                old_value,
                new_value,
                old_value,
            )
        for key, old_value, new_value in applied:
            log.info("reload: %s now %r (was %r)", key, new_value, old_value)
        self.config = merged
        if applied and self._timers is not None and self._nursery is not None:
            self._timers.cancel()
            await self._nursery.start(self._run_timers)


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is written or replaced (None: cannot stat it)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
