"""Verification of a stream from its files alone: no trio, no server state.

Walks the retention journal, then every segment and frame in order,
recomputing the hash chain and checking every checkpoint's chain value
and Ed25519 signature. The first problem is reported with the first
sequence number it makes untrustworthy:

- a changed bit: the frame's CRC fails at that record; if the CRC was
  forged too, the next checkpoint's chain value differs, and the fault
  names the first record after the last good checkpoint;
- a deleted, inserted, duplicated or reordered record: its sequence number
  is not the next one;
- a deleted or inserted segment: the next segment does not start where the
  last ended, or its starting chain value does not match;
- a truncated record: the frame is cut short;
- zeros after the last frame of the last segment are its writer's fill
  (the segment is open, or a crash left it: recovery cuts it), not a
  fault; in any other segment they are (a sealed segment ends with its
  last frame);
- in an encrypted segment, a changed ciphertext with a recomputed CRC: the
  record does not decrypt (its AES-GCM tag fails) at that record.

Encrypted segments (format version 2) are read through ``crypto.BodyReader``
with the log key, and the chain is computed over the plaintext bodies, as
for version 1. Without the key, frames, CRCs, sequence numbers, segment
headers and checkpoint signatures are still checked, but not the chain
(nor the checkpoints' chain values): the report says so and why.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mediation.log import format as F
from mediation.log.crypto import BodyReader, LogKey, RecordUnreadable, WrongLogKey
from mediation.log.journal import RECOVERY, RETENTION, read_entries
from mediation.log.keys import key_id, verify_signature
from mediation.log.retention import removed_prefix
from mediation.log.segments import list_segments
from mediation.pdu import StreamId


@dataclasses.dataclass(frozen=True)
class Fault:
    """The first problem found in a stream."""

    seq: int  # the first sequence number that cannot be trusted
    reason: str
    segment: str | None = None
    offset: int | None = None

    def __str__(self) -> str:
        where = f" ({self.segment} byte {self.offset})" if self.segment else ""
        return f"sequence {self.seq}: {self.reason}{where}"


@dataclasses.dataclass(frozen=True)
class StreamReport:
    """What verification of one stream found."""

    stream: str  # handle/kind
    records: int
    first_seq: int | None
    last_seq: int | None
    first_time: dt.datetime | None
    last_time: dt.datetime | None
    checkpoints: int
    removed: int  # records removed by retention (0..removed-1), journalled and signed
    unsigned: int  # records after the last checkpoint (not yet signed)
    torn_cut: int  # torn tails cut by recovery, per recovery.jsonl
    fault: Fault | None
    chain_unchecked: str | None = None  # why the hash chain was not checked; None: it was

    @property
    def ok(self) -> bool:
        """No fault found (see ``complete`` for whether everything was checked)."""
        return self.fault is None

    @property
    def complete(self) -> bool:
        """No fault, and the hash chain was checked too."""
        return self.fault is None and self.chain_unchecked is None

    def line(self) -> str:
        """One line for ``mediate log verify``."""
        parts = [f"{self.records} records"]
        if self.first_seq is not None:
            parts[0] += f" {self.first_seq}..{self.last_seq}"
            parts.append(f"{_stamp(self.first_time)} .. {_stamp(self.last_time)}")
        parts.append(f"{self.checkpoints} checkpoints")
        if self.removed:
            parts.append(f"0..{self.removed - 1} removed by retention")
        if self.unsigned:
            parts.append(f"{self.unsigned} after the last checkpoint")
        if self.torn_cut:
            parts.append(f"{self.torn_cut} torn tail(s) cut at recovery")
        if self.fault is not None:
            parts.append(f"FAULT at {self.fault}")
        elif self.chain_unchecked:
            parts.append(f"no fault found, hash chain NOT checked: {self.chain_unchecked}")
        else:
            parts.append("ok")
        return f"{self.stream}: " + ", ".join(parts)


def _stamp(when: dt.datetime | None) -> str:
    return "-" if when is None else when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


NO_KEY = (
    "its records are encrypted and no log key was given "
    "(give --key-file FILE or set MEDIATION_KEY_FILE)"
)


class _Verifier:
    def __init__(
        self,
        directory: Path,
        stream: StreamId,
        public: Ed25519PublicKey,
        key: LogKey | None,
        anchored: bool = False,
    ) -> None:
        self.directory = directory
        self.stream = stream
        self.public = public
        self.key = key
        self.key_id = key_id(public)
        self.chain: bytes | None  # None: not known (encrypted records, no key)
        self.reader: BodyReader | None = None
        self.unchecked: str | None = None
        prefix = removed_prefix(directory, stream, public)
        self.removed = prefix.next_seq
        self.expected, self.chain = prefix.next_seq, prefix.chain
        self.signed_through = prefix.next_seq - 1  # last record a signature covers
        self.fault = Fault(prefix.next_seq, prefix.fault) if prefix.fault else None
        self.records = self.checkpoints = 0
        self.first_us: int | None = None
        self.last_us: int | None = None
        # Anchored (an export of a span): the first segment may start after 0;
        # its starting chain value must then be vouched for by the signed
        # checkpoint that comes first in it, before any record.
        self.anchor: bytes | None = None
        self.anchor_pending = False
        segments = list_segments(directory) if anchored else []
        if segments and segments[0][0] > self.expected:
            self.expected = segments[0][0]
            self.signed_through = self.expected - 1
            self.chain, self.anchor_pending = None, True

    def run(self) -> StreamReport:
        segments = [s for s in list_segments(self.directory) if s[0] >= self.removed]
        self._check_key(segments)
        for i, (first, path) in enumerate(segments):
            if self.fault or not self._segment(first, path, last=i == len(segments) - 1):
                break
        try:
            torn = len(read_entries(self.directory / RECOVERY))
        except ValueError:
            torn = 0
        count = self.records
        return StreamReport(
            F.stream_label(self.stream),
            count,
            self.expected - count if count else None,
            self.expected - 1 if count else None,
            None if self.first_us is None else F.from_us(self.first_us),
            None if self.last_us is None else F.from_us(self.last_us),
            self.checkpoints,
            self.removed,
            self.expected - 1 - self.signed_through,
            torn,
            self.fault,
            self.unchecked,
        )

    def _check_key(self, segments: list[tuple[int, Path]]) -> None:
        """Refuse a key that opens none of the stream's encrypted segments.

        One segment that does not match among others that do is a fault of
        that segment (found as it is walked); none matching is the wrong key.

        Raises:
            WrongLogKey: no encrypted segment was written with ``key``.
        """
        if self.key is None:
            return
        refused: WrongLogKey | None = None
        for _first, path in segments:
            try:
                with open(path, "rb") as f:
                    header = F.decode_header(f.read(F.MAX_HEADER_SIZE))
            except (OSError, ValueError):
                continue  # a fault the walk reports in its place
            if not header.encrypted:
                continue
            try:
                self.key.cipher(header, f"{F.stream_label(self.stream)} {path.name}")
            except WrongLogKey as exc:
                refused = refused or exc
                continue
            return
        if refused is not None:
            raise refused

    def _fail(
        self, seq: int, reason: str, segment: str | None = None, offset: int | None = None
    ) -> bool:
        self.fault = Fault(seq, reason, segment, offset)
        return False

    def _header_fault(self, first: int, data: bytes, name: str) -> tuple[int, str] | None:
        """Why a segment's header does not continue the stream, if it does not.

        Sets ``self.reader`` for the segment's records as a side effect.
        """
        try:
            header = F.decode_header(data)
        except ValueError as exc:
            return self.expected, str(exc)
        try:
            self.reader = BodyReader(header, self.key, name)
        except WrongLogKey:
            return self.expected, "written with another log key (salt or key check altered?)"
        if header.stream != self.stream:
            return self.expected, f"segment of another stream ({header.stream})"
        if header.first_seq != first:
            return self.expected, f"file name says {first}, header {header.first_seq} (renamed)"
        if first > self.expected:
            return self.expected, f"records {self.expected}..{first - 1} missing (segment removed)"
        if first < self.expected:
            return first, f"segment starts at {first}, but {self.expected} comes next (inserted)"
        if self.chain is not None and header.prev_chain != self.chain:
            return first, "starting chain value does not follow from the records before"
        if not self.reader.readable:
            self.chain, self.unchecked = None, NO_KEY
        return None

    def _segment(self, first: int, path: Path, last: bool) -> bool:
        data = path.read_bytes()
        fault = self._header_fault(first, data, path.name)
        if fault is not None:
            return self._fail(fault[0], fault[1], path.name, 0)
        header = F.decode_header(data)
        if self.anchor_pending and self.anchor is None:
            self.anchor = header.prev_chain
        offset = header.size
        while offset < len(data):
            try:
                body, stop = F.read_frame(data, offset)
            except F.FrameError as exc:
                if last and F.fill_start(data, offset) == offset:
                    return True  # the open segment's zero fill: the end of its frames
                fill = F.in_fill(data, offset)
                note = " (a torn tail: recovery cuts it)" if (exc.torn or fill) and last else ""
                if fill and not last:
                    note = " (zero fill in a sealed segment)"
                return self._fail(self.expected, exc.reason + note, path.name, offset)
            if body[0] == F.TYPE_DATA:
                ok = self._data(body, path.name, offset)
            elif body[0] == F.TYPE_CHECKPOINT:
                ok = self._checkpoint(body, path.name, offset)
            else:
                ok = self._fail(self.expected, f"unknown record type {body[0]}", path.name, offset)
            if not ok:
                return False
            offset = stop
        return True

    def _data(self, stored: memoryview, segment: str, offset: int) -> bool:
        assert self.reader is not None
        if self.anchor_pending:
            return self._fail(
                self.expected,
                f"records start at {self.expected}, but no signed checkpoint comes first "
                "to vouch for the chain value before them",
                segment,
                offset,
            )
        seq = F.body_seq(stored) if len(stored) >= F.CLEAR_META_SIZE else -1
        if seq != self.expected:
            if seq < 0:
                why = "data record too short"
            elif seq > self.expected:
                why = f"missing: the next record is {seq} (deleted or reordered)"
            else:
                why = f"found record {seq} again (duplicated, inserted or reordered)"
            return self._fail(self.expected, why, segment, offset)
        if self.reader.readable:
            try:
                body = self.reader.body(stored)
                record = F.decode_data(memoryview(body)[: F.META_SIZE])
            except (RecordUnreadable, ValueError) as exc:
                return self._fail(seq, str(exc), segment, offset)
            if self.chain is not None:
                self.chain = F.chain_next(self.chain, body)
            if self.first_us is None:
                self.first_us = record.received_us
            self.last_us = record.received_us
        self.expected += 1
        self.records += 1
        return True

    def _checkpoint(self, body: memoryview, segment: str, offset: int) -> bool:
        suspect = self.signed_through + 1
        try:
            cp = F.decode_checkpoint(body, self.stream)
        except ValueError as exc:
            return self._fail(suspect, str(exc), segment, offset)
        if cp.last_seq != self.expected - 1:
            return self._fail(
                min(suspect, cp.last_seq + 1),
                f"checkpoint for {cp.last_seq} follows record {self.expected - 1}",
                segment,
                offset,
            )
        if cp.key_id != self.key_id:
            return self._fail(
                suspect,
                f"checkpoint signed by another key ({cp.key_id.hex()[:16]})",
                segment,
                offset,
            )
        if not verify_signature(self.public, cp.signature, cp.message()):
            return self._fail(suspect, "checkpoint signature does not verify", segment, offset)
        if self.anchor_pending:
            if cp.chain != self.anchor:
                why = f"starting chain value differs from the signed checkpoint at {cp.last_seq}"
                return self._fail(suspect, why, segment, offset)
            self.chain, self.anchor_pending = cp.chain, False
        if self.chain is not None and cp.chain != self.chain:
            return self._fail(
                suspect,
                f"chain value differs at the checkpoint for {cp.last_seq}: "
                f"a record in {suspect}..{cp.last_seq} was altered",
                segment,
                offset,
            )
        self.signed_through = cp.last_seq
        self.checkpoints += 1
        return True


def verify_stream(
    directory: Path,
    public: Ed25519PublicKey,
    stream: StreamId | None = None,
    key: LogKey | None = None,
    anchored: bool = False,
) -> StreamReport:
    """Verify one stream directory (``.../log/<handle>/<cmii|cmcc>``).

    Args:
        stream: which stream the files must belong to; by default taken from
            the directory names.
        key: the log key, to decrypt encrypted records and check the chain
            over them; without it the report's ``chain_unchecked`` says why
            the chain was not checked.
        anchored: the stream may start after sequence 0 (an export of a
            span): its first segment must then begin with the signed
            checkpoint of the record before its first, which vouches for the
            segment's starting chain value.

    Raises:
        ValueError: the directory names are not a handle and a stream kind
            and ``stream`` was not given.
        WrongLogKey: ``key`` opens none of the stream's encrypted segments.
        OSError: a file cannot be read.
    """
    directory = Path(directory)
    if stream is None:
        if directory.name not in F.DIR_KINDS:
            raise ValueError(f"{directory}: not a stream directory (cmii or cmcc)")
        stream = StreamId(F.check_handle(directory.parent.name), F.DIR_KINDS[directory.name])
    return _Verifier(directory, stream, public, key, anchored).run()


def find_streams(path: Path) -> list[Path]:
    """The stream directories in a data, log, warrant or stream directory."""
    path = Path(path)
    if path.name in F.DIR_KINDS and (list_segments(path) or (path / RETENTION).exists()):
        return [path]
    if (path / "log").is_dir():
        path = path / "log"
    kinds = [path / name for name in sorted(F.DIR_KINDS) if (path / name).is_dir()]
    if kinds:
        return kinds
    found = []
    for handle in sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []:
        found.extend(handle / name for name in sorted(F.DIR_KINDS) if (handle / name).is_dir())
    return found


def verify_path(
    path: Path, public: Ed25519PublicKey, key: LogKey | None = None
) -> list[StreamReport]:
    """Verify every stream found under ``path`` (see ``find_streams``).

    Raises:
        WrongLogKey: ``key`` opens none of a stream's encrypted segments.
    """
    return [verify_stream(directory, public, key=key) for directory in find_streams(path)]
