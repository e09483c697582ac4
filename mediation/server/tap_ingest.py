"""A tap's batches into the log: checked per PDU, appended a batch at a time, exactly once.

Defence in depth (docs/tap-link.md): the link already proved which tap
is speaking; each PDU is then checked before it is stored: the case
identity inside it names a warrant that tap serves (and only one), the
warrant is active now, its content level has the PDU's stream, and, for
content (CmCC) of a warrant whose targets are addresses or prefixes, the
packet's addresses really are the target's. A refused PDU is counted by
reason and never stored; it never ends the link.

Exactly once across a crash: before a batch's first record is appended,
:class:`TapJournal` writes and fsyncs, per tap, the batch id and, per
stream, the first sequence number and the count the batch takes there
(a batch's share of a stream is contiguous: :meth:`Ingest.append_batch`
does not yield). After a restart, a stream's sequence number when it
was opened says how much of that batch survived; when the tap resends
it, exactly that prefix of each stream's share is skipped.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import time
from pathlib import Path

import trio

from mediation.durable import write_atomic
from mediation.log import Appended, StorageUnavailable
from mediation.pdu import StreamId, StreamKind
from mediation.pdu import taplink as T
from mediation.pdu.errors import PDUError
from mediation.pdu.tlv import read_header
from mediation.server.ingest import Ingest
from mediation.tap.packet import LINKTYPE_RAW, parse_frame
from mediation.tap.targets import TargetMatcher
from mediation.warrants.model import TargetKind, Warrant

log = logging.getLogger("mediation.server")
JOURNAL_DIR = "taps"

# Why a PDU from a tap was refused (the keys of `mediate status`'s tap rows).
REASONS = (
    "not_served",  # no warrant of this tap has the PDU's case identity
    "inactive_warrant",
    "wrong_content_level",
    "malformed",
    "not_target",  # the packet's addresses are not the warrant's targets
    "unable_to_store",
)


def case_identity(kind: str, der: bytes) -> str | None:
    """The case identity inside a CmII or CmCC PDU, or None if it has none or is malformed."""
    try:
        if kind == "cmII":  # SEQUENCE { OID, [n] { [0] caseId, ... } }
            _t, pos, size = read_header(der, 0)
            _t, oid, oid_size = read_header(der, pos, pos + size)
            tag, body, body_size = read_header(der, oid + oid_size, pos + size)
            tag, value, value_size = read_header(der, body, body + body_size)
            return der[value : value + value_size].decode("ascii") if tag == 0x80 else None
        # SEQUENCE { [0] header { [0] correlationInfo { [0] caseId OPTIONAL ...
        _t, pos, size = read_header(der, 0)
        tag, header, header_size = read_header(der, pos, pos + size)
        if tag != 0xA0:
            return None
        tag, info, info_size = read_header(der, header, header + header_size)
        if tag != 0xA0:
            return None
        tag, value, value_size = read_header(der, info, info + info_size)
        return der[value : value + value_size].decode("ascii") if tag == 0x80 else None
    except (PDUError, UnicodeDecodeError):
        return None


def cc_payload(der: bytes) -> bytes | None:
    """The packet inside an ``IAS-CC-APDU`` (its ``[1] payload``), or None."""
    try:
        _t, pos, size = read_header(der, 0)
        end = pos + size
        while pos < end:
            tag, start, length = read_header(der, pos, end)
            if tag == 0x81:
                return der[start : start + length]
            pos = start + length
    except PDUError:
        return None
    return None


class TapGate:
    """The warrants one tap may feed, and the per-PDU checks against them.

    Args:
        name: the tap.
        warrants: the active warrants it serves (``WarrantTable.warrants_for_tap``).
    """

    def __init__(self, name: str, warrants: list[Warrant]) -> None:
        self.name = name
        by_case: dict[str, list[Warrant]] = collections.defaultdict(list)
        for warrant in warrants:
            if warrant.details is not None:
                by_case[warrant.details.case_id].append(warrant)
        self._by_case = dict(by_case)
        self._matchers: dict[str, TargetMatcher | None] = {}
        for warrant in warrants:
            details = warrant.details
            if details is None:
                continue
            kinds = {t.kind for t in details.targets}
            # Content carries the IP packet only: addresses can be checked,
            # a MAC or an interface cannot (docs/tap-link.md).
            checkable = kinds and kinds <= {TargetKind.ADDRESS, TargetKind.PREFIX}
            self._matchers[warrant.handle] = TargetMatcher(details.targets) if checkable else None

    def warrant_for(self, kind: str, der: bytes) -> tuple[str | None, str]:
        """``(handle, "")`` for the warrant a PDU belongs to, or ``(None, reason)``."""
        case = case_identity(kind, der)
        if case is None:
            return None, "malformed"
        found = self._by_case.get(case)
        if not found or len(found) != 1:
            return None, "not_served"
        handle = found[0].handle
        if kind == "cmCC":
            matcher = self._matchers.get(handle)
            if matcher is not None:
                payload = cc_payload(der)
                if payload is None:
                    return None, "malformed"
                if matcher.match(parse_frame(payload, LINKTYPE_RAW)) is None:
                    return None, "not_target"
        return handle, ""


@dataclasses.dataclass
class JournalEntry:
    """The last batch a tap began to append: per stream, first sequence number and count."""

    batch: int
    streams: dict[StreamId, tuple[int, int]]
    loaded: bool = False  # read from disk at start: a crash may have cut it
    stored: dict[StreamId, int] | None = None  # storing stopped part-way in this process


class TapJournal:
    """Per tap, the batch being appended (written and fsynced before its records)."""

    def __init__(self, data_dir: Path) -> None:
        self.directory = data_dir / JOURNAL_DIR
        self._entries: dict[str, JournalEntry | None] = {}

    def _path(self, tap: str) -> Path:
        return self.directory / f"{tap}.journal"

    def entry(self, tap: str) -> JournalEntry | None:
        if tap not in self._entries:
            self._entries[tap] = self._load(tap)
        return self._entries[tap]

    def _load(self, tap: str) -> JournalEntry | None:
        try:
            data = json.loads(self._path(tap).read_text())
        except FileNotFoundError:
            return None
        streams = {}
        for key, (start, count) in data["streams"].items():
            handle, kind = key.rsplit("/", 1)
            streams[StreamId(handle, StreamKind(kind))] = (int(start), int(count))
        return JournalEntry(int(data["batch"]), streams, loaded=True)

    def begin(self, tap: str, entry: JournalEntry) -> None:
        """Write ``entry`` durably (blocking: the caller must not yield before appending)."""
        self.directory.mkdir(mode=0o700, exist_ok=True)
        data = {
            "batch": entry.batch,
            "streams": {str(sid): list(span) for sid, span in entry.streams.items()},
        }
        write_atomic(self._path(tap), json.dumps(data).encode())
        self._entries[tap] = entry


@dataclasses.dataclass
class BatchResult:
    """What became of one batch: the ack to send once ``receipts`` are durable."""

    ack: T.BatchAck
    receipts: list[Appended]
    complete: bool  # False: storing stopped part-way; no ack, the link is closed


class TapIngest:
    """Checks and appends tap batches; one instance per server."""

    def __init__(self, intake: Ingest, journal: TapJournal) -> None:
        self.intake = intake
        self.journal = journal
        self.refused: collections.Counter[str] = collections.Counter()
        self.batches = 0
        self._lock = trio.Lock()  # one batch at a time: each stream's share stays contiguous

    def last_stored(self, tap: str) -> int:
        """The highest batch id of ``tap`` all of whose PDUs are in the log (0: none)."""
        entry = self.journal.entry(tap)
        if entry is None:
            return 0
        done = self._stored(entry)
        complete = all(done[sid] == count for sid, (_s, count) in entry.streams.items())
        return entry.batch if complete else entry.batch - 1

    def _stored(self, entry: JournalEntry) -> dict[StreamId, int]:
        """How many records of the entry's batch each stream holds."""
        out = {}
        for sid, (start, count) in entry.streams.items():
            stream = self.intake.streams.get(sid)
            if stream is None:
                out[sid] = 0
                continue
            if entry.loaded:
                out[sid] = max(0, min(count, self.intake.opened_at.get(sid, start) - start))
            else:
                out[sid] = count if entry.stored is None else entry.stored.get(sid, 0)
        return out

    async def batch(self, gate: TapGate, batch: T.PduBatch, durable: bool = True) -> BatchResult:
        """Check and append one batch of ``gate``'s tap.

        Args:
            durable: TLS (True): journalled for exactly once; UDP (False):
                appended as it comes (a datagram is never resent).
        """
        async with self._lock:
            return await self._batch(gate, batch, durable)

    async def _batch(self, gate: TapGate, batch: T.PduBatch, durable: bool) -> BatchResult:
        tap = gate.name
        entry = self.journal.entry(tap) if durable else None
        if entry is not None and batch.batch_id < entry.batch:
            return BatchResult(T.BatchAck(batch.batch_id, 0), self._tails(entry), True)
        skip = self._stored(entry) if entry is not None and batch.batch_id == entry.batch else {}
        items, refused = self._check(gate, batch)
        await self.intake.before_batch({handle for handle, _k, _d in items})
        plan: dict[StreamId, list[int]] = {}
        for index, (handle, kind, _der) in enumerate(items):
            plan.setdefault(StreamId(handle, kind), []).append(index)
        keep = sorted(i for sid, idx in plan.items() for i in idx[skip.get(sid, 0) :])
        todo = [items[i] for i in keep]
        spans = {}
        for sid, idx in plan.items():
            spans[sid] = (self.intake.streams[sid].next_seq - skip.get(sid, 0), len(idx))
        new = JournalEntry(batch.batch_id, spans)
        if durable:
            self.journal.begin(tap, new)
        receipts, error = self.intake.append_batch(todo, time.time_ns() // 1000)
        self.batches += 1
        if error is not None:
            new.stored = {sid: skip.get(sid, 0) for sid in spans}
            for handle, kind, _der in todo[: len(receipts)]:
                new.stored[StreamId(handle, kind)] += 1
            self.refused["unable_to_store"] += len(todo) - len(receipts)
            log.warning("tap %s: batch %d stopped: %s", tap, batch.batch_id, type(error).__name__)
        for reason, count in refused.items():
            self.refused[reason] += count
        ack = T.BatchAck(batch.batch_id, len(items), tuple(sorted(refused.items())))
        return BatchResult(ack, receipts, error is None)

    def _check(
        self, gate: TapGate, batch: T.PduBatch
    ) -> tuple[list[tuple[str, StreamKind, bytes]], collections.Counter[str]]:
        items = []
        refused: collections.Counter[str] = collections.Counter()
        intake = self.intake
        for pdu in batch.pdus:
            handle, reason = gate.warrant_for(pdu.kind, pdu.der)
            if handle is None:
                refused[reason] += 1
                continue
            kind = intake.check(handle, pdu.kind, pdu.der)
            if isinstance(kind, str) or StreamId(handle, kind) not in intake.streams:
                refused[kind if isinstance(kind, str) else "inactive_warrant"] += 1
                continue
            items.append((handle, kind, pdu.der))
        return items, refused

    def _tails(self, entry: JournalEntry) -> list[Appended]:
        """Receipts for the last records of an entry's batch (a resent, stored batch)."""
        out = []
        for sid, (start, count) in entry.streams.items():
            stream = self.intake.streams.get(sid)
            if stream is not None and count:
                out.append(Appended(stream, start + count - 1))
        return out


__all__ = ["REASONS", "StorageUnavailable", "TapGate", "TapIngest", "TapJournal"]
