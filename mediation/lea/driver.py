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

import collections
import functools
import logging
from collections.abc import Awaitable, Callable

import trio

from mediation.lea.state import ReceiverState
from mediation.protocol import (
    CheckpointReceived,
    EnvelopeReceived,
    Event,
    PeerTimedOut,
    ProtocolError,
    StreamReceiver,
)

log = logging.getLogger("mediation.lea")

RECEIVE_SIZE = 256 * 1024  # a read takes what a wake-up has: ~170 full-size envelopes
_ENVELOPE_TAG, _CHECKPOINT_TAG = 0xA0, 0xA7  # [0] and [7], constructed


class RawCapture:
    """Frames the same octets as the machine, keeping envelopes and checkpoints as received.

    Each envelope or checkpoint message yields exactly one event, in
    order, so the n-th ``EnvelopeReceived`` is the n-th envelope message.
    Re-encoding the record instead would drop any extension fields of a
    later version: the raw file must hold what arrived.

    It is fed only octets the machine accepted, so every message in them
    has a valid header (the machine's framing checked it with the project's
    header reader): here it is only skipped, the common forms inline.
    Framing again with a :class:`MessageBuffer` cost a tenth of a TLS
    receiver's CPU. A message that spans reads waits in a buffer that
    grows by each read and is framed once it is whole, so however finely
    the peer splits it the work stays in proportion to its size.
    """

    def __init__(self) -> None:
        self._rest = bytearray()  # the start of a message a later read completes
        self._wanted = 0  # that message's whole size, once its header is in
        self._queues: dict[int, collections.deque[bytes]] = {
            _ENVELOPE_TAG: collections.deque(),
            _CHECKPOINT_TAG: collections.deque(),
        }

    def feed(self, data: bytes) -> None:
        """Octets the machine accepted (after its ``receive_data`` returned)."""
        if data.__class__ is not bytes:
            data = bytes(data)
        rest = self._rest
        if rest:
            need = self._wanted - len(rest)
            if self._wanted and len(data) < need:
                rest += data
                return
            if self._wanted:  # the waiting message is whole: keep it, frame the rest
                self._keep(bytes(rest) + data[:need])
                data = data[need:]
            else:  # its header was cut: frame it again with this read
                data = bytes(rest) + data
            rest.clear()
            self._wanted = 0
        queues = self._queues
        pos, size = 0, len(data)
        while pos < size:
            tag, first = data[pos], data[pos + 1] if size - pos > 1 else 0x80
            if first < 0x80 and tag & 0x1F != 0x1F:
                end = pos + 2 + first
            elif tag & 0x1F != 0x1F and 0x81 <= first <= 0x84 and size - pos >= 2 + (first & 0x7F):
                start = pos + 2 + (first & 0x7F)
                end = start + int.from_bytes(data[pos + 2 : start], "big")
            else:  # a later version's high tag number, or a header not all here yet
                end = _message_end(data, pos, size)
                if end < 0:
                    break
            if end > size:
                self._wanted = end - pos
                break
            queue = queues.get(tag)
            if queue is not None:
                queue.append(data[pos:end])
            pos = end
        if pos < size:
            rest += data[pos:]

    def _keep(self, message: bytes) -> None:
        queue = self._queues.get(message[0])
        if queue is not None:
            queue.append(message)

    def take(self, event: Event) -> bytes:
        """The octets behind an ``EnvelopeReceived`` or ``CheckpointReceived``."""
        if isinstance(event, EnvelopeReceived):
            return self._queues[_ENVELOPE_TAG].popleft()
        if isinstance(event, CheckpointReceived):
            return self._queues[_CHECKPOINT_TAG].popleft()
        raise ValueError(f"{type(event).__name__} has no octets of its own")


def _message_end(data: bytes, pos: int, size: int) -> int:
    """Offset just past the message at ``pos``; -1 if its header is not all in ``data``.

    Only for octets whose headers were checked already (DER: a high tag
    number's octets have the top bit set but the last; a length is one
    octet, or ``0x8N`` then N octets).
    """
    at = pos + 1
    if data[pos] & 0x1F == 0x1F:
        while at < size and data[at] & 0x80:
            at += 1
        at += 1
    if at >= size:
        return -1
    first = data[at]
    if first < 0x80:
        return at + 1 + first
    start = at + 1 + (first & 0x7F)
    if start > size:
        return -1
    return start + int.from_bytes(data[at + 1 : start], "big")


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
        self._capture = RawCapture()
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
            data = await self.stream.receive_some(RECEIVE_SIZE)
            if not data:
                return
            now = trio.current_time()
            events = self.machine.receive_data(data, now)
            self._capture.feed(data)
            self.state.on_events(events, self._capture.take, self.transport, now)
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
