"""The tap link's connection, for :class:`mediation.tap.link.TapClient`.

Connects over TLS with the tap's certificate, checks the server's
certificate by the bundle's server CA and role, says hello (the spool's
next batch and overflow), takes warrant sets and acknowledgements, and
sends spooled batches oldest first within the window: from disk after a
reconnect, then from memory. A lost connection is retried with a doubling
delay. The batching, the capture and the warrant set live in
:class:`~mediation.tap.link.TapClient`, which this is the base of.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
import time
from typing import Any, Protocol

import trio
from cryptography import x509

from mediation.pdu import taplink as T
from mediation.pki import SERVER_AUTH, Role, check_role
from mediation.protocol.taplink import State, TapLinkTap

log = logging.getLogger("mediation.tap")
RECONNECT_MIN, RECONNECT_MAX = 0.1, 5.0
DISK_CHUNK = 32  # spooled batches read per step while draining
# The window: octets of batches sent and not yet acknowledged (docs/tap-link.md).
# The server acknowledges a batch once it is durable (its journal and log
# fdatasyncs: 10-100 ms under load), so the window must hold that long of
# traffic for the tap never to wait on it: at the goal of 30,000 PDUs/s
# (1500-byte frames, ~850 octets a PDU, ~25 MB/s) 4 MiB is ~160 ms. It is
# also 8 batches of the largest size, the most the old window of 8 batches
# could hold, so the server never has more of one tap's batches to buffer.
WINDOW_BYTES = 4 * 1024 * 1024
# Batches in flight at most, whatever their size: many small ones at light
# load are cheap to hold; the octets above are the bound that matters.
WINDOW_BATCHES = 256


class Spool(Protocol):
    """What the link needs of the spool (:class:`mediation.tap.spool.TapSpool`)."""

    @property
    def last_id(self) -> int: ...
    @property
    def durable(self) -> int: ...
    @property
    def overflow(self) -> tuple[int, dt.datetime, dt.datetime] | None: ...
    def append(
        self, payload: bytes, first_time: dt.datetime, last_time: dt.datetime, sync: bool = True
    ) -> int | None: ...
    def ahead(self, size: int) -> int | None: ...
    def quick(self, size: int) -> bool: ...
    def sync_written(self) -> int: ...
    def pending(self) -> Any: ...
    def ack(self, upto: int) -> None: ...
    def ack_in_memory(self, upto: int) -> bool: ...
    def clear_overflow(self) -> None: ...


@dataclasses.dataclass
class LinkCounters:
    """Numbers only: safe to print."""

    frames: int = 0
    pdus: int = 0
    batches: int = 0
    acked: int = 0
    overflow_batches: int = 0
    connects: int = 0
    datagrams: int = 0


def describe(exc: BaseException) -> str:
    """One line for a failed connection (the first error of a group)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__


