"""Ingest: PDUs and completeness notices into the warrant streams of the log.

Every PDU of a warrant goes to one evidence-log stream, CmII or CmCC,
with the clock status of the moment; nothing here waits for an agency.
Bad input is counted and refused, never fatal: an unknown or inactive
warrant, a content level that does not allow the stream, a PDU that is
not one DER SEQUENCE of its kind, a log that cannot store.

Notices share the CmII stream with the PDUs. While that stream cannot
store, a notice is *held*: it gets the sequence number it will have
(``next_seq`` plus the notices held before it), is handed to delivery at
once from memory (:attr:`Ingest.on_held`), and is stored at exactly that
number before anything else is appended to the stream, when storage
returns. Every append to a CmII stream passes through here, which is what
keeps the reservation true (docs/operator.md, "Completeness notices").
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Container

import trio

from mediation.clock import ClockReading
from mediation.log import (
    Appended,
    ContentKind,
    EvidenceLog,
    LogError,
    LogRecord,
    StorageUnavailable,
    StreamLog,
)
from mediation.log.evidence_log import stream_dir
from mediation.pdu import ClockStatus, StreamId, StreamKind
from mediation.pdu.errors import PDUError
from mediation.pdu.fast_envelope import FIRST_TAGS
from mediation.pdu.tlv import read_header
from mediation.protocol.framing import MAX_MESSAGE
from mediation.server.warrant_table import WarrantTable
from mediation.warrants.model import ContentLevel, Stream, Warrant, WarrantState

log = logging.getLogger("mediation.server")

KINDS = {"cmII": StreamKind.CMII, "cmCC": StreamKind.CMCC}
_CONTENT = {StreamKind.CMII: ContentKind.CMII, StreamKind.CMCC: ContentKind.CMCC}
_COUNTED = {StreamKind.CMII: Stream.CMII, StreamKind.CMCC: Stream.CMCC}
_FIRST = {StreamKind.CMII: FIRST_TAGS["cmII"], StreamKind.CMCC: FIRST_TAGS["cmCC"]}
Held = Callable[[StreamId, LogRecord], None]

# A stored PDU travels to the agency inside a pduEnvelope, which the
# receiver's framing takes only up to MAX_MESSAGE octets. The envelope's own
# fields (a stream id with a handle of at most 32 characters, a sequence
# number, a time, flags, headers) take under 128 octets; 256 leaves room.
ENVELOPE_ROOM = 256
MAX_PDU = MAX_MESSAGE - ENVELOPE_ROOM


def streams_of(warrant: Warrant) -> tuple[StreamKind, ...]:
    """The log streams a warrant has: CmII, and CmCC when content is full."""
    if warrant.content is ContentLevel.FULL:
        return (StreamKind.CMII, StreamKind.CMCC)
    return (StreamKind.CMII,)


def well_formed(kind: StreamKind, der: bytes, limit: int = MAX_PDU) -> bool:
    """One whole DER SEQUENCE of at most ``limit`` octets starting like a PDU of ``kind``.

    Checked at ingest because a record that cannot be enveloped and
    delivered would stop its stream's delivery for good; the full decode
    is the agency's job.
    """
    return well_formed_fast(der, _FIRST[kind], limit)


def well_formed_fast(der: bytes, first: frozenset[int] | bytes, limit: int = MAX_PDU) -> bool:
    """:func:`well_formed` with the kind's first tags given: the tap batch path's form.

    The common short and one- or two-octet long lengths are read inline
    (no call per PDU); anything else goes through :func:`read_header`.
    """
    n = len(der)
    if n < 3 or der[0] != 0x30:
        return False
    octet = der[1]
    if octet < 0x80:
        start, length = 2, octet
    elif octet == 0x81 and der[2] >= 0x80:
        start, length = 3, der[2]
    elif octet == 0x82 and n > 3 and der[2]:
        start, length = 4, der[2] << 8 | der[3]
    else:
        try:
            _tag, start, length = read_header(der, 0, limit=limit)
        except PDUError:
            return False
    return start + length == n and length > 0 and start + length <= limit and der[start] in first


def well_formed_of(ders: list[bytes], first: Container[int], size: int) -> list[bytes]:
    """The PDUs of ``ders`` of at most ``size`` octets that :func:`well_formed_fast` passes.

    A tap batch's share in one call, not one a PDU: the common lengths are
    read inline as :func:`well_formed_fast` reads them; a share with any
    other form, or any PDU refused, goes through it PDU by PDU
    (tests/test_hot_calls_same.py proves the answers the same).

    Returns:
        Those PDUs, in their order (``ders`` itself when all pass).
    """
    for der in ders:
        n = len(der)
        if n > size or n < 3 or der[0] != 0x30:
            break
        octet = der[1]
        if octet < 0x80:
            start, length = 2, octet
        elif octet == 0x81 and der[2] >= 0x80:
            start, length = 3, der[2]
        elif octet == 0x82 and n > 3 and der[2]:
            start, length = 4, der[2] << 8 | der[3]
        else:
            break
        if start + length != n or not length or n > MAX_PDU or der[start] not in first:
            break
    else:
        return ders  # all in a common form and well formed: the usual share
    return [der for der in ders if len(der) <= size and well_formed_fast(der, first)]  # type: ignore[arg-type]


@dataclasses.dataclass
class IngestCounters:
    """What ingest accepted and refused, by reason (the status op reports them)."""

    accepted: int = 0
    unknown_warrant: int = 0
    inactive_warrant: int = 0
    wrong_content_level: int = 0
    malformed: int = 0
    unable_to_store: int = 0
    notices: int = 0
    notices_held: int = 0

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class ClockCache:
    """The kernel's clock status, read at most once per ``max_age`` seconds.

    ``adjtimex`` is a cheap system call, but not one to make per PDU.
    """

    def __init__(self, reader: Callable[[], ClockReading], max_age: float = 1.0) -> None:
        self._reader = reader
        self._max_age = max_age
        self.reading = reader()
        self._read_at = time.monotonic()

    @property
    def status(self) -> ClockStatus:
        now = time.monotonic()
        if now - self._read_at >= self._max_age:
            self.reading, self._read_at = self._reader(), now
        return self.reading.status

    def refresh(self) -> ClockReading:
        """Ask the kernel now."""
        self.reading, self._read_at = self._reader(), time.monotonic()
        return self.reading


class Ingest:
    """Appends PDUs and notices to the right warrant streams."""

    def __init__(self, evidence: EvidenceLog, table: WarrantTable, clock: ClockCache) -> None:
        self.evidence = evidence
        self.table = table
        self.clock = clock
        self.counters = IngestCounters()
        self.streams: dict[StreamId, StreamLog] = {}
        self.on_held: Held = lambda stream, record: None
        self._held: dict[str, collections.deque[LogRecord]] = {}
        self._held_event = trio.Event()
        # Each stream's next sequence number when this process opened it:
        # what a crash left durable (the tap link's journal compares with it).
        self.opened_at: dict[StreamId, int] = {}

    async def open_streams(self, warrant: Warrant, create: bool = True) -> list[StreamLog]:
        """Open the warrant's streams (``create`` False: only those with a directory)."""
        opened = []
        for kind in streams_of(warrant):
            sid = StreamId(warrant.handle, kind)
            if sid not in self.streams:
                if (
                    not create
                    and not stream_dir(self.evidence.data_dir, sid.warrant_handle, kind).is_dir()
                ):
                    continue
                self.streams[sid] = await self.evidence.stream(warrant.handle, kind)
                self.opened_at[sid] = self.streams[sid].next_seq
            opened.append(self.streams[sid])
        return opened

    async def ingest(
        self, handle: str, kind: str, der: bytes, captured: dt.datetime | None = None
    ) -> Appended | None:
        """Append one PDU of warrant ``handle``; None if refused (and counted).

        Args:
            handle: the warrant's opaque handle.
            kind: ``"cmII"`` or ``"cmCC"``.
            der: the PDU's DER (an ``IasProtocol`` or an ``IAS-CC-APDU``).
            captured: when the tap captured it, if known; the log records
                the server's receive time regardless (the evidence says when
                the server had it), this only has to be an aware time.

        Returns:
            The log's ``Appended`` (``await appended.durable()``), or None.
        """
        if captured is not None and captured.tzinfo is None:
            raise ValueError("captured: must be timezone-aware")
        stream_kind = self._admit(handle, kind, der)
        if stream_kind is None:
            return None
        stream = self.streams.get(StreamId(handle, stream_kind))
        if stream is None:  # active but its streams are still being opened
            self.counters.inactive_warrant += 1
            return None
        try:
            if stream_kind is StreamKind.CMII:
                await self._flush_before(handle, stream)
            appended = await stream.append(der, _CONTENT[stream_kind], self.clock.status)
        except StorageUnavailable:
            self.counters.unable_to_store += 1
            return None
        self.counters.accepted += 1
        self.table.count(handle, _COUNTED[stream_kind])
        return appended

    async def before_batch(self, handles: set[str]) -> None:
        """Store the held notices of these warrants first (they keep their numbers)."""
        for handle in handles:
            stream = self.streams.get(StreamId(handle, StreamKind.CMII))
            if stream is not None:
                await self._flush_before(handle, stream)

    def append_batch(
        self,
        targets: list[StreamId],
        shares: list[list[bytes]],
        received: int,
        barrier: Callable[[], None] | None = None,
    ) -> tuple[list[int], list[Appended | None], BaseException | None]:
        """Append a batch of checked PDUs, each stream's share in one run, without yielding.

        Nothing else can append between two of these records, so each
        stream's share of the batch is one contiguous run of sequence
        numbers (what the tap link's exactly-once journal relies on). The
        caller has checked each item (:meth:`check`) and called
        :meth:`before_batch`. Per stream, one ``append_many``: the stream,
        its kind and the clock are looked up once per batch, not per PDU.

        Args:
            targets: the streams the batch goes to (open ones).
            shares: per target, the DER of its PDUs in the batch's order.
            received: the receive time of the whole batch, microseconds.
            barrier: run by the log's writer before it writes any of these
                records (the tap journal's sync).

        The records go to the log's writer at once, not at its commit
        deadline, and one writer thread is woken for all the batch's
        streams (the batch is the group commit: docs/evidence-log.md).

        Returns:
            Per target: how many records were appended, and the receipt of
            the last one (None: none); and the error that stopped the batch
            early (``StorageUnavailable``, ``trio.WouldBlock``, ``LogClosed``),
            or None when every item was appended. Streams after the one that
            stopped are not tried.
        """
        clock = self.clock.status
        counts = [0] * len(targets)
        last: list[Appended | None] = [None] * len(targets)
        error: BaseException | None = None
        with self.evidence.pool.held():
            for index, sid in enumerate(targets):
                share = shares[index]
                if not share:
                    continue
                stream = self.streams[sid]
                try:
                    count, error = stream.append_many(
                        share, _CONTENT[sid.kind], clock, received, True, barrier
                    )
                except LogError as exc:  # cannot happen: the kind is the stream's
                    count, error = 0, exc
                counts[index] = count
                if count:
                    last[index] = Appended(stream, stream.next_seq - 1)
                    self.table.count(sid.warrant_handle, _COUNTED[sid.kind], count)
                if error is not None:
                    break
        done = sum(counts)
        self.counters.unable_to_store += sum(map(len, shares)) - done
        self.counters.accepted += done
        return counts, last, error

    async def _flush_before(self, handle: str, stream: StreamLog) -> None:
        """Held notices keep their numbers: store them before this PDU.

        While the stream cannot store, nothing is tried here (the PDU's own
        append is refused and counted by the log for the restored notice).
        """
        while self._held.get(handle) and stream.state.healthy:
            try:
                self._flush(handle)
            except trio.WouldBlock:
                await trio.sleep(0.001)  # the disk is behind: let the writer catch up

    def _admit(self, handle: str, kind: str, der: bytes) -> StreamKind | None:
        found = self.check(handle, kind, der)
        if isinstance(found, str):
            setattr(self.counters, found, getattr(self.counters, found) + 1)
            return None
        return found

    def check(self, handle: str, kind: str, der: bytes) -> StreamKind | str:
        """The stream a PDU of warrant ``handle`` goes to, or why not (a counter's name).

        Counts nothing: :meth:`ingest` counts in :attr:`counters`, the tap
        link per tap refusal reason.
        """
        warrant = self.table.warrant(handle)
        if warrant is None:
            return "unknown_warrant"
        if self.table.state(handle) is not WarrantState.ACTIVE:
            return "inactive_warrant"
        stream_kind = KINDS.get(kind)
        if stream_kind is None or stream_kind not in streams_of(warrant):
            return "wrong_content_level"
        if not well_formed(stream_kind, der):
            return "malformed"
        return stream_kind

    def append_notice(self, handle: str, der: bytes) -> int | None:
        """Store a notice's DER in the warrant's CmII stream; its sequence number.

        Held (see the module docstring) when the stream cannot store now.
        None when the warrant's CmII stream is not open (never active here).
        """
        sid = StreamId(handle, StreamKind.CMII)
        stream = self.streams.get(sid)
        if stream is None:
            return None
        self.counters.notices += 1
        received = time.time_ns() // 1000
        clock = self.clock.status
        if self._held.get(handle) and stream.state.healthy:
            with contextlib.suppress(StorageUnavailable, trio.WouldBlock):
                self._flush(handle)
        if not self._held.get(handle) and stream.state.healthy:
            try:
                return stream.append_nowait(der, ContentKind.NOTICE, clock, received).seq
            except (StorageUnavailable, trio.WouldBlock):
                pass  # storing failed just now, or the disk is behind: hold it
        queue = self._held.setdefault(handle, collections.deque())
        record = LogRecord(stream.next_seq + len(queue), received, ContentKind.NOTICE, clock, der)
        queue.append(record)
        self.counters.notices_held += 1
        self._held_event.set()
        self.on_held(sid, record)
        return record.seq

    def _flush(self, handle: str) -> None:
        """Store the warrant's held notices, in order, at their reserved numbers.

        Raises:
            StorageUnavailable, trio.WouldBlock: not now; they stay held.
        """
        queue = self._held[handle]
        stream = self.streams[StreamId(handle, StreamKind.CMII)]
        while queue:
            record = queue[0]
            appended = stream.append_nowait(
                record.payload, ContentKind.NOTICE, record.clock, record.received_us
            )
            queue.popleft()
            if appended.seq != record.seq:  # cannot happen while all appends pass here
                log.error(
                    "%s/cmii: held notice stored at %d, not %d", handle, appended.seq, record.seq
                )
        del self._held[handle]

    def held(self, handle: str) -> int:
        """How many notices of ``handle`` wait for storage."""
        return len(self._held.get(handle, ()))

    async def run_flusher(self, interval: float = 0.05) -> None:
        """Store held notices as soon as their stream can store again."""
        while True:
            if not self._held:
                await self._held_event.wait()
                self._held_event = trio.Event()
            for handle in list(self._held):
                stream = self.streams.get(StreamId(handle, StreamKind.CMII))
                if stream is not None and stream.state.healthy:
                    with contextlib.suppress(StorageUnavailable, trio.WouldBlock):
                        self._flush(handle)
            if self._held:
                await trio.sleep(interval)
