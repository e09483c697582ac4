"""One warrant stream's log: append, group commit, checkpoints, storage state.

Appends run in the event loop and never touch the disk: a record is framed,
chained and put in the open chunk, and kept in the in-memory ring for
readers. A chunk goes to the stream's writer thread when it holds
``commit_records`` records (N) or its oldest is ``commit_interval`` old (T,
the stream's timer task sees to that); the thread writes and fdatasyncs it,
with anything else queued meanwhile. When a chunk is durable, its records
become visible to cursors and its appenders' ``durable()`` waits return.
Readers never see a record before it is on disk, so a sequence number once
delivered can never be reused.

With a log key, each record is encrypted as it is framed (AES-256-GCM under
its segment's key: ``crypto``); the ring keeps the plaintext record, so
real-time delivery never decrypts. The chain is over the plaintext body.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import math
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from mediation.log import format as F
from mediation.log.config import LogConfig
from mediation.log.crypto import LogKey
from mediation.log.cursor import RING_OVERHEAD, ReadSide, RingShare
from mediation.log.errors import LogClosed, LogError
from mediation.log.keys import LogSigner
from mediation.log.recovery import Recovered
from mediation.log.segments import Chunk
from mediation.log.state import Appended, StorageState, StorageWatch, StreamStats
from mediation.log.timer import StreamTimer
from mediation.log.waiters import DurableWaiters
from mediation.log.writer import SegmentWriter, WriterPool
from mediation.pdu import ClockStatus, StreamId, StreamKind

_ALLOWED = {
    StreamKind.CMII: frozenset({F.ContentKind.CMII, F.ContentKind.NOTICE}),
    StreamKind.CMCC: frozenset({F.ContentKind.CMCC}),
}
_sha256 = hashlib.sha256
_crc32 = zlib.crc32
_pack_meta = F.DATA_META.pack
_pack_frame = F.FRAME.pack
_META_SIZE = F.META_SIZE
_CLEAR = F.CLEAR_META_SIZE
_SEALED_META = F.META_SIZE + F.TAG_SIZE  # stored body beyond the payload: metadata and tag
_pack_nonce = struct.Struct(">4xQ").pack  # 4 zero octets, the sequence number: the record's nonce
_CLOCK_CODES = F.CLOCK_CODES
_Record = F.LogRecord
_new_tuple = tuple.__new__  # builds a LogRecord without NamedTuple's Python __new__
_time_ns = time.time_ns
_current_time = trio.current_time


class StreamLog(ReadSide):
    """The log of one warrant stream (see the package docstring for the API)."""

    def __init__(
        self,
        stream: StreamId,
        directory: Path,
        config: LogConfig,
        signer: LogSigner,
        recovered: Recovered,
        key: LogKey | None,
        pool: WriterPool,
        timer: StreamTimer,
        rings: RingShare,
    ) -> None:
        super().__init__(stream, directory, config, recovered, key)
        self._rings = rings
        self.label = F.stream_label(stream)
        self._cfg = config
        self._max_pending = config.max_pending_bytes
        self._max_payload = config.max_payload_bytes
        self._segment_bytes = config.segment_bytes
        self._index_interval = config.index_interval
        self._commit_records = config.commit_records
        self._checkpoint_records = config.checkpoint_records
        self._signer = signer
        self._key = key
        # The active segment's AESGCM.encrypt (None: records stored in clear)
        # and what a record stores beyond its payload.
        self._encrypt = recovered.cipher.encrypt if recovered.cipher is not None else None
        self._extra = F.FRAME_SIZE + (_SEALED_META if key is not None else _META_SIZE)
        self._allowed = _ALLOWED[stream.kind]
        active = (recovered.active_first, recovered.active_size, list(recovered.active_index))
        writer = SegmentWriter(directory, stream, *active)
        reports = (self._written, self._write_failed, self._write_restored)
        self._thread = pool.writer(writer, config.retry_interval, self.label, *reports)
        self._torn = recovered.torn
        self._next_seq = recovered.next_seq
        self._opened_at = recovered.next_seq
        self._chain = recovered.chain
        self._seg_first = recovered.active_first  # None: the next record starts a segment
        self._seg_bytes = recovered.active_size
        self._chunks: list[Chunk] = []
        self._queued_records = 0  # data records in chunks not yet handed to the writer
        self._queued_since = 0.0  # when the oldest of them was appended
        self._pending_bytes = 0  # appended, not yet durable
        self._since_checkpoint = recovered.since_checkpoint
        # At most one checkpoint per interval, and no record unsigned for
        # longer; a recovered unsigned tail gets its checkpoint at once.
        self._checkpoint_at = (
            -math.inf
            if recovered.since_checkpoint
            else trio.current_time() + config.checkpoint_interval
        )
        self._batches: collections.deque[int] = collections.deque(maxlen=100_000)
        self._waiters = DurableWaiters(self.label, self._durable_seq)  # when_durable(), listen()
        self._storage = StorageWatch(self.label)
        self._closing = False  # set by aclose: no more appends
        self._accepting = True  # healthy and not closing
        self._timer = timer
        self.timer_at = math.inf  # when the log's timer wakes this stream; the timer's
        self.cursors.on_dirty = self._cursors_dirty
        timer.at(self, trio.current_time())  # a recovered unsigned tail: checkpoint it

    # -- appending -------------------------------------------------------

    @property
    def next_seq(self) -> int:
        """The sequence number the next append gets."""
        return self._next_seq

    @property
    def state(self) -> StorageState:
        return self._storage.state

    def append_nowait(
        self,
        payload: bytes,
        kind: F.ContentKind,
        clock: ClockStatus = ClockStatus.UNKNOWN,
        received: int | dt.datetime | None = None,
    ) -> Appended:
        """Append a record now, without waiting; it is durable later.

        Args:
            payload: the content PDU's DER, stored as is.
            kind: CMII or NOTICE in a CmII stream, CMCC in a CmCC stream.
            clock: the clock status when the PDU was received.
            received: receive time, as microseconds since the epoch or an
                aware datetime; None: now.

        Returns:
            The record's sequence number, with a way to await durability.

        Raises:
            StorageUnavailable: storing fails now; the record is refused
                (counted in ``state.refused``) and gets no sequence number.
            trio.WouldBlock: ``max_pending_bytes`` are waiting for the disk.
            LogClosed: the stream is closed.
            LogError: wrong content kind for the stream, or payload too large.
        """
        _count, error = self.append_many((payload,), kind, clock, received)
        if error is not None:
            raise error
        return Appended(self, self._next_seq - 1)

    def append_many(
        self,
        payloads: Sequence[bytes],
        kind: F.ContentKind,
        clock: ClockStatus = ClockStatus.UNKNOWN,
        received: int | dt.datetime | None = None,
        commit: bool = False,
        barrier: Callable[[], None] | None = None,
    ) -> tuple[int, Exception | None]:
        """Append records in order, without waiting or yielding: one contiguous run.

        What a tap's batch costs per record is only the framing, the chain
        and the encryption: the kind, clock and time are looked at once, the
        commit decision is made once at the end (so a batch of more than
        ``commit_records`` is one chunk and one fdatasync).

        Args:
            payloads: the records' payloads (as ``append_nowait``).
            kind, clock, received: shared by every record (as ``append_nowait``).
            commit: hand them to the writer now, not at the commit deadline
                (a tap's batch is already a batch: waiting ``commit_interval``
                for more would only cost a timer wake-up and latency).
            barrier: with ``commit``, run by the writer thread before it
                writes any of them (:attr:`Chunk.barrier`).

        Returns:
            How many were appended (sequence numbers ``next_seq - count ..
            next_seq - 1``), and why it stopped before the end: None when all
            were; else the error ``append_nowait`` would have raised for the
            first one not appended (nothing after it is tried).

        Raises:
            LogError: wrong content kind for the stream (nothing appended).
        """
        if kind not in self._allowed:
            raise LogError(f"{self.label}: refused {kind!r} records")
        if received is None:
            received = _time_ns() // 1000
        elif received.__class__ is not int:
            received = F.to_us(received)  # type: ignore[arg-type]
        # The hot path: about 4 µs a record of 1500 bytes, 1.6 µs of it
        # SHA-256 and CRC-32, and 2 µs more to encrypt it. Module-level
        # aliases, settings in locals, no calls into helpers: each saved
        # call is about 0.1 µs.
        clock_code = _CLOCK_CODES[clock]
        kind_code = int(kind)
        # What a sealed record encrypts before its payload (the metadata after
        # the type and sequence number) is the same for the whole run.
        tail = _pack_meta(1, 0, received, kind_code, clock_code)[_CLEAR:]
        max_pending, max_payload = self._max_pending, self._max_payload
        segment_bytes, index_interval = self._segment_bytes, self._index_interval
        checkpoints = self._checkpoint_records
        extra, ring_append = self._extra, self._ring.append
        # The stream's counters live in locals through the loop (an attribute
        # read or write is ~25 ns, and a record took ten): written back before
        # any call that reads them (_chunk_for, _add_checkpoint) and at the end.
        seq, seg_bytes, pending = self._next_seq, self._seg_bytes, self._pending_bytes
        chain, since, accepting = self._chain, self._since_checkpoint, self._accepting
        first = seq
        chunk = self._chunks[-1] if self._chunks else None
        fresh = chunk is None or chunk.sealed  # the next record needs _chunk_for
        data, encrypt = (None, None) if fresh else (chunk.data, self._encrypt)
        counted = seq  # records before this one are counted in chunk.records
        added, error = 0, None
        for payload in payloads:
            n = len(payload)
            if not accepting or pending >= max_pending:
                error = self._refusal()
                break
            if n > max_payload:
                error = LogError(f"{self.label}: refused {kind!r} record of {n} bytes")
                break
            meta = _pack_meta(1, seq, received, kind_code, clock_code)
            size = extra + n
            if fresh or seg_bytes + size > segment_bytes:
                if seq > counted:
                    chunk.records += seq - counted
                    chunk.last_seq = seq - 1
                self._next_seq, self._seg_bytes, self._pending_bytes = seq, seg_bytes, pending
                self._chain = chain
                chunk = self._chunk_for(size)
                seg_bytes, pending = self._seg_bytes, self._pending_bytes
                fresh, counted = False, seq
                data, encrypt = chunk.data, self._encrypt  # a new segment has a new key
            if seq % index_interval == 0:
                chunk.index.append((seq, seg_bytes))
            if encrypt is None:
                data += _pack_frame(_META_SIZE + n, _crc32(payload, _crc32(meta)))
                data += meta
                data += payload
            else:
                clear = meta[:_CLEAR]
                sealed = encrypt(_pack_nonce(seq), tail + payload, clear)
                data += _pack_frame(_CLEAR + len(sealed), _crc32(sealed, _crc32(clear)))
                data += clear
                data += sealed
            h = _sha256(chain)
            h.update(meta)
            h.update(payload)
            chain = h.digest()
            ring_append(_new_tuple(_Record, (seq, received, kind, clock, payload)))
            seq += 1
            seg_bytes += size
            pending += size
            added += n
            since += 1
            if since >= checkpoints:
                chunk.records += seq - counted
                chunk.last_seq = seq - 1
                self._next_seq, self._seg_bytes, self._pending_bytes = seq, seg_bytes, pending
                self._chain, counted = chain, seq
                self._add_checkpoint()
                seg_bytes, pending, since = self._seg_bytes, self._pending_bytes, 0
                chunk = self._chunks[-1]
                data, encrypt = chunk.data, self._encrypt
        if seq > counted:
            chunk.records += seq - counted
            chunk.last_seq = seq - 1
        self._next_seq, self._seg_bytes, self._pending_bytes = seq, seg_bytes, pending
        self._chain, self._since_checkpoint = chain, since
        done = seq - first
        if done:
            self._ring_bytes += added + done * RING_OVERHEAD
            if self._ring_bytes > self._rings.limit:
                self._ring_trim()
            queued = self._queued_records
            self._queued_records = queued + done
            if commit:
                self._submit(barrier)
            else:
                if queued == 0:
                    self._queued_since = _current_time()
                    self._schedule()
                if queued + done >= self._commit_records:
                    self._submit()
        return done, error

    def _schedule(self) -> None:
        """Records are queued: the timer submits them at their commit deadline."""
        self._timer.at(self, self._queued_since + self._cfg.commit_interval)

    def _cursors_dirty(self) -> None:
        self._timer.at(self, self.cursors.due_at(self._cfg.cursor_persist_interval))

    def _refusal(self) -> Exception:
        """Why no record can be appended now (the slow path of append)."""
        if self._closing:
            return LogClosed(f"{self.label}: closed")
        if not self._storage.state.healthy:
            return self._storage.refuse()
        return trio.WouldBlock()

    async def append(
        self,
        payload: bytes,
        kind: F.ContentKind,
        clock: ClockStatus = ClockStatus.UNKNOWN,
        received: int | dt.datetime | None = None,
    ) -> Appended:
        """Append a record, waiting only if the disk is behind by ``max_pending_bytes``.

        It yields to other tasks once per batch of ``commit_records`` (a full
        trio checkpoint costs 3 µs here, about as much as the append itself),
        so completions are handled while a producer appends flat out.

        Raises:
            StorageUnavailable, LogClosed, LogError: as ``append_nowait``.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while self._pending_bytes >= self._cfg.max_pending_bytes and self._storage.state.healthy:
            await self._durable_event.wait()
        appended = self.append_nowait(payload, kind, clock, received)
        if self._queued_records == 0:  # a batch just went to the writer: let others run
            await trio.lowlevel.cancel_shielded_checkpoint()
        return appended

    async def wait_state_change(self, seen: StorageState) -> StorageState:
        """Return the storage state once it differs from ``seen`` in health."""
        return await self._storage.wait_change(seen)

    @property
    def stats(self) -> StreamStats:
        return StreamStats(
            self._next_seq - self._opened_at,
            self._thread.syncs,
            self._durable_seq,
            tuple(self._batches),
            self._torn,
        )

    # -- building chunks and checkpoints ----------------------------------

    def _chunk_for(self, size: int) -> Chunk:
        """The chunk a new data record of ``size`` bytes goes into (maybe a new segment)."""
        seq = self._next_seq
        roll = self._seg_first is None or (
            self._seg_bytes + size > self._segment_bytes and seq > self._seg_first
        )
        return self._new_segment() if roll else self._open_chunk()

    def _new_segment(self) -> Chunk:
        """Start the segment of the next record: a new salt, so a new key, when encrypted."""
        seq = self._next_seq
        if self._key is None:
            header = F.encode_header(self.id, seq, self._chain)
        else:
            header, cipher = self._key.new_segment(self.id, seq, self._chain)
            self._encrypt = cipher.encrypt
        self._seg_first, self._seg_bytes = seq, len(header)
        chunk = Chunk(seq, True, header)
        self._chunks.append(chunk)
        return chunk

    def _open_chunk(self) -> Chunk:
        if self._chunks and not self._chunks[-1].sealed:
            return self._chunks[-1]
        if self._seg_first is None:  # reopened: even a checkpoint starts a new segment
            return self._new_segment()
        chunk = Chunk(self._seg_first, False, b"")
        self._chunks.append(chunk)
        return chunk

    def _add_checkpoint(self) -> None:
        """Sign the chain after the last appended record and queue the checkpoint."""
        last, now = self._next_seq - 1, _time_ns() // 1000
        message = F.checkpoint_message(self.id, last, now, self._chain)
        cp = F.Checkpoint(
            self.id, last, now, self._chain, self._signer.key_id, self._signer.sign(message)
        )
        frame = F.encode_checkpoint(cp)
        chunk = self._open_chunk()
        chunk.data += frame
        chunk.checkpoints.append(cp)
        self._seg_bytes += len(frame)
        self._pending_bytes += len(frame)
        self._since_checkpoint = 0
        self._checkpoint_at = trio.current_time() + self._cfg.checkpoint_interval
        if self._queued_records == 0:
            self._queued_since = trio.current_time()
        self._schedule()

    # -- handing chunks to the writer thread and hearing back ----------------

    def _submit(self, barrier: Callable[[], None] | None = None) -> None:
        """Seal every open chunk and queue it for writing, in order (each after ``barrier``)."""
        for chunk in self._chunks:
            if not chunk.sealed:
                chunk.sealed = True
                chunk.barrier = barrier
                self._thread.submit(chunk)
        self._queued_records = 0

    def _written(self, chunks: list[Chunk]) -> None:
        """From the writer thread: these chunks (the oldest outstanding) are durable."""
        records = 0
        for chunk in chunks:
            if not self._chunks or self._chunks[0] is not chunk:
                return  # cannot happen: chunks are written in order
            self._chunks.pop(0)
            self._pending_bytes -= len(chunk.data)
            records += chunk.records
            self._publish(chunk)
        self._batches.append(records)
        self._waiters.due(self._durable_seq)

    def when_durable(
        self, seq: int, callback: Callable[[], None], closed: Callable[[], None] | None = None
    ) -> None:
        """Call ``callback()`` once record ``seq`` is durable; ``closed()`` if the stream
        closes first (:meth:`DurableWaiters.add <mediation.log.waiters.DurableWaiters.add>`)."""
        self._waiters.add(seq, callback, closed)

    def listen(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` whenever the stream's readers are woken; returns the way to stop
        (:meth:`DurableWaiters.listen <mediation.log.waiters.DurableWaiters.listen>`)."""
        return self._waiters.listen(callback)

    def _wake_readers(self) -> None:
        super()._wake_readers()
        self._waiters.notify()

    def _write_failed(self, exc: Exception) -> None:
        self._storage.failed(exc)
        self._state_changed()

    def _write_restored(self) -> None:
        self._storage.restored()
        self._state_changed()

    def _state_changed(self) -> None:
        self._accepting = self._storage.state.healthy and not self._closing
        self._timer.at(self, trio.current_time())  # a checkpoint may be due again
        self._wake_readers()

    # -- what the log's timer calls ---------------------------------------

    def on_timer(self, now: float) -> float:
        """Submit records whose time is up, checkpoint, ask for a cursor save.

        Returns:
            When to be called next (inf: nothing pending).
        """
        cfg = self._cfg
        while not self._closing:
            deadline = math.inf
            if self._queued_records or (self._chunks and not self._chunks[-1].sealed):
                due = self._queued_since + cfg.commit_interval
                if now >= due:
                    self._submit()
                    continue
                deadline = due
            if self._since_checkpoint and self._storage.state.healthy:
                if now >= self._checkpoint_at:
                    self._add_checkpoint()
                    continue
                deadline = min(deadline, self._checkpoint_at)
            saving = self.cursors.due_at(cfg.cursor_persist_interval)
            if saving <= now:
                self._timer.save_cursors(self)
            else:
                deadline = min(deadline, saving)
            return deadline
        return math.inf

    async def persist_cursors(self) -> None:
        """Write named cursor positions now (atomic replace, fsynced)."""
        data = self.cursors.snapshot()
        if data is None:
            return
        try:
            await trio.to_thread.run_sync(self.cursors.write, data, abandon_on_cancel=False)
        except OSError:
            self.cursors.retry_later()  # a full disk: acks are kept in memory meanwhile

    async def aclose(self) -> None:
        """Checkpoint, store what is queued, save cursors, stop. Idempotent.

        Shielded: closing completes even inside a cancelled scope. Records not
        stored because storing fails were never reported durable.
        """
        if self._closing:
            return
        self._closing = True
        self._accepting = False
        with trio.CancelScope(shield=True):
            if self._since_checkpoint and self._storage.state.healthy:
                self._add_checkpoint()
            self._submit()
            while self._chunks and self._storage.state.healthy:
                await self._durable_event.wait()
            await self._thread.stop()
            await self.persist_cursors()
        self._closed = True  # readers and durable() waiters stop waiting
        self._waiters.drop()
        self._wake_readers()
