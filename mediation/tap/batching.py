"""The tap link's batching: PDUs into batches, and when each batch goes.

Encoded ``TapPdu`` records are cut into batches by count and size; on a
free link a batch is sent when no further burst of PDUs is expected within
its linger (so a quiet tap's PDUs go at once and a busy tap's fill large
batches), and after a short time bound (0.2 s) while the link is busy or
down. Each batch goes into the spool before it is sent (on TLS; by UDP it
goes as a datagram). The rest of the link (connection, warrants, capture)
is :class:`mediation.tap.link.TapClient`, whose base class :class:`Batching` is.
"""

from __future__ import annotations

import collections
import datetime as dt
import time
from operator import itemgetter
from typing import Any

import trio

from mediation.pdu import taplink as T
from mediation.protocol.sealed import MAX_DATAGRAM, OVERHEAD
from mediation.protocol.taplink import MAX_BATCH_BYTES
from mediation.tap.link_session import LinkCounters, Spool
from mediation.tap.spool_sync import SpoolSyncer

BATCH_PDUS = 1024
BATCH_SECONDS = 0.2  # the most an open batch waits while the link is busy or down
# The most an open batch waits for more on a free link (docs/tap-link.md). It
# waits only for a burst expected within that: frames come in bursts (a
# capture block, a replay step), and a burst after which the next would come
# too late (the gaps between bursts, smoothed, say when) seals the batch at
# once. So the last burst of a batch never waits and a lone burst goes at
# once (after a pause, until the gaps are learnt again). With a plain 5 ms
# linger each batch waited 5 ms after its first PDU, whatever came later.
LINGER_SECONDS = 0.012
BURST_GAP_MAX = 0.1  # a longer gap counts as this much (the smoothed gap recovers fast)
# A batch costs the server a fixed ~1-3 ms at light load (its journal write,
# commit and acks: /work/notes/lightload-profile.md), so one sent while
# others are in flight should be worth it: with LINGER_IN_FLIGHT batches
# unacknowledged, an open batch smaller than PIPELINE_BYTES keeps growing
# (until an ack, its limits or batch_seconds) instead of going at the linger.
# A lone PDU still goes at the linger (nothing in flight); a busy tap's
# batches (25 MB/s fills 64 KiB in under 3 ms) go without waiting for acks,
# up to the window in octets (WINDOW_BYTES).
LINGER_IN_FLIGHT = 2
PIPELINE_BYTES = 64 * 1024
UDP_BATCH_BYTES = MAX_DATAGRAM - OVERHEAD - 64


def chunk_bounds(
    records: list[tuple[bytes, dt.datetime]], most: int, size: int
) -> list[tuple[int, int, int]]:
    """Where encoded records are cut into chunks within the limits: ``(start, stop, octets)``.

    Each chunk holds at most ``most`` records and, unless one record alone
    is larger, at most ``size`` octets counting 8 of framing per record
    (what :meth:`Batching.add_chunk` counts); ``octets`` is that count.
    """
    lengths = list(map(len, map(itemgetter(0), records)))
    total = sum(lengths) + 8 * len(lengths)
    if len(lengths) <= most and total <= size:  # the common case: one chunk, counted in C
        return [(0, len(lengths), total)] if lengths else []
    out, start, octets = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and (i - start >= most or octets + n + 8 > size):
            out.append((start, i, octets))
            start, octets = i, 0
        octets += n + 8
    if start < len(lengths):
        out.append((start, len(lengths), octets))
    return out


def chunk_records(
    records: list[tuple[bytes, dt.datetime]], most: int, size: int
) -> list[tuple[bytes, int, dt.datetime, dt.datetime]]:
    """Encoded records cut into ``(payload, count, first time, last time)`` within the limits
    (:func:`chunk_bounds`): a capture worker's chunks."""
    out = []
    for start, stop, _octets in chunk_bounds(records, most, size):
        part = records[start:stop]
        out.append((b"".join([r for r, _ in part]), len(part), part[0][1], part[-1][1]))
    return out


