"""The on-disk format of the evidence log: segment headers, record frames, the chain.

Everything a court's verifier needs is here and in ``docs/evidence-log.md``;
no trio, no state. All integers are big-endian.

Segment file (``<first sequence, 20 digits>.seg``)::

    header  88 bytes (version 1, unencrypted) or 136 bytes (version 2, encrypted)
      0   8  magic b"MLOGSEG1"
      8   2  format version: 1 or 2
     10   1  stream kind: 0 cmII, 1 cmCC
     11   1  handle length n (1..32)
     12  32  warrant handle, ASCII, zero-padded
     44   8  sequence number of the segment's first data record
     52  32  chain value before that record
    version 1:
     84   4  CRC-32 of bytes 0..83
    version 2:
     84  32  salt: random, new for every segment (see ``crypto``)
    116  16  key check: proves which log key the segment was written with
    132   4  CRC-32 of bytes 0..131
    frames, back to back
    zero fill: while a segment is open, zero bytes may follow its last
      frame (space its writer made ahead: ``segments.SegmentWriter``);
      a closed segment ends with its last frame

Frame::

     0   4  body length L
     4   4  CRC-32 (ISO-HDLC, as zlib.crc32) of the body
     8   L  body

L is at least 1 (a body starts with its type), so a frame header is never
eight zero bytes: zeros where a frame would start are the fill, not a frame.

Data record body (type 1)::

     0   1  type = 1
     1   8  sequence number
     9   8  receive time: microseconds since 1970-01-01T00:00:00Z (signed)
    17   1  content kind: 0 cmII, 1 cmCC, 2 completeness notice
    18   1  clock status at receive: 0 synchronised, 1 unsynchronised, 2 unknown
    19   -  payload: the content PDU's DER exactly as received or built

Stored data record in a version 2 (encrypted) segment::

     0   1  type = 1
     1   8  sequence number
     9   -  AES-256-GCM ciphertext of bytes 9.. of the body above (time,
            kind, clock, payload), then its 16-byte tag; nonce and
            associated data in ``crypto``

The frame's CRC covers the body as stored (the ciphertext), so torn and
damaged frames are found without the key; the chain and checkpoints cover
the plaintext body above, in both versions.

Checkpoint body (type 2), 145 bytes::

     0   1  type = 2
     1   8  last data sequence number covered
     9   8  checkpoint time, microseconds since the epoch
    17  32  chain value after that record
    49  32  key id: SHA-256 of the raw 32-byte Ed25519 public key
    81  64  Ed25519 signature of checkpoint_message(...)

Chain: ``C(-1) = SHA-256("mediation-log-genesis-v1" 0x00 n handle kind)``
and ``C(s) = SHA-256(C(s-1) || body(s))`` over each data record's body
exactly as stored. Checkpoints are not chained; they sign the chain.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import re
import struct
import zlib
from typing import NamedTuple

from mediation.pdu import ChainCheckpoint, ClockStatus, StreamId, StreamKind

MAGIC = b"MLOGSEG1"
VERSION_PLAIN = 1
VERSION_ENCRYPTED = 2
HEADER = struct.Struct(">8sHBB32sQ32s")
HEADER_V1_SIZE = HEADER.size + 4
SALT_SIZE = 32
KEY_CHECK_SIZE = 16
HEADER_V2_SIZE = HEADER.size + SALT_SIZE + KEY_CHECK_SIZE + 4
MAX_HEADER_SIZE = HEADER_V2_SIZE
FRAME = struct.Struct(">II")
FRAME_SIZE = FRAME.size
DATA_META = struct.Struct(">BQqBB")
META_SIZE = DATA_META.size
CLEAR_META_SIZE = 9  # type and sequence number: in clear in every version
TAG_SIZE = 16  # the AES-GCM tag after an encrypted record's ciphertext
CHECKPOINT = struct.Struct(">BQq32s32s64s")
TYPE_DATA = 1
TYPE_CHECKPOINT = 2
# Frames longer than this are damage, not data: the largest payload the
# configuration can allow (64 MiB) plus the record metadata and tag.
MAX_BODY = 64 * 1024 * 1024 + META_SIZE + TAG_SIZE
SEGMENT_SUFFIX = ".seg"
INDEX_SUFFIX = ".idx"

GENESIS_CONTEXT = b"mediation-log-genesis-v1\x00"
CHECKPOINT_CONTEXT = b"mediation-log-checkpoint-v1\x00"
RETENTION_CONTEXT = b"mediation-log-retention-v1\x00"

_HANDLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
STREAM_CODES = {StreamKind.CMII: 0, StreamKind.CMCC: 1}
STREAM_KINDS = {code: kind for kind, code in STREAM_CODES.items()}
STREAM_DIRS = {StreamKind.CMII: "cmii", StreamKind.CMCC: "cmcc"}
DIR_KINDS = {name: kind for kind, name in STREAM_DIRS.items()}
CLOCK_CODES = {ClockStatus.SYNCHRONISED: 0, ClockStatus.UNSYNCHRONISED: 1, ClockStatus.UNKNOWN: 2}
CLOCKS = tuple(CLOCK_CODES)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class ContentKind(enum.IntEnum):
    """What a data record's payload is; stored as one byte."""

    CMII = 0
    CMCC = 1
    NOTICE = 2


