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
  CRC and AES-GCM tag when the spool is opened, and cut.

Files in the directory (mode 0700)::

    state                       acked id and overflow report, encrypted, replaced whole
    00000000000000000001.seg    a segment: header, then records; named by its first id
    lock                        flock()ed while a process has the spool open

A segment: ``MAGIC(8) salt(32) key-check(16)``, then records
``length(4) id(8) crc32(4) ciphertext(length)``, big-endian; the CRC covers
the first 12 bytes and the ciphertext; the ciphertext is AES-256-GCM of
``first-time(8) last-time(8) payload`` (microseconds since the epoch), with
the record's first 12 bytes as associated data.

Keys (HKDF-SHA256, :func:`mediation.log.crypto.hkdf_sha256`)::

    key (the tap's 32-byte credential key)
      -> segment key   HKDF(key, salt, "mediation-tap-spool-segment-v1")
      -> state key     HKDF(key, salt, "mediation-tap-spool-state-v1")
      -> key check     HKDF(key, salt, "mediation-tap-spool-key-check-v1")[:16]

Why a nonce never repeats under one key. A segment's key comes from a
fresh random 32-byte salt, and a segment is written by one opening only:
each opening of the spool puts its first batch into a new segment, never
after a record an earlier process wrote. Within an opening batch ids only
grow, and the record nonce is ``0000 || id`` (the evidence log's
:func:`mediation.log.crypto.nonce`), so each (key, nonce) seals one
record. When a crash tears a record off, the next opening may give its id
to another batch, but in a new segment under a new key (and that id was
never returned, so never sent). A failed write retires its id and its
segment. The state file is sealed under a key of its own salt, drawn anew
for every write, with one fixed nonce: one key, one message. Two salts are
equal with probability about s²/2^257 after s salts.

Why batch ids never repeat: the next id is one more than the greatest id
found in a segment or recorded as acknowledged in the state file; the
state is written (``write_atomic``) before acknowledged segments are
deleted, and an id is returned only once its record is ``fdatasync``-ed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mediation.durable import fsync_dir, write_atomic
from mediation.errors import UsageError
from mediation.log.crypto import hkdf_sha256, nonce

KEY_BYTES = 32
SALT_BYTES = 32
CHECK_BYTES = 16
TAG_BYTES = 16
SEGMENT_MAGIC = b"MTSPSEG1"
STATE_MAGIC = b"MTSPSTA1"
SEGMENT_INFO = b"mediation-tap-spool-segment-v1"
STATE_INFO = b"mediation-tap-spool-state-v1"
CHECK_INFO = b"mediation-tap-spool-key-check-v1"
SEGMENT_HEADER = len(SEGMENT_MAGIC) + SALT_BYTES + CHECK_BYTES
_RECORD = struct.Struct(">IQI")  # ciphertext length, batch id, crc32
_TIMES = struct.Struct(">qq")
_STATE = struct.Struct(">QQqq")  # acked, overflow count, first, last
STATE_SIZE = len(STATE_MAGIC) + SALT_BYTES + CHECK_BYTES + _STATE.size + TAG_BYTES
RECORD_OVERHEAD = _RECORD.size + _TIMES.size + TAG_BYTES
# Below this a spool holds hardly a batch; a limit this small is a mistake.
MIN_LIMIT = 4096
# A segment is deleted only when all of it is acknowledged, so at most one
# segment's worth of acknowledged batches holds space: 1/8 of the limit.
SEGMENT_FRACTION = 8
MAX_PAYLOAD = 1 << 30
_STATE_NONCE = bytes(12)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SpoolError(UsageError):
    """The spool cannot be used as it is: says which directory and what to do."""

    def __init__(self, directory: Path, problem: str) -> None:
        super().__init__(f"spool {directory}", problem)


class WrongSpoolKey(SpoolError):
    """The spool was written under another key than the one given."""


def _micros(when: datetime) -> int:
    if when.tzinfo is None:
        raise ValueError("capture times must be timezone-aware (UTC)")
    return (when - _EPOCH) // timedelta(microseconds=1)


def _time(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _check(key: bytes, salt: bytes) -> bytes:
    return hkdf_sha256(key, salt, CHECK_INFO, CHECK_BYTES)


@dataclass
class _Segment:
    path: Path
    first: int  # first batch id in it
    last: int  # last batch id in it
    size: int  # bytes, header included
    cipher: AESGCM


class TapSpool:
    """A directory of encrypted segments; one process at a time (``flock``).

    Not thread-safe: the tap link drives it from one task.
    """

    def __init__(self, directory: Path, key: bytes, limit_bytes: int, lock_fd: int) -> None:
        self.directory = directory
        self.limit_bytes = limit_bytes
        self._key = key
        self._lock_fd: int | None = lock_fd
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # the segment this opening appends to
        self._acked = 0
        self._overflow: tuple[int, int, int] | None = None
        self._next = 1
        self._segment_target = max(limit_bytes // SEGMENT_FRACTION, MIN_LIMIT // 2)

    def __repr__(self) -> str:  # never the key
        return f"TapSpool({self.directory}, {self.used_bytes}/{self.limit_bytes} bytes)"

    @classmethod
    def open(cls, directory: Path, key: bytes, limit_bytes: int) -> TapSpool:
        """Open (or create, mode 0700) the spool in ``directory``, cutting torn tails.

        Args:
            directory: the spool's own directory.
            key: 32 bytes: the tap's credential key.
            limit_bytes: the most the directory may hold, every file counted.

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
        spool = cls(directory, bytes(key), limit_bytes, lock_fd)
        try:
            spool._recover()
        except BaseException:
            spool.close()
            raise
        return spool

    # -- the interface -------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        """Bytes the spool holds on disk: the state file and every segment."""
        return STATE_SIZE + sum(s.size for s in self._segments)

    @property
    def overflow(self) -> tuple[int, datetime, datetime] | None:
        """Batches dropped since the last clear: (count, first capture, last capture)."""
        if self._overflow is None:
            return None
        count, first, last = self._overflow
        return count, _time(first), _time(last)

    def append(self, payload: bytes, first_time: datetime, last_time: datetime) -> int | None:
        """Store one batch durably (``fdatasync``) and give it the next batch id.

        Args:
            payload: the batch as the link sends it.
            first_time, last_time: the capture-time span of its PDUs (aware).

        Returns:
            The batch id, or None when it does not fit under the limit: the
            batch is then dropped and counted in :attr:`overflow`.

        Raises:
            ValueError: naive times, or a payload over 1 GiB.
            OSError: the write failed; the spool stays usable (the id is retired).
        """
        self._require_open()
        first, last = _micros(first_time), _micros(last_time)
        if len(payload) > MAX_PAYLOAD:
            raise ValueError("a spooled batch is at most 1 GiB")
        size = RECORD_OVERHEAD + len(payload)
        roll = self._fd is None or self._segments[-1].size >= self._segment_target
        if self.used_bytes + size + (SEGMENT_HEADER if roll else 0) > self.limit_bytes:
            self._count_overflow(first, last)
            return None
        if roll:
            self._new_segment()
        segment, batch = self._segments[-1], self._next
        head = struct.pack(">IQ", size - _RECORD.size, batch)
        sealed = segment.cipher.encrypt(nonce(batch), _TIMES.pack(first, last) + payload, head)
        record = head + struct.pack(">I", zlib.crc32(sealed, zlib.crc32(head))) + sealed
        self._next += 1  # spent even if the write fails: its nonce may be on disk
        try:
            _write_all(self._fd, record)
            os.fdatasync(self._fd)
        except OSError:
            self._retire_segment(segment)
            raise
        segment.size += len(record)
        segment.last = batch
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
            for batch, clear in self._records(segment.path, segment.cipher, segment.size):
                if clear is None:
                    raise SpoolError(self.directory, f"{segment.path.name} was altered on disk")
                if batch > self._acked:
                    yield batch, clear[_TIMES.size :]

    def ack(self, upto: int) -> None:
        """Every batch with id ≤ ``upto`` is acknowledged: persist that, reclaim space.

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
        try:
            self._save_state()
        except BaseException:
            self._acked = previous
            raise
        self._drop_acked()

    def clear_overflow(self) -> None:
        """Forget the overflow report (the server has been told); persisted."""
        self._require_open()
        if self._overflow is not None:
            self._overflow = None
            self._save_state()

    def close(self) -> None:
        """Close the segment and release the lock; the spool object is then unusable."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
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

    def _new_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        salt = os.urandom(SALT_BYTES)
        path = self.directory / f"{self._next:020d}.seg"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            _write_all(fd, SEGMENT_MAGIC + salt + _check(self._key, salt))
            os.fsync(fd)
            fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        cipher = AESGCM(hkdf_sha256(self._key, salt, SEGMENT_INFO, KEY_BYTES))
        self._segments.append(_Segment(path, self._next, self._next - 1, SEGMENT_HEADER, cipher))
        self._fd = fd

    def _retire_segment(self, segment: _Segment) -> None:
        """After a failed write: cut what it may have left, append elsewhere from now on."""
        assert self._fd is not None
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, segment.size)
        os.close(self._fd)
        self._fd = None

    def _drop_acked(self) -> None:
        keep, gone = [], []
        for segment in self._segments:
            (gone if segment.last <= self._acked else keep).append(segment)
        if not gone:
            return
        if self._fd is not None and self._segments[-1] in gone:
            os.close(self._fd)
            self._fd = None
        self._segments = keep
        for segment in gone:
            with contextlib.suppress(FileNotFoundError):
                segment.path.unlink()
        fsync_dir(self.directory)

    def _save_state(self) -> None:
        count, first, last = self._overflow or (0, 0, 0)
        salt = os.urandom(SALT_BYTES)
        cipher = AESGCM(hkdf_sha256(self._key, salt, STATE_INFO, KEY_BYTES))
        sealed = cipher.encrypt(_STATE_NONCE, _STATE.pack(self._acked, count, first, last), None)
        write_atomic(
            self.directory / "state", STATE_MAGIC + salt + _check(self._key, salt) + sealed
        )

    def _load_state(self) -> bool:
        """Read the state file; False if there is none."""
        try:
            raw = (self.directory / "state").read_bytes()
        except FileNotFoundError:
            return False
        if len(raw) != STATE_SIZE or not raw.startswith(STATE_MAGIC):
            raise SpoolError(self.directory, "its state file is damaged; move the spool away")
        salt, check, sealed = _split_header(raw)
        if _check(self._key, salt) != check:
            raise self._wrong_key()
        cipher = AESGCM(hkdf_sha256(self._key, salt, STATE_INFO, KEY_BYTES))
        try:
            clear = cipher.decrypt(_STATE_NONCE, sealed, None)
        except InvalidTag:
            raise SpoolError(self.directory, "its state file was altered; move it away") from None
        self._acked, count, first, last = _STATE.unpack(clear)
        self._overflow = (count, first, last) if count else None
        return True

    def _wrong_key(self) -> WrongSpoolKey:
        return WrongSpoolKey(
            self.directory,
            "written under another tap key (other credentials); use the credentials that "
            "wrote it, or move the directory away to start an empty spool",
        )

    def _recover(self) -> None:
        for stray in self.directory.glob(".state.*.tmp"):
            stray.unlink()  # a state write a crash interrupted
        segments = sorted(self.directory.glob("*.seg"))
        if not self._load_state():
            if segments:
                raise SpoolError(
                    self.directory, "segments without a state file; move the spool away"
                )
            self._save_state()
        for path in segments:
            segment = self._recover_segment(path)
            if segment is not None:
                self._segments.append(segment)
        last = max((s.last for s in self._segments), default=0)
        self._next = max(self._acked, last) + 1
        self._drop_acked()

    def _recover_segment(self, path: Path) -> _Segment | None:
        """The segment in ``path`` with a torn or damaged tail cut; None if it was removed."""
        with path.open("rb") as stream:
            header = stream.read(SEGMENT_HEADER)
        if len(header) < SEGMENT_HEADER:  # torn while it was being created
            path.unlink()
            return None
        if not header.startswith(SEGMENT_MAGIC):
            raise SpoolError(self.directory, f"{path.name} is not a spool segment; move it away")
        salt, check, _ = _split_header(header)
        if _check(self._key, salt) != check:
            raise self._wrong_key()
        cipher = AESGCM(hkdf_sha256(self._key, salt, SEGMENT_INFO, KEY_BYTES))
        size, first, last = SEGMENT_HEADER, 0, 0
        for batch, clear in self._records(path, cipher, path.stat().st_size):
            if clear is None or batch <= last:
                break
            first, last = first or batch, batch
            size += _RECORD.size + len(clear) + TAG_BYTES
        if last == 0:
            path.unlink()
            return None
        if size != path.stat().st_size:
            with path.open("r+b") as stream:
                stream.truncate(size)
                os.fsync(stream.fileno())
        return _Segment(path, first, last, size, cipher)

    @staticmethod
    def _records(path: Path, cipher: AESGCM, size: int) -> Iterator[tuple[int, bytes | None]]:
        """(id, time+payload plaintext) of each record in the first ``size`` bytes.

        Stops at a record cut short; yields (id, None) for one whose CRC or
        tag fails, and stops there.
        """
        with path.open("rb") as stream:
            stream.seek(SEGMENT_HEADER)
            offset = SEGMENT_HEADER
            while offset + _RECORD.size <= size:
                head = stream.read(_RECORD.size)
                length, batch, crc = _RECORD.unpack(head)
                # The length is checked against the file before anything is read.
                if length < _TIMES.size + TAG_BYTES or offset + _RECORD.size + length > size:
                    return
                sealed = stream.read(length)
                if len(sealed) != length or zlib.crc32(sealed, zlib.crc32(head[:12])) != crc:
                    yield batch, None
                    return
                try:
                    yield batch, cipher.decrypt(nonce(batch), sealed, head[:12])
                except InvalidTag:
                    yield batch, None
                    return
                offset += _RECORD.size + length


def _split_header(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """A segment's or the state file's salt, key check, and what follows."""
    at = len(SEGMENT_MAGIC)  # both magics are 8 bytes
    return raw[at : at + SALT_BYTES], raw[at + SALT_BYTES : SEGMENT_HEADER], raw[SEGMENT_HEADER:]


def _write_all(fd: int | None, data: bytes) -> None:
    assert fd is not None
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
