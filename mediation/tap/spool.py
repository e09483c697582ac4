"""The tap's spool: batches kept on the tap's own disk until the server has them.

While the server is unreachable the tap link appends each batch here and
drains them, oldest first, when it returns; the server's acknowledgement
(:meth:`TapSpool.ack`) reclaims their space. The spool is

* **durable**: :meth:`TapSpool.append` returns once the batch is on disk
  (``fdatasync``), with a batch id that is strictly increasing and never
  reused, across restarts and crashes;
* **bounded**: ``limit_bytes`` counts every byte of the directory (segments,
  their headers, the state file). A batch that does not fit is dropped and
  counted (count and capture-time span, :attr:`TapSpool.overflow`): the
  oldest are kept, because the agency can be told exactly what is missing
  at the end of an outage, but not in its middle;
* **encrypted**: a batch holds PDUs, and a PDU the case identity and the
  target's addresses; nothing of them is on disk in clear;
* **crash safe**: a tail torn by a crash (or ``SIGKILL``) is found by its
  CRC and AES-GCM tag when the spool is opened, and cut
  (:mod:`mediation.tap.spool_recovery`).

The on-disk format, the keys and why a nonce never repeats:
:mod:`mediation.tap.spool_format`.

Why batch ids never repeat: the next id is one more than the greatest id
found in a segment or recorded as acknowledged in the state file; the
state is written (``write_atomic``) before acknowledged segments are
deleted, and an id is returned only once its record is ``fdatasync``-ed.

Why an acknowledgement is not written at once: the state file is replaced
whole (two fsyncs and a rename), and a busy tap is acknowledged hundreds
of times a second. It is written when acknowledged segments are deleted
(which needs it, above), when the overflow report changes, and at
:meth:`TapSpool.close`. An acknowledgement a crash loses costs nothing:
the segments still hold those batches, so no id is reused, and on
reconnecting the server's hello names the last batch it stored, which the
link acknowledges again before sending anything. For the same reason the
segment being appended to is kept while it has room, even once all of it
is acknowledged (a quiet tap's every batch would otherwise create, and its
ack delete, a segment); it goes once full or at close, so still at most
one segment's worth of acknowledged batches holds space.

Written now, synced later: ``append(..., sync=False)`` writes the record
without its ``fdatasync`` (the tap link does so in its event loop when
:meth:`TapSpool.quick` says no segment roll or id reservation is due), and
:meth:`TapSpool.sync_written` (the link's sync thread) makes every record
written so far durable at once: :attr:`TapSpool.durable`. The link trusts an
acknowledgement only up to ``durable``. So sealing the next batch never
waits for the last one's sync, and a slow disk's syncs cover several
batches each. A segment is synced before it is closed, and a spool opened
again syncs the segments it finds (a stopped process's records).

Sending ahead: the link may send a batch while its record is still being
written (:meth:`TapSpool.ahead`), so the write's ``fdatasync`` is not on
the path from capture to the server. Such an id must never be given again,
even if the process or the machine stops before the record is durable (the
server would take the new batch for the one it stored): ids are reserved
``RESERVE`` at a time in the state file, durably, before the link may use
them, and a spool opened again starts after every id reserved. So ids can
jump at a restart (they are never repeated; the server takes gaps).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from mediation.durable import create_open, fsync_dir, write_atomic, write_synced, write_views
from mediation.tap.spool_format import (
    KEY_BYTES,
    MAX_PAYLOAD,
    MIN_LIMIT,
    RECORD_OVERHEAD,
    SEGMENT_FRACTION,
    SEGMENT_HEADER,
    STATE_SIZE,
    from_micros,
    micros,
    new_segment_header,
    read_records,
    record_payload,
    seal_record,
    seal_state,
)
from mediation.tap.spool_recovery import Segment, SpoolError, SpoolRecovery, WrongSpoolKey

__all__ = [
    "MIN_LIMIT",
    "RECORD_OVERHEAD",
    "SEGMENT_HEADER",
    "STATE_SIZE",
    "SpoolError",
    "TapSpool",
    "WrongSpoolKey",
]


# Ids reserved for sending ahead at a time: a state write per RESERVE / 2
# batches (about 7 s at 70 batches a second); a restart skips at most this many.
RESERVE = 1024


class TapSpool(SpoolRecovery):
    """A directory of encrypted segments; one process at a time (``flock``).

    Not thread-safe: the tap link drives it from one task, bar
    :meth:`sync_written`, which may run in another thread meanwhile.
    """

    def __init__(
        self, directory: Path, key: bytes, limit_bytes: int, lock_fd: int, reserve: bool = False
    ) -> None:
        self.directory = directory
        self.reserving = reserve  # reserve ids for sending ahead ("Sending ahead" above)
        self.limit_bytes = limit_bytes
        self._key = key
        self._lock_fd: int | None = lock_fd
        self._segments: list[Segment] = []
        self._fd: int | None = None  # the segment this opening appends to
        self._acked = 0
        self._acked_saved = 0  # what the state file says
        self._overflow: tuple[int, int, int] | None = None
        self._next = 1
        self._reserved = 0  # ids up to this may be sent before their append (the state's)
        self._segment_target = max(limit_bytes // SEGMENT_FRACTION, MIN_LIMIT // 2)
        self._written = 0  # the last id whose record is wholly written (synced or not)
        self._durable = 0  # the last id durable: every record up to it synced
        self._fd_lock = threading.Lock()  # sync_written's fd is not closed under it

    def __repr__(self) -> str:  # never the key
        return f"TapSpool({self.directory}, {self.used_bytes}/{self.limit_bytes} bytes)"

    @classmethod
    def open(
        cls, directory: Path, key: bytes, limit_bytes: int, *, reserve: bool = False
    ) -> TapSpool:
        """Open (or create, mode 0700) the spool in ``directory``, cutting torn tails.

        Args:
            directory: the spool's own directory.
            key: 32 bytes: the tap's credential key.
            limit_bytes: the most the directory may hold, every file counted.
            reserve: reserve ids so the link may send batches ahead of their
                append (:meth:`ahead`); without it :meth:`ahead` gives None.

        Raises:
            ValueError: ``key`` is not 32 bytes or ``limit_bytes`` < 4096.
            WrongSpoolKey: the spool was written under another key.
            SpoolError: open by another process, or its state file missing or damaged.
            OSError: the directory cannot be created or read.
        """
        if len(key) != KEY_BYTES:
            raise ValueError("the spool key must be 32 bytes")
        if limit_bytes < MIN_LIMIT:
            raise ValueError(f"the spool limit must be at least {MIN_LIMIT} bytes")
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise SpoolError(directory, "in use by another tap process; stop it first") from None
        spool = cls(directory, bytes(key), limit_bytes, lock_fd, reserve)
        try:
            spool._recover()
        except BaseException:
            spool.close()
            raise
        spool._written = spool._durable = spool.last_id  # recovered segments are synced
        return spool

    # -- the interface -------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        """Bytes the spool holds on disk: the state file and every segment."""
        return STATE_SIZE + sum(s.size for s in self._segments)

    @property
    def acked(self) -> int:
        """The greatest batch id acknowledged (0: none yet)."""
        return self._acked

    def ahead(self, size: int) -> int | None:
        """The id :meth:`append` will give a payload of ``size`` octets, when the link
        may send it before that append returns ("Sending ahead" above); else None.

        None when the id is not reserved yet or the payload would not fit
        under the limit (the append would drop it). Only while no append runs.
        """
        if self._fd is None or self._next > self._reserved:
            return None
        roll = self._segments[-1].size >= self._segment_target
        need = RECORD_OVERHEAD + size + (SEGMENT_HEADER if roll else 0)
        return self._next if self.used_bytes + need <= self.limit_bytes else None

    @property
    def durable(self) -> int:
        """The greatest batch id whose record, and every earlier one, is synced."""
        return self._durable

    def quick(self, size: int) -> bool:
        """Whether ``append(payload, ..., sync=False)`` of ``size`` octets makes no
        sync of its own (no segment roll, no id reservation) and fits: cheap
        enough for the event loop (a page-cache write)."""
        if self._fd is None or self._segments[-1].size >= self._segment_target:
            return False
        if self.reserving and self._reserved - self._next < RESERVE // 2 + 1:
            return False
        return self.used_bytes + RECORD_OVERHEAD + size <= self.limit_bytes

    def sync_written(self) -> int:
        """Make every record written so far durable (one ``fdatasync``); the new :attr:`durable`.

        May run in another thread while the owner appends (the records
        written before it began are covered; a segment being closed is
        synced first, under the same lock).

        Raises:
            OSError: the sync failed (EIO, ...): nothing more is durable.
        """
        with self._fd_lock:
            upto = self._written
            if self._fd is not None and upto > self._durable:
                os.fdatasync(self._fd)
                self._durable = upto
            return self._durable

    @property
    def last_id(self) -> int:
        """The greatest batch id given so far, acknowledged or not (0: none yet)."""
        return self._next - 1

    @property
    def overflow(self) -> tuple[int, datetime, datetime] | None:
        """Batches dropped since the last clear: (count, first capture, last capture)."""
        if self._overflow is None:
            return None
        count, first, last = self._overflow
        return count, from_micros(first), from_micros(last)

    def append(
        self, payload: bytes, first_time: datetime, last_time: datetime, sync: bool = True
    ) -> int | None:
        """Store one batch durably (``fdatasync``) and give it the next batch id.

        Args:
            payload: the batch as the link sends it.
            first_time, last_time: the capture-time span of its PDUs (aware).
            sync: False: written, not synced; durable once :meth:`sync_written`
                has run (see "Written now, synced later" above).

        Returns:
            The batch id, or None when it does not fit under the limit or
            the disk is full: the batch is then dropped and counted in
            :attr:`overflow`. Ids are strictly increasing; a failed write
            spends one (so an id may be skipped, never repeated).

        Raises:
            ValueError: naive times, or a payload over 1 GiB.
            OSError: the write failed other than for space (the id is
                retired; the spool stays usable), or the overflow report
                could not be saved.
        """
        self._require_open()
        first, last = micros(first_time), micros(last_time)
        if len(payload) > MAX_PAYLOAD:
            raise ValueError("a spooled batch is at most 1 GiB")
        size = RECORD_OVERHEAD + len(payload)
        roll = self._fd is None or self._segments[-1].size >= self._segment_target
        if self.used_bytes + size + (SEGMENT_HEADER if roll else 0) > self.limit_bytes:
            self._count_overflow(first, last)
            return None
        try:
            batch = self._write(payload, first, last, roll, sync)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
        else:
            if self.reserving and self._reserved - self._next < RESERVE // 2:
                self._reserve()
            return batch
        self._count_overflow(first, last)  # the disk is full before the limit: the same
        return None

    def _write(self, payload: bytes, first: int, last: int, roll: bool, sync: bool) -> int:
        if roll:
            self._new_segment()
        segment, batch, fd = self._segments[-1], self._next, self._fd
        assert fd is not None
        head, sealed = seal_record(segment.cipher, batch, first, last, payload)
        self._next += 1  # spent even if the write fails: its nonce may be on disk
        views = [memoryview(head), memoryview(sealed)]
        try:
            if not sync:
                write_views(fd, views, -1)
            elif self._written > self._durable:  # earlier records unsynced: the whole file
                write_views(fd, views, -1)
                os.fdatasync(fd)
            else:  # one system call, fdatasync's promise
                write_synced(fd, views, -1)
        except OSError:
            self._retire_segment(segment)
            raise
        segment.size += len(head) + len(sealed)
        segment.last = batch
        self._written = batch
        if sync:
            self._durable = batch
        return batch

    def pending(self) -> Iterator[tuple[int, bytes]]:
        """The unacknowledged batches, oldest first: (batch id, payload).

        Reads the disk lazily; batches appended during the iteration may or
        may not be included; ones acknowledged during it may still be.

        Raises:
            SpoolError: a record validated at opening no longer decrypts (altered on disk).
        """
        self._require_open()
        for segment in list(self._segments):
            if segment.last <= self._acked:
                continue
            for batch, clear in read_records(segment.path, segment.cipher, segment.size):
                if clear is None:
                    raise SpoolError(self.directory, f"{segment.path.name} was altered on disk")
                if batch > self._acked:
                    yield batch, record_payload(clear)

    def ack(self, upto: int) -> None:
        """Every batch with id ≤ ``upto`` is acknowledged: reclaim the space it frees.

        The state file is written only when a segment is wholly acknowledged
        and so deleted (see the module docstring for why that is enough).

        Raises:
            ValueError: ``upto`` is an id this spool never gave.
            OSError: the state could not be written (nothing changed).
        """
        self._require_open()
        if upto >= self._next:
            raise ValueError(f"batch {upto} was never spooled (the last id is {self._next - 1})")
        if upto <= self._acked:
            return
        previous, self._acked = self._acked, upto
        if not self._frees(upto):
            return  # nothing to delete: the state can wait
        try:
            self._save_state()
        except BaseException:
            self._acked = previous
            raise
        self._drop_acked()

    def ack_in_memory(self, upto: int) -> bool:
        """:meth:`ack` if it frees no segment, so needs no disk work (the common case).

        Returns:
            True: done. False: nothing changed; call :meth:`ack` (from a
            worker thread: it deletes segments and writes the state).

        Raises:
            ValueError: ``upto`` is an id this spool never gave.
        """
        self._require_open()
        if upto >= self._next:
            raise ValueError(f"batch {upto} was never spooled (the last id is {self._next - 1})")
        if upto > self._acked and self._frees(upto):
            return False
        self._acked = max(self._acked, upto)
        return True

    def clear_overflow(self) -> None:
        """Forget the overflow report (the server has been told); persisted."""
        self._require_open()
        if self._overflow is not None:
            self._overflow = None
            self._save_state()

    def close(self) -> None:
        """Save the acknowledged id, close the segment and release the lock.

        The spool object is then unusable. A state that cannot be saved is
        left as it was: those batches are only acknowledged again.
        """
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                if self._acked != self._acked_saved:
                    self._save_state()
                self._drop_acked(everything=True)  # the open segment too, if all acked
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self._close_segment()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> TapSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inside ----------------------------------------------------------------

    def _require_open(self) -> None:
        if self._lock_fd is None:
            raise ValueError("the spool is closed")

    def _count_overflow(self, first: int, last: int) -> None:
        count, low, high = self._overflow or (0, first, last)
        self._overflow = (count + 1, min(low, first), max(high, last))
        self._save_state()

    def _close_segment(self) -> None:
        """Close the segment appended to, its unsynced records synced first."""
        assert self._fd is not None
        with self._fd_lock:
            fd, self._fd = self._fd, None
            try:
                if self._written > self._durable:
                    os.fdatasync(fd)
                    self._durable = self._written
            finally:
                os.close(fd)

    def _new_segment(self) -> None:
        if self._fd is not None:
            self._close_segment()
        header, cipher = new_segment_header(self._key)
        path = self.directory / f"{self._next:020d}.seg"
        fd = create_open(path, header, 0o600, append=True)
        self._segments.append(Segment(path, self._next, self._next - 1, SEGMENT_HEADER, cipher))
        self._fd = fd

    def _retire_segment(self, segment: Segment) -> None:
        """After a failed write: cut what it may have left, append elsewhere from now on."""
        assert self._fd is not None
        with self._fd_lock:
            synced = False
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, segment.size)
                os.fdatasync(self._fd)  # the records before it, which stay
                synced = True
            os.close(self._fd)
            self._fd = None
            if synced:  # the failed id has no record: nothing up to it is unsynced
                self._written = self._durable = self._next - 1

    def _frees(self, upto: int) -> list[Segment]:
        """The segments an ack up to ``upto`` lets go: wholly acknowledged, but not the
        one being appended to while it has room. Deleting that one would make the next
        batch open a new segment (create, fsync, fsync the directory) and its ack write
        the state and delete it again: at light load, when every batch is acknowledged
        before the next, that was every batch. It goes once full, or at close."""
        open_segment = self._segments[-1] if self._fd is not None and self._segments else None
        return [
            segment
            for segment in self._segments
            if segment.last <= upto
            and not (segment is open_segment and segment.size < self._segment_target)
        ]

    def _drop_acked(self, everything: bool = False) -> None:
        gone = self._segments if everything else self._frees(self._acked)
        gone = [segment for segment in gone if segment.last <= self._acked]
        keep = [segment for segment in self._segments if segment not in gone]
        if not gone:
            return
        if self._fd is not None and self._segments[-1] in gone:
            self._close_segment()
        self._segments = keep
        for segment in gone:
            with contextlib.suppress(FileNotFoundError):
                segment.path.unlink()
        fsync_dir(self.directory)

    def _reserve(self) -> None:
        """Reserve the next ``RESERVE`` ids for sending ahead (the state file, durably).

        A failed write leaves the reservation as it was: the link then
        waits for each append, as before, until one succeeds.
        """
        before = self._reserved
        self._reserved = self._next + RESERVE
        try:
            self._save_state()
        except OSError:
            self._reserved = before

    def _save_state(self) -> None:
        count, first, last = self._overflow or (0, 0, 0)
        raw = seal_state(self._key, self._acked, count, first, last, self._reserved)
        write_atomic(self.directory / "state", raw)
        self._acked_saved = self._acked