CONTENT_KINDS = tuple(ContentKind)


class LogRecord(NamedTuple):
    """One data record. A NamedTuple, not a frozen dataclass: it is built
    once per append, and here costs 0.25 µs against 0.50 µs (measured)."""

    seq: int
    received_us: int
    kind: ContentKind
    clock: ClockStatus
    payload: bytes

    @property
    def received(self) -> dt.datetime:
        """The receive (mediation) time as an aware UTC datetime."""
        return from_us(self.received_us)


class Checkpoint(NamedTuple):
    """A signed statement of the chain value after ``last_seq``."""

    stream: StreamId
    last_seq: int
    time_us: int
    chain: bytes
    key_id: bytes
    signature: bytes

    @property
    def time(self) -> dt.datetime:
        return from_us(self.time_us)

    def message(self) -> bytes:
        """The bytes the signature covers."""
        return checkpoint_message(self.stream, self.last_seq, self.time_us, self.chain)

    def to_pdu(self) -> ChainCheckpoint:
        """The checkpoint as the delivery module's ``ChainCheckpoint``."""
        return ChainCheckpoint(
            self.stream, self.last_seq, self.chain, self.time, self.signature, self.key_id
        )


class FrameError(Exception):
    """A frame could not be read at ``offset``; ``reason`` says why."""

    def __init__(self, offset: int, reason: str, torn: bool) -> None:
        self.offset = offset
        self.reason = reason
        self.torn = torn  # True: the file simply ends inside the frame
        super().__init__(f"byte {offset}: {reason}")


class SegmentHeader(NamedTuple):
    stream: StreamId
    first_seq: int
    prev_chain: bytes
    version: int = VERSION_PLAIN
    salt: bytes = b""  # version 2: the segment key's HKDF salt
    key_check: bytes = b""  # version 2: which log key wrote the segment

    @property
    def encrypted(self) -> bool:
        return self.version == VERSION_ENCRYPTED

    @property
    def size(self) -> int:
        """Bytes of the header: where the segment's first frame starts."""
        return HEADER_V2_SIZE if self.encrypted else HEADER_V1_SIZE


def check_handle(handle: str) -> str:
    """The handle, if it is safe as a directory name.

    Raises:
        ValueError: not 1..32 of ``A-Z a-z 0-9 . _ -`` starting alphanumeric.
    """
    if not isinstance(handle, str) or not _HANDLE.fullmatch(handle):
        raise ValueError(
            "warrant handle: 1 to 32 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    return handle


def to_us(when: dt.datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    if when.tzinfo is None:
        raise ValueError("time: must be timezone-aware (UTC)")
    delta = when - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=us)


def stream_label(stream: StreamId) -> str:
    return f"{stream.warrant_handle}/{STREAM_DIRS[stream.kind]}"


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SEGMENT_SUFFIX}"