class Batching:
    """The open batch of a :class:`~mediation.tap.link.TapClient` (a base class of it).

    Uses the client's limits (``batch_pdus``, ``batch_seconds``, ``linger``),
    its spool or UDP destination, and what the connection says of the link
    (``connected``, the stream machine's bytes in flight).
    """

    counters: LinkCounters
    spool: Spool | None
    udp: tuple[str, int] | None
    connected: bool
    trace: Any
    batch_pdus: int
    batch_seconds: float
    linger: float
    window_bytes: int
    _pending: list[bytes]
    _pending_count: int
    _pending_bytes: int
    _pending_first: dt.datetime
    _pending_last: dt.datetime
    _pending_since: float
    _last_burst: float
    _burst_gap: float
    _opened: trio.Event
    _spool_lock: trio.Lock
    _new_batch: trio.Event
    _recent: collections.deque[tuple[int, bytes]]
    _recent_lost: bool
    _last_sent: int
    _machine: Any
    _syncer: SpoolSyncer | None

    async def add(self, kind: str, when: dt.datetime, der: bytes) -> None:
        """One PDU into the open batch; the batch is sealed when full."""
        await self.add_records([(T.encode_pdu(kind, when, der), when)])

    async def add_records(self, records: list[tuple[bytes, dt.datetime]]) -> None:
        """Encoded ``TapPdu`` records (with their times) into the open batch, in order.

        Batches are sealed as they fill (by count and size), so a long list
        becomes several batches, never one too large.
        """
        for start, stop, octets in chunk_bounds(records, self.batch_pdus, self._limit):
            part = records[start:stop]  # joined once, with the rest of its batch (_take)
            parts = [record for record, _when in part]
            await self._add_parts(parts, octets, len(part), part[0][1], part[-1][1])
        await self.burst_done()

    async def burst_done(self) -> None:
        """A burst of PDUs is in (one capture block, replay step or worker chunk).

        The open batch is sealed now when the next burst, expected one gap
        from now (the gaps between bursts, smoothed), would come later than
        ``linger`` after the batch opened, and the link is free: waiting
        would add nothing to it. Otherwise the timer seals it, at ``linger`` at the latest.
        """
        now = trio.current_time()
        gap, self._last_burst = min(now - self._last_burst, BURST_GAP_MAX), now
        self._burst_gap += (gap - self._burst_gap) / 4  # smoothed: steps come unevenly
        late = now + self._burst_gap > self._pending_since + self.linger
        worth = self._pending_bytes >= PIPELINE_BYTES and self._few_in_flight()
        if self._pending and (late or worth) and not self._link_busy():
            await self.flush()

    async def add_chunk(
        self, payload: bytes, count: int, first: dt.datetime, last: dt.datetime
    ) -> None:
        """``count`` encoded records (a capture worker's chunk) into the open batch, whole.

        The batch is sealed first if the chunk would overfill it, and after
        if it is then full; a chunk is never split (workers cut them small).
        """
        await self._add_parts([payload], len(payload) + 8 * count, count, first, last)

    async def _add_parts(
        self, parts: list[bytes], size: int, count: int, first: dt.datetime, last: dt.datetime
    ) -> None:
        """:meth:`add_chunk` of ``b"".join(parts)``, ``size`` counting 8 octets a record."""
        if self._pending and (
            self._pending_count + count > self.batch_pdus
            or self._pending_bytes + size > self._limit
        ):
            await self.flush()
        if not self._pending:
            self._pending_since = trio.current_time()
            self._pending_first = first
            self._opened.set()
        self._pending += parts
        self._pending_count += count
        self._pending_bytes += size
        self._pending_last = last
        self.counters.pdus += count
        if self._pending_count >= self.batch_pdus or self._pending_bytes >= self._limit:
            await self.flush()

    @property
    def _limit(self) -> int:
        return UDP_BATCH_BYTES if self.udp is not None else MAX_BATCH_BYTES

    def _take(self) -> bytes:
        """The open batch's PDUs, joined, and the batch emptied and counted."""
        parts, self._pending = self._pending, []
        self._pending_count = self._pending_bytes = 0
        self.counters.batches += 1
        return b"".join(parts)

    async def flush(self) -> None:
        """Seal the PDUs gathered so far into one batch (spooled, or sent as a datagram).

        On TLS the PDUs are taken under the spool lock, so a flush returns
        only once every batch sealed before it is in the spool: ``drained``
        (flush, then wait for acknowledgements) cannot miss a batch that the
        timer's flush is still writing.
        """
        if self.udp is not None:
            if self._pending:
                await self._send_datagram(self._take())
            return
        assert self.spool is not None
        spool = self.spool
        async with self._spool_lock:
            if not self._pending:
                return
            if self._syncer is not None and self._syncer.error is not None:
                raise self._syncer.error  # the spool's disk failed: as a failed append does
            first, last = self._pending_first, self._pending_last
            count, sealed = self._pending_count, time.time_ns() // 1000
            payload = self._take()
            # On a live link the batch goes while the spool writes it (its id reserved:
            # mediation/tap/spool.py, "Sending ahead"): the fdatasync is off the path.
            ahead = spool.ahead(len(payload)) if self.connected else None
            if ahead is not None:
                self._queue(ahead, payload)
            syncer = self._syncer
            if syncer is not None and spool.quick(len(payload)):
                # A page-cache write here, its sync in the syncer's thread (spool_sync.py):
                # no thread hand-off, and the next seal does not wait for this sync.
                if ahead is not None:  # the sender's turn first: the batch goes ahead of its write
                    await trio.lowlevel.checkpoint()
                batch = spool.append(payload, first, last, sync=False)
                syncer.written()
            else:  # a segment roll or an id reservation: their syncs off the event loop
                batch = await trio.to_thread.run_sync(spool.append, payload, first, last)
        if batch is None:  # sent ahead or not, the spool does not hold it: counted as lost
            self.counters.overflow_batches += 1
            return
        assert ahead is None or batch == ahead, (batch, ahead)  # one append at a time
        if self.trace is not None:
            self.trace.sealed(batch, count, first, last, sealed)
        if ahead is None:
            self._queue(batch, payload)

    def _queue(self, batch: int, payload: bytes) -> None:
        """A batch for the sender, in memory (it reads the spool after a reconnect)."""
        self._recent.append((batch, payload))
        if len(self._recent) > 64:
            self._recent.popleft()
            self._recent_lost = True
        self._new_batch.set()

    async def run_timer(self) -> None:
        """Send each open batch when it is due (the time bounds); runs until cancelled.

        A batch is due once it has lingered ``linger`` seconds (more PDUs of
        the same burst join it) and the link is free: every spooled batch
        sent, the window (``window_bytes`` unacknowledged) has room for it,
        and, with ``LINGER_IN_FLIGHT`` batches unacknowledged, it is at least
        ``PIPELINE_BYTES``. While the link is busy or down the batch keeps filling, up to
        its count and size limits or ``batch_seconds``, so under load
        batches stay large and there is no wake-up per PDU: at most one per
        ``linger`` while a batch is open.

        While it runs, spool records are written in the event loop and synced
        by a :class:`~mediation.tap.spool_sync.SpoolSyncer` (TLS only).
        """
        if self.udp is not None or self.spool is None:
            await self._run_timer()
            return
        syncer = SpoolSyncer(self.spool, trio.lowlevel.current_trio_token())
        self._syncer = syncer
        try:
            await self._run_timer()
        finally:
            self._syncer = None
            syncer.stop()

    async def _run_timer(self) -> None:
        while True:
            await self._opened.wait()
            self._opened = trio.Event()
            while self._pending:  # the batch open now (a burst may have sealed the first)
                due = self._pending_since + self.linger
                if trio.current_time() < due:
                    await trio.sleep_until(due)
                    continue
                while self._pending and self._link_busy():
                    waited = trio.current_time() - self._pending_since
                    if waited >= self.batch_seconds:
                        break
                    await trio.sleep(min(self.linger, self.batch_seconds - waited))
                await self.flush()

    def _link_busy(self) -> bool:
        """Whether a new batch would wait: no connection, a spooled batch unsent, no
        room in the window for the open batch, or ``LINGER_IN_FLIGHT`` batches
        unacknowledged and the open one too small to be worth sending beside them."""
        if self.udp is not None or self.spool is None:
            return False  # a datagram goes at once
        if not self.connected or self._last_sent < self.spool.last_id:
            return True
        machine = self._machine
        if machine is None or not machine.in_flight:
            return False
        in_flight = sum(machine.in_flight.values())
        if in_flight + self._pending_bytes > self.window_bytes:
            return True
        return len(machine.in_flight) >= LINGER_IN_FLIGHT and self._pending_bytes < PIPELINE_BYTES

    def _few_in_flight(self) -> bool:
        """Fewer than ``LINGER_IN_FLIGHT`` batches unacknowledged: a batch of
        ``PIPELINE_BYTES`` goes at once, not at the linger (latency under load)."""
        machine = self._machine
        return machine is None or len(machine.in_flight) < LINGER_IN_FLIGHT