class LinkSession:
    """The connection half of a tap client; the state it uses is made by the client."""

    credentials: Any
    spool: Spool | None
    address: tuple[str, int]
    context: Any
    counters: LinkCounters
    connected: bool
    _acked: trio.Event
    _new_batch: trio.Event
    _spool_lock: trio.Lock
    _recent: collections.deque[tuple[int, bytes]]
    _recent_lost: bool
    _backlog: collections.deque[tuple[int, bytes]]
    _last_sent: int
    _machine: TapLinkTap | None  # the connection's machine while connected
    _send_lock: trio.Lock  # the connection's: one task sends at a time (_send)
    _syncer: Any  # the spool's SpoolSyncer while the timer runs (mediation/tap/spool_sync.py)
    window_bytes: int
    warrants_ready: trio.Event
    trace: Any  # a BatchTrace (mediation/tap/trace.py) or None

    async def flush(self) -> None:
        raise NotImplementedError

    async def prepare(self) -> None:
        raise NotImplementedError

    def _apply(self, warrants: T.WarrantSet) -> None:
        raise NotImplementedError

    async def drained(self) -> None:
        """Return once every spooled batch is acknowledged (TLS) or sent (UDP)."""
        await self.flush()
        while self.spool is not None and self._unacked():
            await self._acked.wait()
            self._acked = trio.Event()

    def _unacked(self) -> bool:
        assert self.spool is not None
        return getattr(self.spool, "acked", 0) < self.spool.last_id

    async def run_link(self) -> None:
        """Connect, and reconnect with a doubling delay, until cancelled."""
        delay = RECONNECT_MIN
        while True:
            started = time.monotonic()
            try:
                await self._connection()
            except* Exception as group:  # any failure of one connection: count it, retry
                # except*: a link that breaks while the tap is being stopped raises
                # its error together with Cancelled; the Cancelled goes on up.
                log.warning("tap link: %s", describe(group))
            self.connected, self._machine = False, None
            if time.monotonic() - started > 10:
                delay = RECONNECT_MIN
            await trio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _connection(self) -> None:
        tcp = await trio.open_tcp_stream(*self.address)
        stream = trio.SSLStream(tcp, self.context, server_hostname=self.address[0])
        try:
            with trio.fail_after(10):
                await stream.do_handshake()
            der = stream.getpeercert(binary_form=True)
            cas = x509.load_pem_x509_certificates(self.credentials.server_ca_pem.encode())
            check_role(der, Role.SERVER, cas, SERVER_AUTH)
            await self._speak(stream)
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _hello(self) -> T.TapHello:
        overflow = None
        if self.spool is not None and self.spool.overflow is not None:
            count, first, last = self.spool.overflow
            overflow = T.Overflow(count, first, last)
        spool = self.spool
        next_batch = spool.last_id + 1 if spool is not None else 1
        pending = spool.last_id - getattr(spool, "acked", spool.last_id) if spool else 0
        return T.TapHello(self.credentials.name, next_batch, min(pending, 2**32 - 1), overflow)

    async def _speak(self, stream: trio.SSLStream) -> None:
        hello = await self._hello()
        machine = TapLinkTap(hello, trio.current_time(), window=WINDOW_BATCHES)
        self._machine = machine
        self._send_lock = trio.Lock()
        await self._send(stream, machine)
        self.counters.connects += 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receiver, stream, machine, hello, nursery.cancel_scope)
            nursery.start_soon(self._ticker, stream, machine)
            await self._sender(stream, machine)

    def _window_open(self, machine: TapLinkTap, size: int) -> bool:
        """Whether a batch of ``size`` octets may go now: within the count and the
        octets of the window; one batch always may when none is in flight."""
        if not machine.can_send():
            return False
        in_flight = sum(machine.in_flight.values())
        return in_flight == 0 or in_flight + size <= self.window_bytes

    async def _receiver(
        self, stream: trio.SSLStream, machine: TapLinkTap, hello: T.TapHello, scope: Any
    ) -> None:
        """Messages in, acknowledgements settled once per read (the newest covers the rest)."""
        while True:
            data = await stream.receive_some(256 * 1024)
            if not data:
                raise trio.BrokenResourceError("server closed the connection")
            acked = None
            for message in machine.receive_data(data, trio.current_time()):
                if isinstance(message, T.BatchAck):
                    self.counters.acked += 1
                    acked = message.batch_id
                else:
                    await self._on_message(message, hello)
            if acked is not None:
                if self.trace is not None:
                    self.trace.acked(acked)
                await self._settle(acked)
            await self._send(stream, machine)  # keepalive answers
            self._new_batch.set()  # the window may have opened

    async def _on_message(self, message: T.Message, hello: T.TapHello) -> None:
        spool = self.spool
        if isinstance(message, T.ServerHello):
            self.connected = True
            log.info("tap link: connected; the server holds batches up to %d", message.last_stored)
            if spool is not None:
                upto = min(message.last_stored, spool.last_id)
                async with self._spool_lock:
                    await trio.to_thread.run_sync(spool.sync_written)  # trusted once durable
                    await trio.to_thread.run_sync(spool.ack, upto)
                    if hello.overflow is not None:
                        await trio.to_thread.run_sync(spool.clear_overflow)
                self._last_sent = upto
                self._acked.set()
        elif isinstance(message, T.WarrantSet):
            self._apply(message)
            await self.prepare()  # before the first capture or replay begins
            self.warrants_ready.set()
        elif isinstance(message, T.Close):
            raise trio.BrokenResourceError(f"server closed: {message.reason}")

    async def _settle(self, upto: int) -> None:
        """Every batch up to ``upto`` acknowledged: one spool call for all of them,
        in a worker thread only when it has disk work (deleting a segment)."""
        spool = self.spool
        if spool is not None:
            await self._durable_upto(upto)
            async with self._spool_lock:
                if not spool.ack_in_memory(upto):
                    await trio.to_thread.run_sync(spool.ack, upto)
        self._acked.set()

    async def _durable_upto(self, upto: int) -> None:
        """Return once the spool holds every batch up to ``upto`` durably: an
        acknowledgement is trusted only then. Usually at once (the server's own
        sync takes longer than the spool's)."""
        spool = self.spool
        assert spool is not None
        if spool.durable >= upto:
            return
        async with self._spool_lock:
            pass  # an append in a worker thread (sent ahead of it) ends first
        syncer = self._syncer
        if syncer is not None:
            await syncer.until(upto)
        elif spool.durable < upto:
            await trio.to_thread.run_sync(spool.sync_written)

    async def _ticker(self, stream: trio.SSLStream, machine: TapLinkTap) -> None:
        while True:
            await trio.sleep(1.0)
            machine.tick(trio.current_time())
            await self._send(stream, machine)

    async def _send(self, stream: trio.SSLStream, machine: TapLinkTap) -> None:
        """What the machine has queued, sent whole, by one task at a time, in order.

        The sender (batches), the receiver (keepalive answers) and the ticker
        (keepalives) all send; a stream takes one ``send_all`` at a time
        (trio raises BusyResourceError for a second, which broke the link),
        and the sender's can wait long while the server reads slowly.
        """
        async with self._send_lock:
            out = machine.data_to_send()
            if out:
                await stream.send_all(out)

    async def _sender(self, stream: trio.SSLStream, machine: TapLinkTap) -> None:
        """Send spooled batches oldest first, within the window.

        Every batch ready and within the window goes in one TLS write.
        """
        self._last_sent, self._recent_lost = -1, True
        self._backlog.clear()
        while machine.state is not State.READY:
            await self._new_batch.wait()
            self._new_batch = trio.Event()
        while True:
            sent: list[int] = []
            while machine.can_send():
                batch = await self._next_batch()
                if batch is None or not self._window_open(machine, len(batch[1])):
                    break
                machine.send_batch(batch[0], batch[1], trio.current_time())
                self._last_sent = batch[0]
                sent.append(batch[0])
            if sent:
                await self._send(stream, machine)
                if self.trace is not None:
                    self.trace.sent(sent)
                continue
            await self._new_batch.wait()
            self._new_batch = trio.Event()

    async def _next_batch(self) -> tuple[int, bytes] | None:
        """The oldest batch not yet sent on this connection: from disk, then from memory."""
        if self.spool is None:
            return None
        backlog = self._backlog
        while backlog and backlog[0][0] <= self._last_sent:
            backlog.popleft()
        if not backlog and self._recent_lost:
            self._recent_lost = False  # from here on, new batches are in _recent
            chunk = await self._from_disk(self._last_sent, DISK_CHUNK)
            backlog.extend(chunk)
            if len(chunk) == DISK_CHUNK:
                self._recent_lost = True  # more on disk after these
        if backlog:
            return backlog[0]  # dropped once sent (above)
        recent = self._recent
        while recent and recent[0][0] <= self._last_sent:
            recent.popleft()
        return recent[0] if recent else None

    async def _from_disk(self, after: int, count: int) -> list[tuple[int, bytes]]:
        spool = self.spool
        assert spool is not None

        def read() -> list[tuple[int, bytes]]:
            out = []
            for batch, payload in spool.pending():
                if batch > after:
                    out.append((batch, payload))
                    if len(out) == count:
                        break
            return out

        async with self._spool_lock:
            return await trio.to_thread.run_sync(read)
