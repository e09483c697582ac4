"""One stream connection (live TLS delivery or retrieval) driven by trio tasks.

The shape of docs/delivery-protocol.md "Driving the machines": a reader
feeds ``receive_data`` and stores every new envelope, a timer task runs
``tick`` at ``next_deadline``, and every write goes through one lock.
What the machine sends by itself may hold acknowledgements, so it goes out
only after :meth:`ReceiverState.make_durable`: an ack means "on disk".

One task, the writer, sends what the machine has to send: it takes it,
makes everything stored so far durable, then sends it. The reader only
wakes it, so an fsync never stops the reading (at tens of thousands of
envelopes a second the socket would overflow meanwhile); acks that come
due during one sync go out together after the next. One sender also keeps
cumulative acks in order.
"""

from __future__ import annotations

import functools
import logging
import operator
from collections.abc import Awaitable, Callable

import trio

from mediation import tls_io
from mediation.lea.state import ReceiverState
from mediation.protocol import (
    Event,
    PeerTimedOut,
    ProtocolError,
    StreamReceiver,
)

log = logging.getLogger("mediation.lea")

# At most four TLS records (~40 full-size envelopes) a read. trio's own read
# gave one record a call whatever it was asked; tls_io gives every record
# received, and 256 KiB a call (what this was) doubled the TLS agency's p99
# at 16,000 PDUs/s (12 -> 20-24 ms: docs/architecture.md, tlsread), while
# 64 KiB keeps it and the CPU saved (17 -> 15 us a PDU).
RECEIVE_SIZE = 64 * 1024
# The octets of an envelope's or checkpoint's message, exactly as received:
# the machine keeps them on the event from its own framing (a later version's
# extension fields included), so the stream is framed once, not twice.
_raw_of = operator.attrgetter("raw")


class StreamDriver:
    """Runs one :class:`StreamReceiver` over one connected trio stream until it ends."""

    def __init__(
        self,
        machine: StreamReceiver,
        stream: trio.abc.Stream,
        state: ReceiverState,
        transport: str,
        *,
        on_events: Callable[[list[Event]], Awaitable[None]] | None = None,
    ) -> None:
        """Args:
        machine: a receiver whose connection has been started.
        stream: the connected (TLS) stream.
        state: where envelopes are stored.
        transport: ``tls`` or ``retrieval``, for the counters.
        on_events: called after each batch is stored (e.g. to notice
            that a fetch is complete).
        """
        self.machine = machine
        self.stream = stream
        self.state = state
        self.transport = transport
        self._on_events = on_events
        self._lock = trio.Lock()
        self._changed = trio.Event()  # the machine's next deadline moved earlier
        self._timer_at: float | None = None  # the deadline the timer task waits for
        self._output = trio.Event()  # the machine queued octets: in _pending
        self._pending: list[bytes] = []
        self.ended_by: str | None = None  # the first reason the connection ended

    async def send(self, data: bytes) -> None:
        """Write octets we asked the machine for (requests): under the one lock."""
        if data:
            async with self._lock:
                await self.stream.send_all(data)

    def _take_output(self) -> None:
        """Take what the machine queued (acks, keepalive answers) for the writer.

        Called after every ``receive_data`` and ``tick``, so the writer wakes
        only when there is something to send, not after every read.
        """
        data = self.machine.data_to_send()
        if data:
            self._pending.append(data)
            self._output.set()

    async def _send_machine_output(self) -> None:
        data = b"".join(self._pending)
        self._pending.clear()
        if data:
            await self.state.make_durable()  # it may hold acks: "stored" means on disk
            await self.send(data)

    async def run(self, *extra: Callable[[StreamDriver], Awaitable[None]]) -> None:
        """Run until the peer closes, breaks the protocol, times out or the stream fails.

        Args:
            extra: further tasks (each given this driver) that end with the
                connection, e.g. the retrieval requester.
        """
        try:
            async with trio.open_nursery() as nursery:
                scope = nursery.cancel_scope
                nursery.start_soon(self._guarded, self._timers, scope)
                nursery.start_soon(self._guarded, self._writer, scope)
                for task in extra:
                    nursery.start_soon(self._guarded, functools.partial(task, self), scope)
                await self._guarded(self._reader, scope)
        finally:
            self.machine.connection_lost()
            await trio.aclose_forcefully(self.stream)

    async def _guarded(self, task: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
        """Run one task of the connection; whatever ends it ends the connection."""
        try:
            await task()
        except ProtocolError as exc:
            self.state.counters.protocol_errors += 1
            self.end(f"protocol error: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.end(f"connection lost: {exc or type(exc).__name__}")
        self.end("closed by peer")
        scope.cancel()

    def end(self, reason: str) -> None:
        """Record why the connection ends (the first reason wins)."""
        if self.ended_by is None:
            self.ended_by = reason

    async def _reader(self) -> None:
        while self.machine.connected:
            # Every TLS record already received, in one call (trio's: one a call).
            data = await tls_io.receive_some(self.stream, RECEIVE_SIZE)
            if not data:
                return
            now = trio.current_time()
            try:
                events = self.machine.receive_data(data, now)
            except ProtocolError:
                # The envelopes before the fault count as held (a resent copy
                # would be a duplicate): store them. None of them was acked.
                events = self.machine.events_before_break()
                self.state.on_events(events, _raw_of, self.transport, now)
                raise
            self.state.on_events(events, _raw_of, self.transport, now)
            self._take_output()
            # The timer task sleeps until its deadline: wake it only if the
            # machine now needs it sooner (a later deadline it finds by itself).
            deadline = self.machine.next_deadline()
            if deadline is not None and (self._timer_at is None or deadline < self._timer_at):
                self._changed.set()
            if self._on_events is not None:
                await self._on_events(events)

    async def _writer(self) -> None:
        """Send the machine's output, each time after the fsync that covers it."""
        while True:
            await self._output.wait()
            self._output = trio.Event()
            await self._send_machine_output()

    async def _timers(self) -> None:
        while (deadline := self.machine.next_deadline()) is not None:
            self._timer_at = deadline
            with trio.move_on_at(deadline):
                await self._changed.wait()
            self._changed = trio.Event()
            events = self.machine.tick(trio.current_time())
            self._take_output()
            if any(isinstance(e, PeerTimedOut) for e in events):
                self.end("peer timed out (no keepalive answer)")
                return