def stream_bytes(stream: StreamId) -> bytes:
    handle = stream.warrant_handle.encode("ascii")
    return bytes([len(handle)]) + handle + bytes([STREAM_CODES[stream.kind]])


def genesis(stream: StreamId) -> bytes:
    """The chain value before sequence 0."""
    return hashlib.sha256(GENESIS_CONTEXT + stream_bytes(stream)).digest()


def chain_next(prev: bytes, body: bytes | memoryview) -> bytes:
    """The chain value after a data record with this body."""
    h = hashlib.sha256(prev)
    h.update(body)
    return h.digest()


def checkpoint_message(stream: StreamId, last_seq: int, time_us: int, chain: bytes) -> bytes:
    """What a checkpoint's signature covers (also rebuildable from a ChainCheckpoint)."""
    return CHECKPOINT_CONTEXT + stream_bytes(stream) + struct.pack(">Qq", last_seq, time_us) + chain


def retention_message(stream: StreamId, first: int, last: int, time_us: int, chain: bytes) -> bytes:
    """What a retention journal entry's signature covers."""
    return (
        RETENTION_CONTEXT + stream_bytes(stream) + struct.pack(">QQq", first, last, time_us) + chain
    )


def encode_header(
    stream: StreamId,
    first_seq: int,
    prev_chain: bytes,
    salt: bytes | None = None,
    key_check: bytes | None = None,
) -> bytes:
    """A segment header: version 1 without ``salt``, version 2 (encrypted) with it."""
    handle = stream.warrant_handle.encode("ascii")
    version = VERSION_PLAIN if salt is None else VERSION_ENCRYPTED
    head = HEADER.pack(
        MAGIC, version, STREAM_CODES[stream.kind], len(handle), handle, first_seq, prev_chain
    )
    if salt is not None:
        if len(salt) != SALT_SIZE or key_check is None or len(key_check) != KEY_CHECK_SIZE:
            raise ValueError("segment header: salt must be 32 bytes and key check 16")
        head += salt + key_check
    return head + struct.pack(">I", zlib.crc32(head))


def decode_header(data: bytes | memoryview) -> SegmentHeader:
    """The segment header at the start of ``data`` (either version).

    Raises:
        ValueError: short, bad magic, unknown version or kind, bad CRC.
    """
    if len(data) < HEADER_V1_SIZE:
        raise ValueError(f"segment header: {len(data)} bytes, need {HEADER_V1_SIZE}")
    magic, version, kind, n, handle, first, prev = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("segment header: not an evidence log segment (bad magic)")
    if version not in (VERSION_PLAIN, VERSION_ENCRYPTED):
        raise ValueError(f"segment header: unknown format version {version}")
    size = HEADER_V2_SIZE if version == VERSION_ENCRYPTED else HEADER_V1_SIZE
    if len(data) < size:
        raise ValueError(f"segment header: {len(data)} bytes, need {size}")
    (crc,) = struct.unpack_from(">I", data, size - 4)
    if zlib.crc32(bytes(data[: size - 4])) != crc:
        raise ValueError("segment header: checksum mismatch")
    if kind not in STREAM_KINDS or not 1 <= n <= 32:
        raise ValueError("segment header: bad stream kind or handle length")
    stream = StreamId(handle[:n].decode("ascii", "replace"), STREAM_KINDS[kind])
    if version == VERSION_PLAIN:
        return SegmentHeader(stream, first, prev)
    salt = bytes(data[HEADER.size : HEADER.size + SALT_SIZE])
    check = bytes(data[HEADER.size + SALT_SIZE : size - 4])
    return SegmentHeader(stream, first, prev, version, salt, check)


def data_body(record: LogRecord) -> bytes:
    """A data record's body: what the frame's CRC and the hash chain cover."""
    meta = DATA_META.pack(
        TYPE_DATA, record.seq, record.received_us, record.kind, CLOCK_CODES[record.clock]
    )
    return meta + record.payload


def encode_data(record: LogRecord) -> bytes:
    """The whole frame of a data record (the append path inlines this)."""
    body = data_body(record)
    return FRAME.pack(len(body), zlib.crc32(body)) + body


