"""One accepted tap's TLS link in the server: reader, acker, warrant-set watcher, keepalives.

:class:`mediation.server.taps.TapService` identifies the tap and starts
a :class:`TapConnection` for it: the warrant set is sent (and again when
it changes), each batch is checked and appended by the service's ingest
(:mod:`mediation.server.tap_ingest`) and acknowledged once durable, in
order. One tap's failure ends that link only.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

import trio

from mediation import tls_io
from mediation.pdu import taplink as T
from mediation.protocol.errors import ProtocolError
from mediation.protocol.taplink import TapLinkServer
from mediation.server.tls_send import send_all
from mediation.server.warrant_table import WarrantTable
from mediation.warrants.model import Tap, Warrant, WarrantState

if TYPE_CHECKING:
    from mediation.server.tap_ingest import BatchResult
    from mediation.server.taps import TapService

RECEIVE = 256 * 1024
# Batches stored but not yet acknowledged before the reader stops reading.
UNACKED = 16


def served(table: WarrantTable, tap: str) -> list[Warrant]:
    """Warrants a tap serves now or will (active or pending), naming it or no source."""
    out = []
    for handle, state in table.states().items():
        warrant = table.warrant(handle)
        if warrant is None or warrant.details is None:
            continue
        if state not in (WarrantState.ACTIVE, WarrantState.PENDING):
            continue
        sources = warrant.details.sources
        if not sources or any(s.kind == "tap" and s.value == tap for s in sources):
            out.append(warrant)
    return out


def warrant_set(table: WarrantTable, tap: str) -> T.WarrantSet:
    """What the tap is told to intercept (its memory only)."""
    items = []
    for w in served(table, tap):
        d = w.details
        assert d is not None
        items.append(
            T.TapWarrant(
                w.handle, d.case_id, d.iap, w.content.value, w.start, w.end,
                tuple(str(t) for t in d.targets),
            )
        )  # fmt: skip
    return T.WarrantSet(max(table.generation, 0), tuple(items))


class TapConnection:
    """One accepted tap's TLS link: reader, acker, warrant-set watcher, keepalives."""

    def __init__(
        self, service: TapService, tap: Tap, stream: trio.SSLStream, machine: TapLinkServer
    ) -> None:
        self.service = service
        self.tap = tap
        self.stream = stream
        self.machine = machine
        self.reason = "closed"
        self._send_lock = trio.Lock()
        # Batches stored, in order, not yet acknowledged: [result, receipts not yet durable].
        self._unacked: collections.deque[list[Any]] = collections.deque()
        self._acks_ready = trio.Event()  # acks are queued in the machine: the acker sends them
        self._reader_flushes = False  # True: acks queued now are the reader's to send
        self._room = trio.Event()  # the reader waits here while UNACKED batches wait
        self._sent_set: T.WarrantSet | None = None
        self.wake = trio.Event()  # set when the warrants changed
        self._scope: trio.CancelScope | None = None

    async def run(self, hello: T.TapHello) -> None:
        if hello.overflow is not None:
            self.service.overflow(self.tap.name, hello.overflow)
        await self._send_warrants()
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                nursery.start_soon(self._acker, nursery.cancel_scope)
                nursery.start_soon(self._watch, nursery.cancel_scope)
                await self._reader()
                nursery.cancel_scope.cancel()
        except Exception as exc:  # one tap's failure costs that link, never the server
            self.reason = f"connection lost: {describe(exc)}"

    def revoke(self) -> None:
        """The tap was revoked: end this link at once (nothing more is stored from it)."""
        self.reason = "tap revoked"
        if self._scope is not None:
            self._scope.cancel()

    async def _flush(self) -> None:
        # The lock only around a send: with nothing queued (the reader's
        # usual case) a flush costs no turn of the loop, and an uncontended
        # lock is taken without one (each turn is ~0.1 ms at light load).
        if self._send_lock.locked():
            await self._send_lock.acquire()
        else:
            self._send_lock.acquire_nowait()
        try:
            data = self.machine.data_to_send()
            if data:
                await send_all(self.stream, data)  # no loop turn when the socket takes it
        finally:
            self._send_lock.release()

    async def _send_warrants(self) -> None:
        current = warrant_set(self.service.table, self.tap.name)
        if current != self._sent_set:
            self._sent_set = current
            for warrant in current.warrants:
                self.service.table.tap_accepted(warrant.handle, self.tap.name)
            self.machine.send_warrants(current, trio.current_time())
            await self._flush()

    async def _reader(self) -> None:
        service = self.service
        while True:
            data = await receive_some(self.stream)
            if not data:
                self.reason = "tap closed the connection"
                return
            try:
                messages = self.machine.receive_data(data, trio.current_time())
            except ProtocolError as exc:
                service.refusals.refuse(f"protocol error: {exc}", self.tap.name)
                self.reason = f"protocol error: {exc}"
                return
            for message in messages:
                if isinstance(message, T.PduBatch):
                    result = await service.ingest.batch(service.gate(self.tap.name), message)
                    if not result.complete:  # never acknowledged: the tap sends it again
                        self.reason = "storage stopped part-way through a batch"
                        return
                    self._ack_when_stored(result)
                    if len(self._unacked) >= UNACKED:
                        await self._flush()  # the acks this reader owes, before it waits
                    while len(self._unacked) >= UNACKED:  # bounded, whatever the tap sends
                        self._room = trio.Event()
                        await self._room.wait()
                elif isinstance(message, T.Close):
                    self.reason = f"tap closed: {message.reason}"
                    return
            await self._flush()  # keepalive answers, and the acks of batches stored meanwhile

    def _ack_when_stored(self, result: BatchResult) -> None:
        """Acknowledge the batch, in order, once all its records are durable.

        The log calls back when each of its streams' records are (no task
        waits on them): one turn of the loop per batch, the acker's send.
        When they are durable already (written in the loop at light load),
        the callbacks come at once, here: the reader's own flush after the
        batch sends the ack, and the acker is not woken for it.
        """
        entry: list[Any] = [result, len(result.receipts)]
        self._unacked.append(entry)

        def stored() -> None:
            entry[1] -= 1
            if entry[1] == 0:
                self._acks_due()

        self._reader_flushes = True
        try:
            for receipt in result.receipts:
                receipt.when_durable(stored, self._not_stored)  # at once if durable already
            if not result.receipts:
                self._acks_due()
        finally:
            self._reader_flushes = False

    def _not_stored(self) -> None:
        """A stream closed before the batch was stored: never acked; end the link."""
        self.reason = "storage closed before a batch was stored"
        if self._scope is not None:
            self._scope.cancel()

    def _acks_due(self) -> None:
        """Queue the acks of the oldest batches now stored, in order; wake the acker."""
        now, unacked = trio.current_time(), self._unacked
        while unacked and unacked[0][1] == 0:
            self.machine.send_ack(unacked.popleft()[0].ack, now)
        if not self._reader_flushes:
            self._acks_ready.set()
        if len(unacked) < UNACKED:
            self._room.set()

    async def _acker(self, scope: trio.CancelScope) -> None:
        """Send the acks the log's callbacks queued (one wake-up for all queued meanwhile)."""
        while True:
            await self._acks_ready.wait()
            self._acks_ready = trio.Event()
            await self._flush()

    async def _watch(self, scope: trio.CancelScope) -> None:
        """On a change, or once a second: a new warrant set if it changed; keepalives."""
        while True:
            with trio.move_on_after(1.0):
                await self.wake.wait()
            self.wake = trio.Event()
            try:
                self.machine.tick(trio.current_time())
            except ProtocolError as exc:
                self.reason = str(exc)
                scope.cancel()
                return
            await self._send_warrants()
            await self._flush()


def describe(exc: BaseException) -> str:
    """One line for a failure (the first error of a group)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__


async def receive_some(stream: trio.SSLStream) -> bytes:
    try:
        return await tls_io.receive_some(stream, RECEIVE)  # a batch's records at once
    except trio.BrokenResourceError:
        return b""
