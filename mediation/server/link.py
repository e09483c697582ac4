"""One TLS connection to an agency, driving a :class:`StreamSender`.

The thin trio loops of docs/delivery-protocol.md ("Driving the machines"),
shared by live TLS delivery (``delivery_tls``) and retrieval
(``retrieval``):

- **reader**: ``receive_some`` -> ``receive_data`` -> handle the events
  (acks to the owner, replay requests to :meth:`Link.replay`) -> send
  ``data_to_send()`` -> wake the timer task;
- **timers**: sleep until ``next_deadline()`` or until woken, ``tick``,
  send what it queued; a keepalive unanswered ends the link;
- **flusher**: every write is one run of whole messages queued on the
  link (so messages never interleave); one task sends the queue, so one
  ``send_all`` carries every stream's envelopes, answers and replay
  results queued meanwhile. Sends are at least ``linger`` apart: queued
  octets wait until ``linger`` after the last send (the next loop turn if
  that is past, so one commit's streams still share a send), so busy
  traffic goes a few commits per TLS record run and a quiet link pays no
  timer wake-up per commit; a
  queue of ``high_water`` octets goes at once, and writers wait while it
  is that full (the link holds at most about two queues' worth).
  A writer that has queued a whole round (every stream of a commit) may
  send the queue itself with :meth:`Link.flush` when its linger is up and
  no send is under way: at light load the flusher then never wakes (one
  loop turn and one cancellation a commit fewer). The queue holds the
  messages unjoined; a send joins them once (none for a single one).

Whatever ends the link (the peer closing, a reset, a protocol error, a
timeout) is returned as one short reason for logs and the status, never
an address.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence

import trio

from mediation.log import LogClosed, RecordsUnavailable, StreamLog
from mediation.pdu import StreamId
from mediation.protocol import (
    AckReceived,
    PeerTimedOut,
    ProtocolError,
    ReplayWanted,
    StreamSender,
)
from mediation.server.tls_send import send_all

log = logging.getLogger("mediation.server.delivery")
# Octets queued before a send goes without its linger and writers wait:
# under one batch of full-size envelopes (256 x ~1.5 KB), so a catch-up's
# batch goes at once and the next is read while it is sent (bench/delivery.py
# TLS against main: 1.06 of its rate here, 0.89 at 1 MiB), and light
# traffic (a few KB a linger) never reaches it.
HIGH_WATER = 256 * 1024
AckHandler = Callable[[AckReceived], None]


class LinkClosed(Exception):
    """The link ended; ``str()`` is the reason (no addresses)."""


class Link:
    """A live connection: the stream, its machine, one write queue and its flusher."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        sender: StreamSender,
        logs: Mapping[StreamId, StreamLog],
        label: str,
        *,
        batch: int = 256,
        on_ack: AckHandler | None = None,
        linger: float = 0.0,
        high_water: int = HIGH_WATER,
    ) -> None:
        self.stream = stream
        self.sender = sender
        self.logs = logs
        self.label = label
        self.batch = batch
        self.linger = linger
        self.high_water = high_water
        self._on_ack = on_ack
        self._out: list[bytes] = []  # whole messages queued, in order, unjoined
        self.queued = 0  # octets in the queue
        self._send_done: trio.Event | None = None  # set when the send under way ends
        self._idle: trio.CancelScope | None = None  # the flusher's wait for its next send
        self._first_at = 0.0  # when the queued octets go (set when the queue fills from empty)
        self._sent_at = -math.inf  # when the flusher last took the queue
        self._drained = trio.Event()  # the flusher took the queue
        self._closed: str | None = None  # why the flusher stopped
        self.sends = 0  # send_all calls (each one run of TLS records)
        self._changed = trio.Event()
        self._timer_at = -math.inf  # the deadline the timers sleep until
        self.acked: dict[StreamId, trio.Event] = {sid: trio.Event() for sid in sender.streams}
        self.replays = 0
        self._nursery: trio.Nursery | None = None

    async def write(self, data: bytes | Sequence[bytes], *, flush_after: bool = False) -> None:
        """Queue whole messages (nothing if empty) for the flusher's next send.

        Args:
            data: the octets of whole messages, or a list of them (kept
                unjoined until sent: one copy, at the send).
            flush_after: the caller calls :meth:`flush` once it has queued
                the rest of its round (the flusher is not woken for this).

        Returns at once unless the queue is full (``high_water``): then when
        the flusher has taken it.

        Raises:
            LinkClosed: the connection is lost.
        """
        if self._closed is not None:
            raise LinkClosed(self._closed)
        if not data:  # the reader's and the timers' usual case: never wait for nothing
            return
        self.write_soon(data, flush_after=flush_after)
        while self.queued >= self.high_water:
            self._wake_flusher(-math.inf)  # a full queue goes at once
            await self._drained.wait()
            if self._closed is not None:
                raise LinkClosed(self._closed)
        await trio.lowlevel.checkpoint_if_cancelled()

    def write_soon(self, data: bytes | Sequence[bytes], *, flush_after: bool = False) -> None:
        """Queue whole messages from synchronous code (never waits); as :meth:`write`."""
        if not data or self._closed is not None:
            return
        if not self._out:
            # At most one send per linger, but a queue after a quiet linger
            # goes at once (the next loop turn, with whatever else this
            # commit queued): at light load a linger joins nothing and
            # costs a timer wake-up per commit (docs/architecture.md).
            self._first_at = max(trio.current_time(), self._sent_at + self.linger)
            if not flush_after:  # else flush() sends it, or wakes the flusher
                self._wake_flusher(self._first_at)
        if isinstance(data, bytes | bytearray):
            self._out.append(data)
            self.queued += len(data)
        else:
            self._out += data
            self.queued += sum(map(len, data))

    async def flush(self) -> None:
        """Send the queue from the calling task if its linger is up and no send is under way.

        For a writer that has queued a whole round (every stream of a
        commit, ``write(..., flush_after=True)``): the send then costs no
        wake-up of the flusher. Otherwise (a linger to wait out, a send
        under way, a queue over a quarter of ``high_water``) the flusher is
        woken for its usual send. Without a loop turn when the socket takes
        it all (``tls_send``).

        Raises:
            LinkClosed: the connection is lost.
        """
        if not self._out:
            return
        if (
            self._send_done is not None
            or self.queued > self.high_water // 4  # a catch-up: the writer reads on meanwhile
            or self._first_at > trio.current_time()  # a linger after the last send
        ):
            self._wake_flusher(self._first_at)
            return
        if self._idle is not None and self._idle.deadline != math.inf:
            # Another queued for the flusher's next turn: this send takes it.
            # (A deadline moved back before it expires never fires.)
            self._idle.deadline = math.inf
        await self._send()

    def _wake_flusher(self, at: float) -> None:
        # The flusher sleeps in a scope whose deadline is its next send:
        # one wake-up per send, not one for the queue and one for the linger.
        if self._idle is not None and at < self._idle.deadline:
            self._idle.deadline = at

    async def _flusher(self) -> None:
        """Send the queue: ``linger`` after its first octets, at once if full; until the end."""
        try:
            while True:
                if not self._out or self.queued < self.high_water:
                    # Light traffic: what other streams and commits queue
                    # meanwhile joins this send.
                    at = self._first_at if self._out else math.inf
                    with trio.CancelScope(deadline=at) as self._idle:
                        await trio.sleep_forever()
                    self._idle = None
                    if not self._out:
                        continue
                if self._send_done is not None:  # a writer's flush is sending: after it
                    await self._send_done.wait()
                    continue
                await self._send()
        finally:
            self._drained.set()  # writers waiting for room see the link end

    async def _send(self) -> None:
        """Take the whole queue and send it (the flusher, or a writer's :meth:`flush`)."""
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        self._out, self.queued = [], 0
        self._sent_at = trio.current_time()
        self._drained.set()
        self._drained = trio.Event()
        self._send_done = done = trio.Event()
        try:
            await send_all(self.stream, data)  # no loop turn when the socket takes it
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._closed = "connection lost"
            raise LinkClosed(self._closed) from None
        finally:
            self._send_done = None
            done.set()
        self.sends += 1

    async def run(self, *tasks: Callable[[Link], Awaitable[None]]) -> str:
        """Run the reader, the timers and ``tasks`` until any of them ends the link.

        Returns:
            Why it ended: "closed by the agency", "connection lost",
            "keepalive unanswered", "protocol error: ...".
        """
        reason = "closed"
        async with trio.open_nursery() as nursery:

            async def guarded(task: Callable[[Link], Awaitable[None]]) -> None:
                nonlocal reason
                try:
                    await task(self)
                except LinkClosed as exc:
                    reason = str(exc)
                except LogClosed:
                    reason = "server stopping"
                nursery.cancel_scope.cancel()

            self._nursery = nursery
            for task in (Link._reader, Link._timers, Link._flusher, *tasks):
                nursery.start_soon(guarded, task)
        return reason

    async def _reader(self) -> None:
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise LinkClosed("connection lost") from None
            if not data:
                raise LinkClosed("closed by the agency")
            now = trio.current_time()
            try:
                events = self.sender.receive_data(data, now)
            except ProtocolError as exc:
                # The message names streams by handle only; it is the agency's mistake.
                log.warning("%s: protocol error: %s", self.label, exc)
                raise LinkClosed(f"protocol error: {exc}") from None
            for event in events:
                if isinstance(event, AckReceived):
                    self._ack(event)
                elif isinstance(event, ReplayWanted) and self._nursery is not None:
                    self._nursery.start_soon(self._replay_guarded, event)
            self.write_soon(self.sender.data_to_send())  # small: never waits on the queue
            # Wake the timers only if they now have something sooner to do:
            # data from the peer mostly moves the keepalive deadline later.
            deadline = self.sender.next_deadline()
            if deadline is None or deadline < self._timer_at:
                self._changed.set()

    def _ack(self, event: AckReceived) -> None:
        if self._on_ack is not None:
            self._on_ack(event)
        waiter = self.acked.get(event.stream)
        if waiter is not None:
            waiter.set()
            self.acked[event.stream] = trio.Event()

    async def _timers(self) -> None:
        while (deadline := self.sender.next_deadline()) is not None:
            self._timer_at = deadline
            with trio.move_on_at(deadline):
                await self._changed.wait()
            self._changed = trio.Event()
            now = trio.current_time()
            events = self.sender.tick(now)
            self.write_soon(self.sender.data_to_send())  # small: never waits on the queue
            if any(isinstance(e, PeerTimedOut) for e in events):
                raise LinkClosed("keepalive unanswered")
        raise LinkClosed("connection finished")

    async def wait_ack(self, stream: StreamId) -> None:
        """Return at the next acknowledgement of ``stream``."""
        await self.acked[stream].wait()

    async def _replay_guarded(self, wanted: ReplayWanted) -> None:
        try:
            await self.replay(wanted)
        except LinkClosed:
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()

    async def replay(self, wanted: ReplayWanted) -> None:
        """Answer one replay request from the log: its envelopes, then the result.

        The machine decides (``RetrievalServer.plan``): what is below the
        log's first record is never, what is past its end is not yet, and
        reading stops at the request's or the connection's limit. Records
        are read lazily, one batch at a time, from a log cursor.
        """
        self.replays += 1
        machine = self.sender.retrieval
        stream = self.logs[wanted.stream]
        reads = machine.plan(wanted.request_id, stream.first_seq, stream.durable_seq)
        for start, stop in reads:
            if not await self._replay_range(wanted.request_id, stream, start, stop):
                break
        await self.write(self.sender.finish_replay(wanted.request_id))

    async def _replay_range(
        self, request_id: int, stream: StreamLog, start: int, stop: int
    ) -> bool:
        """Send ``start..stop`` (all durable when asked); False: a limit stopped it."""
        machine = self.sender.retrieval
        cursor = stream.cursor(start)
        position = start
        while position <= stop:
            try:
                records = await cursor.read(min(self.batch, stop - position + 1))
            except RecordsUnavailable:  # retention removed them meanwhile
                return machine.lost(request_id, position, stop, "past retention")
            out: list[bytes] = []
            going = True
            for record in records:
                # A number the log skipped is lost for good (never stored).
                skipped_to = min(record.seq, stop + 1)
                if skipped_to > position:
                    going = machine.lost(request_id, position, skipped_to - 1, "lost")
                    position = skipped_to
                if not going or record.seq > stop:
                    break
                data = machine.envelope(request_id, record)
                if data is None:
                    going = False
                    break
                out.append(data)
                position = record.seq + 1
            await self.write(out)
            if not going:
                return False
        return True


async def close_quietly(stream: trio.abc.AsyncResource) -> None:
    """Close without waiting on a peer that may be gone (no TLS close_notify wait)."""
    with trio.CancelScope(shield=True):
        await trio.aclose_forcefully(stream)


def backoff_delays(first: float, cap: float) -> Callable[[bool], float]:
    """A doubling delay: call with True after a good connection to start over."""
    delay = first

    def next_delay(reset: bool) -> float:
        nonlocal delay
        if reset:
            delay = first
        current = delay
        delay = min(cap, delay * 2) if math.isfinite(delay) else cap
        return current

    return next_delay