def encode_checkpoint(cp: Checkpoint) -> bytes:
    body = CHECKPOINT.pack(
        TYPE_CHECKPOINT, cp.last_seq, cp.time_us, cp.chain, cp.key_id, cp.signature
    )
    return FRAME.pack(len(body), zlib.crc32(body)) + body


def read_frame(data: bytes | memoryview, offset: int) -> tuple[memoryview, int]:
    """The body of the frame at ``offset`` and the offset after it.

    Raises:
        FrameError: the frame is cut short, too long, or fails its CRC.
    """
    end = len(data)
    if offset + FRAME_SIZE > end:
        raise FrameError(offset, f"frame header cut short ({end - offset} bytes)", torn=True)
    length, crc = FRAME.unpack_from(data, offset)
    if not 1 <= length <= MAX_BODY:
        raise FrameError(offset, f"impossible frame length {length}", torn=False)
    stop = offset + FRAME_SIZE + length
    if stop > end:
        raise FrameError(offset, f"frame cut short ({end - offset} of {stop - offset} bytes)", True)
    body = memoryview(data)[offset + FRAME_SIZE : stop]
    if zlib.crc32(body) != crc:
        raise FrameError(offset, "checksum mismatch", torn=False)
    return body, stop


def fill_start(data: bytes, floor: int = 0) -> int:
    """Where the run of zero bytes that ends ``data`` begins (not before ``floor``).

    ``len(data)``: it does not end in zeros. Reads back from the end in
    growing steps, so its cost is the length of the run, not of ``data``.
    """
    end, step = len(data), 4096
    while end > floor:
        start = max(floor, end - step)
        kept = len(data[start:end].rstrip(b"\x00"))
        if kept:
            return start + kept
        end, step = start, min(step * 2, 1 << 20)
    return floor


def in_fill(data: bytes, offset: int) -> bool:
    """Whether the frame that fails to read at ``offset`` is an open segment's zero fill.

    True when only zeros follow from ``offset`` (the fill itself: no frame
    starts with eight zero bytes) or from somewhere inside the frame its
    header announces (a frame being written, or cut by a crash while it was
    written, over the fill), unless that frame ends exactly where the file
    does (a whole frame whose payload ends in zeros, in a segment with no
    fill: damage). A reader of an open segment stops there, as at a frame
    cut short by the end of the file.
    """
    start = fill_start(data, offset)
    if start == offset:
        return True
    if start == len(data):
        return False
    if start < offset + FRAME_SIZE:
        return True
    length, _crc = FRAME.unpack_from(data, offset)
    end = offset + FRAME_SIZE + length
    # A frame whose end is the file's end was written whole: a closed segment
    # (its fill cut) has none, so its zeros are the payload's, and a failure is damage.
    return start < end != len(data)


def body_type(body: memoryview) -> int:
    return body[0]


def body_seq(body: memoryview) -> int:
    """The sequence number of a data body, or the last covered of a checkpoint."""
    return int.from_bytes(body[1:9], "big")


def decode_data(body: memoryview) -> LogRecord:
    """A data record from its body.

    Raises:
        ValueError: not a data body, or an unknown kind or clock code.
    """
    if len(body) < META_SIZE or body[0] != TYPE_DATA:
        raise ValueError("not a data record")
    _, seq, received, kind, clock = DATA_META.unpack_from(body)
    if kind >= len(CONTENT_KINDS) or clock >= len(CLOCKS):
        raise ValueError(f"unknown content kind {kind} or clock status {clock}")
    return LogRecord(seq, received, CONTENT_KINDS[kind], CLOCKS[clock], bytes(body[META_SIZE:]))


def decode_checkpoint(body: memoryview, stream: StreamId) -> Checkpoint:
    """A checkpoint from its body; ``stream`` comes from the segment header.

    Raises:
        ValueError: not a checkpoint body of the right size.
    """
    if len(body) != CHECKPOINT.size or body[0] != TYPE_CHECKPOINT:
        raise ValueError("not a checkpoint record")
    _, last, when, chain, key_id, signature = CHECKPOINT.unpack_from(body)
    return Checkpoint(stream, last, when, chain, key_id, signature)
