"""The tap spool's files: segments and records, the state file, the keys.

Files in the directory (mode 0700)::

    state                       acked id, overflow report, ids reserved; encrypted, replaced whole
    00000000000000000001.seg    a segment: header, then records; named by its first id
    lock                        flock()ed while a process has the spool open

A segment: ``MAGIC(8) salt(32) key-check(16)``, then records
``length(4) id(8) crc32(4) ciphertext(length)``, big-endian; the CRC covers
the first 12 bytes and the ciphertext; the ciphertext is AES-256-GCM of
``first-time(8) last-time(8) payload`` (microseconds since the epoch), with
the record's first 12 bytes as associated data.

Keys (HKDF-SHA256, through :mod:`mediation.tap.atrest`)::

    key (the tap's 32-byte credential key)
      -> segment key   HKDF(key, salt, "mediation-tap-spool-segment-v1")
      -> state key     HKDF(key, salt, "mediation-tap-spool-state-v1")
      -> key check     HKDF(key, salt, "mediation-tap-spool-key-check-v1")[:16]

Why a nonce never repeats under one key. A segment's key comes from a
fresh random 32-byte salt, and a segment is written by one opening only:
each opening of the spool puts its first batch into a new segment, never
after a record an earlier process wrote. Within an opening batch ids only
grow, and the record nonce is ``0000 || id`` (the evidence log's
:func:`mediation.aead.nonce`), so each (key, nonce) seals one
record. When a crash tears a record off, the next opening may give its id
to another batch, but in a new segment under a new key (and that id was
never returned, so never sent). A failed write retires its id and its
segment. The state file is an :mod:`mediation.tap.atrest` blob: a key of its
own salt, drawn anew for every write, seals that one message. Two salts are
equal with probability about s²/2^257 after s salts.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mediation.aead import nonce
from mediation.tap.atrest import (
    HEADER_BYTES,
    TAG_BYTES,
    check_header,
    derive_cipher,
    new_header,
    open_blob,
    seal_blob,
)

SEGMENT_MAGIC = b"MTSPSEG1"
STATE_MAGIC = b"MTSPSTA1"
SEGMENT_INFO = b"mediation-tap-spool-segment-v1"
STATE_INFO = b"mediation-tap-spool-state-v1"
CHECK_INFO = b"mediation-tap-spool-key-check-v1"
SEGMENT_HEADER = HEADER_BYTES
_RECORD = struct.Struct(">IQI")  # ciphertext length, batch id, crc32
_TIMES = struct.Struct(">qq")
# acked, overflow count, first, last, ids reserved (the link may send a batch
# before its record is durable, up to this id: spool.py, "Sending ahead").
_STATE = struct.Struct(">QQqqQ")
_STATE_V1 = struct.Struct(">QQqq")  # before the reservation: read as reserving none
STATE_SIZE = HEADER_BYTES + _STATE.size + TAG_BYTES
_STATE_V1_SIZE = HEADER_BYTES + _STATE_V1.size + TAG_BYTES
RECORD_OVERHEAD = _RECORD.size + _TIMES.size + TAG_BYTES
# Below this a spool holds hardly a batch; a limit this small is a mistake.
MIN_LIMIT = 4096
# A segment is deleted only when all of it is acknowledged, so at most one
# segment's worth of acknowledged batches holds space: 1/8 of the limit.
SEGMENT_FRACTION = 8
MAX_PAYLOAD = 1 << 30
KEY_BYTES = 32
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(when: datetime) -> int:
    """Microseconds since the epoch of an aware time.

    Raises:
        ValueError: a naive time.
    """
    if when.tzinfo is None:
        raise ValueError("capture times must be timezone-aware (UTC)")
    return (when - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    """The UTC time ``value`` microseconds after the epoch."""
    return _EPOCH + timedelta(microseconds=value)


def read_records(path: Path, cipher: AESGCM, size: int) -> Iterator[tuple[int, bytes | None]]:
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
                clear = cipher.decrypt(nonce(batch), sealed, head[:12])
            except InvalidTag:
                yield batch, None
                return
            yield batch, clear
            offset += _RECORD.size + length


def new_segment_header(key: bytes) -> tuple[bytes, AESGCM]:
    """A new segment's header (fresh random salt) and its cipher."""
    header, salt = new_header(key, SEGMENT_MAGIC, CHECK_INFO)
    return header, derive_cipher(key, salt, SEGMENT_INFO)


def segment_cipher(key: bytes, header: bytes) -> AESGCM:
    """The cipher of the segment whose header is ``header``.

    Raises:
        ValueError: not a segment header.
        KeyMismatch: written under another key.
    """
    return derive_cipher(key, check_header(key, header, SEGMENT_MAGIC, CHECK_INFO), SEGMENT_INFO)


def seal_record(
    cipher: AESGCM, batch: int, first: int, last: int, payload: bytes
) -> tuple[bytes, bytes]:
    """One record as stored, in two parts written together: the clear head with its
    CRC, then the sealed times and payload (not joined: a batch is ~100 KiB-1 MiB)."""
    head = struct.pack(">IQ", RECORD_OVERHEAD - _RECORD.size + len(payload), batch)
    sealed = cipher.encrypt(nonce(batch), _TIMES.pack(first, last) + payload, head)
    return head + struct.pack(">I", zlib.crc32(sealed, zlib.crc32(head))), sealed


def record_payload(clear: bytes) -> bytes:
    """The payload of a record's plaintext (after its two times)."""
    return clear[_TIMES.size :]


def stored_size(clear: bytes) -> int:
    """The bytes a record with this plaintext takes in its segment."""
    return _RECORD.size + len(clear) + TAG_BYTES


def seal_state(
    key: bytes, acked: int, count: int, first: int, last: int, reserved: int = 0
) -> bytes:
    """The state file's bytes."""
    clear = _STATE.pack(acked, count, first, last, reserved)
    return seal_blob(key, STATE_MAGIC, STATE_INFO, CHECK_INFO, clear)


def open_state(key: bytes, raw: bytes) -> tuple[int, int, int, int, int]:
    """(acked, overflow count, first, last, ids reserved) from the state file's bytes.

    A state file written before ids were reserved (its size one field
    shorter) reads as reserving none.

    Raises:
        ValueError: damaged or altered.
        KeyMismatch: written under another key.
    """
    if len(raw) == _STATE_V1_SIZE:
        clear = open_blob(key, STATE_MAGIC, STATE_INFO, CHECK_INFO, raw)
        return (*_STATE_V1.unpack(clear), 0)
    if len(raw) != STATE_SIZE:
        raise ValueError("damaged (wrong size)")
    return _STATE.unpack(open_blob(key, STATE_MAGIC, STATE_INFO, CHECK_INFO, raw))
