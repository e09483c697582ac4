"""Capture workers: one interface captured by several processes (``tap run --workers N``).

Python builds PDUs at some tens of thousands of frames a second on one
core; a second core doubles that only in a second process. So each worker
is a process with its own AF_PACKET socket, ring, kernel filter (the same
one) and taps (one per warrant, as in :class:`~mediation.tap.live.LiveTap`),
the sockets joined in one fanout group (:mod:`mediation.tap.fanout`): the
kernel gives each frame to exactly one worker, both directions of a
conversation to the same one, and DHCP and RADIUS accounting to worker 0.

The tap process keeps the one server link (one connection, one spool, one
batch sequence per tap): workers send it their PDUs already encoded as
tap-link records, in chunks that fit a batch, and it only joins them.

- **Flows.** Worker k of n numbers its flows k+1, k+1+n, ... (``streamID``
  and the content identifier are per flow), so no two workers give one
  number. A fixed content identifier (the seed form's ``-x``) shares one CC
  sequence across flows: such a tap runs one worker.
- **Following.** Worker 0 sees every DHCP and RADIUS accounting frame and
  holds the leases and sessions (and their expiry); after each batch that
  changed them it sends the addresses learned, and the tap process passes
  them to the other workers' matchers. A frame of a newly learned address
  that reaches another worker in the millisecond before the change does is
  decided by what that worker knew (for a MAC target it still matches by
  MAC; docs/tap.md says so for ``user:`` targets).
- **Starting.** Every worker joins the group accepting nothing, in
  order (the kernel numbers a group's sockets as they join, and worker 0
  must be number 0); when all have joined, each attaches the filter. So the group never changes size
  while capturing, and a flow never moves from one worker to another.
- **Warrant changes** go to every worker, which rebuilds its filter and
  taps (keeping the state of warrants unchanged), as a single capture does.
- **Counters.** Each worker reports its kernel counters (frames passed,
  dropped because the ring was full); :attr:`CaptureWorkers.stats` sums them.
- **Stopping.** Each worker reads its ring a last time, sends what it
  built and its counters, and exits; a worker that dies ends the tap (the
  group would re-steer flows otherwise).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import multiprocessing
import os
import select
import signal
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

import trio

from mediation.pdu import taplink as T
from mediation.tap.capture import CaptureStats, RingConfig

log = logging.getLogger("mediation.tap")
STATS_EVERY = 1.0  # seconds between a worker's counter reports
START_TIMEOUT = 60.0  # seconds for every worker to open its capture
MAX_WORKERS = 64  # the steering program's limit


def default_workers() -> int:
    """One worker per core the process may use, at most 8 (``--workers``' default)."""
    return max(1, min(8, len(os.sched_getaffinity(0))))


@dataclasses.dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to start (sent over its pipe: warrants never go on a command line)."""

    interface: str
    index: int
    count: int
    group: int
    warrants: tuple[T.TapWarrant, ...]
    epoch: int
    chunk_pdus: int
    chunk_bytes: int
    ring: RingConfig | None = None
    idle: float = 1.0


Records = list[tuple[bytes, dt.datetime]]
OnChunk = Callable[[bytes, int, dt.datetime, dt.datetime], Awaitable[None]]


# -- the worker process ---------------------------------------------------------------


class _Worker:
    """One worker's loop: capture, build, send; obey the tap process."""

    def __init__(self, conn: Connection, setup: WorkerSetup) -> None:
        from mediation.tap.fanout import steering_program
        from mediation.tap.live import LiveTap

        self.conn, self.setup = conn, setup
        self.warrants: dict[str, tuple[T.TapWarrant, Any]] = {}
        taps = self._taps(setup.warrants)
        program = steering_program(setup.count)
        self.live = LiveTap(
            setup.interface, taps, ring=setup.ring, idle=setup.idle, fanout=(setup.group, program)
        )
        self.learned: dict[str, object] = {}

    def _taps(self, warrants: tuple[T.TapWarrant, ...]) -> list[Any]:
        """Taps for ``warrants``; an unchanged warrant keeps its tap (flows, leases)."""
        from mediation.errors import UsageError
        from mediation.tap.link import build_tap

        setup, kept, taps = self.setup, {}, []
        for warrant in warrants:
            old = self.warrants.get(warrant.handle)
            if old is not None and old[0] == warrant:
                tap = old[1]
            else:
                try:
                    tap = build_tap(warrant, setup.epoch, (setup.index, setup.count))
                except (UsageError, ValueError):
                    continue  # the tap process logs it (it builds the same taps)
            kept[warrant.handle] = (warrant, tap)
            taps.append(tap)
        self.warrants = kept
        return taps

    def run(self) -> None:
        conn, live = self.conn, self.live
        conn.send(("ready",))
        while True:  # warrant changes may come before the start
            message = conn.recv()
            if message == ("start",):
                break
            if not self._control(message):
                return
        live.start()
        poller = select.poll()
        poller.register(live.capture.fileno(), select.POLLIN)
        poller.register(conn.fileno(), select.POLLIN)
        last_stats = 0.0
        while True:
            ready = poller.poll(int(self.setup.idle * 1000))
            batch = live.capture.drain()
            now = dt.datetime.now(dt.UTC)
            if batch:
                self._send(live.records(batch))
            elif not ready:
                self._send([(T.encode_pdu(i.kind, i.time, i.der), i.time) for i in live.tick(now)])
            live.refilter_if_due(now)
            if self.setup.index == 0:
                self._push_learned()
            clock = now.timestamp()
            if clock - last_stats >= STATS_EVERY:
                last_stats = clock
                self._stats()
            while conn.poll():
                if not self._control(conn.recv()):
                    return

    def _send(self, records: Records) -> None:
        from mediation.tap.batching import chunk_records

        setup = self.setup
        for chunk in chunk_records(records, setup.chunk_pdus, setup.chunk_bytes):
            self.conn.send(("records", *chunk))

    def _push_learned(self) -> None:
        """Worker 0: send what following learned, when it changed."""
        changed = {}
        for tap in self.live.taps:
            if tap.follower is None and tap.radius is None:
                continue
            state = tap.matcher.learned_state()
            if self.learned.get(tap.handle) != state:
                self.learned[tap.handle] = changed[tap.handle] = state
        if changed:
            self.conn.send(("learned", changed))

    def _stats(self) -> None:
        stats = self.live.stats()
        counters = self.live.counters
        self.conn.send(
            ("stats", stats.kernel_received, stats.kernel_dropped, stats.frames, counters.unmatched)
        )

    def _control(self, message: tuple[Any, ...]) -> bool:
        """One message from the tap process; whether to go on."""
        if message[0] == "warrants":
            previous = self.warrants
            try:
                self.live.set_warrants(self._taps(message[1]))
            except (OSError, ValueError) as exc:  # the old filter and taps stay
                self.warrants = previous
                self.conn.send(("filter_failed", type(exc).__name__))
        elif message[0] == "learned":
            for tap in self.live.taps:
                state = message[1].get(tap.handle)
                if state is None:
                    continue
                with contextlib.suppress(ValueError):  # a warrant changed meanwhile: the next one
                    tap.matcher.set_learned(state)
        elif message[0] == "stop":
            batch = self.live.capture.drain()
            if batch:
                self._send(self.live.records(batch))
            self._stats()
            self.conn.send(("stopped",))
            return False
        return True


def worker_main(conn: Connection, setup: WorkerSetup) -> None:
    """A worker process's body (see the module docstring)."""
    from mediation.pdu.schema import compiled

    # Ctrl-C and a service manager's SIGTERM reach the whole process group:
    # a worker stops when the tap process says (after reading its ring a
    # last time), or when the tap process is gone (its pipe closes).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    compiled()  # the slow part of starting (over a second): before the group is joined
    conn.send(("loaded",))
    if conn.recv() != ("join",):
        return
    try:
        worker = _Worker(conn, setup)
    except (OSError, ValueError) as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    try:
        worker.run()
    except (BrokenPipeError, EOFError, KeyboardInterrupt):
        pass  # the tap process went away or is stopping: nothing left to tell it
    finally:
        worker.live.close()


# -- the tap process's side -------------------------------------------------------------


class WorkerFailed(OSError):
    """A worker could not open its capture, or died."""


class CaptureWorkers:
    """The tap process's handle on its workers.

    Args:
        interface: the capture interface.
        count: workers (2 or more).
        warrants: the warrant set to start with.
        epoch: the correlation epoch.
        chunk_pdus, chunk_bytes: the most PDUs and octets a worker sends in one chunk.
        ring: each worker's ring.
    """

    def __init__(
        self,
        interface: str,
        count: int,
        warrants: tuple[T.TapWarrant, ...],
        *,
        epoch: int,
        chunk_pdus: int,
        chunk_bytes: int,
        ring: RingConfig | None = None,
    ) -> None:
        if count < 2:
            raise ValueError("capture workers: 2 or more (one capture runs in-process)")
        self.interface, self.count = interface, count
        self._setup = dict(epoch=epoch, chunk_pdus=chunk_pdus, chunk_bytes=chunk_bytes, ring=ring)
        self._warrants = warrants
        self._group = os.getpid() & 0xFFFF  # one group per tap process
        self._per_worker: list[tuple[int, int, int, int]] = [(0, 0, 0, 0)] * count
        self._conns: list[Connection] = []
        self._processes: list[Any] = []
        self.started = trio.Event()  # every worker captures
        self.learned_pushed = trio.Event()  # worker 0's learning was passed on, at least once

    def stats(self) -> CaptureStats:
        """The workers' counters summed (as last reported)."""
        rows = self._per_worker
        return CaptureStats(
            kernel_received=sum(r[0] for r in rows),
            kernel_dropped=sum(r[1] for r in rows),
            frames=sum(r[2] for r in rows),
        )

    @property
    def unmatched(self) -> int:
        """Frames the kernel passed that no warrant took, summed."""
        return sum(r[3] for r in self._per_worker)

    def set_warrants(self, warrants: tuple[T.TapWarrant, ...]) -> None:
        """Serve these warrants from now on, in every worker."""
        self._warrants = warrants
        for conn in self._conns:
            conn.send(("warrants", warrants))

    async def run(self, on_records: OnChunk) -> None:
        """Start the workers and hand their chunks to ``on_records`` until cancelled.

        Raises:
            WorkerFailed: a worker could not start its capture, or died.
        """
        context = multiprocessing.get_context("spawn")
        try:
            for index in range(self.count):
                ours, theirs = context.Pipe()
                setup = WorkerSetup(self.interface, index, self.count, self._group,
                                    self._warrants, **self._setup)  # fmt: skip
                process = context.Process(
                    target=worker_main,
                    args=(theirs, setup),
                    name=f"tap-worker-{index}",
                    daemon=True,
                )
                process.start()
                theirs.close()
                self._conns.append(ours)
                self._processes.append(process)
            with trio.fail_after(START_TIMEOUT):
                for conn in self._conns:
                    await self._expect(conn, "loaded")
                # The kernel numbers a group's sockets in the order they join,
                # and the steering program sends following frames to number 0:
                # so worker k joins k-th.
                for conn in self._conns:
                    conn.send(("join",))
                    await self._expect(conn, "ready")
            for conn in self._conns:
                conn.send(("start",))
            self.started.set()
            async with trio.open_nursery() as nursery:
                for index, conn in enumerate(self._conns):
                    nursery.start_soon(self._read, index, conn, on_records)
        finally:
            with trio.CancelScope(shield=True):
                await self._stop(on_records)

    async def _expect(self, conn: Connection, what: str) -> tuple[Any, ...]:
        while True:
            await trio.lowlevel.wait_readable(conn.fileno())
            try:
                message = conn.recv()
            except EOFError:
                raise WorkerFailed("a capture worker ended") from None
            if message[0] == "failed":
                raise WorkerFailed(f"a capture worker could not start: {message[1]}")
            if message[0] == what:
                return message

    async def _read(self, index: int, conn: Connection, on_records: Any) -> None:
        while True:
            await trio.lowlevel.wait_readable(conn.fileno())
            while conn.poll():
                try:
                    message = conn.recv()
                except EOFError:
                    raise WorkerFailed(f"capture worker {index} ended") from None
                await self._handle(index, message, on_records)

    async def _handle(self, index: int, message: tuple[Any, ...], on_records: Any) -> None:
        kind = message[0]
        if kind == "records":
            await on_records(*message[1:])
        elif kind == "learned":
            for other, conn in enumerate(self._conns):
                if other != index:
                    conn.send(message)
            self.learned_pushed.set()
        elif kind == "stats":
            self._per_worker[index] = message[1:5]
        elif kind == "filter_failed":
            log.error("tap: capture worker %d kept its old filter (%s)", index, message[1])

    async def _stop(self, on_records: Any) -> None:
        """Ask every worker to stop; take what each still sends; wait for them to end."""
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
        with trio.move_on_after(5):
            for index, conn in enumerate(self._conns):
                while True:
                    try:
                        await trio.lowlevel.wait_readable(conn.fileno())
                        message = conn.recv()
                    except (EOFError, OSError):
                        break
                    if message[0] == "stopped":
                        break
                    await self._handle(index, message, on_records)
        for process in self._processes:
            await trio.to_thread.run_sync(process.join, 2)
            if process.is_alive():
                process.kill()
        for conn in self._conns:
            conn.close()
