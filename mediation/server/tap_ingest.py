"""A tap's batches into the log: checked per PDU, appended a batch at a time, exactly once.

Defence in depth (docs/tap-link.md): the link already proved which tap
is speaking; each PDU is then checked before it is stored: the case
identity inside it names a warrant that tap serves (and only one), the
warrant is active now, its content level has the PDU's stream, and, for
content (CmCC) of a warrant whose targets are addresses or prefixes, the
packet's addresses really are the target's. A refused PDU is counted by
reason and never stored; it never ends the link.

Exactly once across a crash: before a batch's first record is written,
:class:`TapJournal` makes durable, per tap, the batch id and, per
stream, the first sequence number and the count the batch takes there
(a batch's share of a stream is contiguous: :meth:`Ingest.append_batch`
does not yield). After a restart, a stream's sequence number when it
was opened says how much of that batch survived; when the tap resends
it, exactly that prefix of each stream's share is skipped.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time

import trio

from mediation.log import Appended, StorageUnavailable
from mediation.pdu import StreamId
from mediation.pdu import taplink as T
from mediation.pdu.fast_envelope import FIRST_TAGS
from mediation.server.ingest import Ingest, well_formed_of
from mediation.server.tap_gate import BuiltGate, TapGate
from mediation.server.tap_journal import JOURNAL_DIR, JournalEntry, Span, TapJournal

log = logging.getLogger("mediation.server")
# A well-formed stand-in per kind, to ask ingest which stream (the PDU itself
# is checked by well_formed after).
_SEQUENCE = {"cmII": b"\x30\x03\x06\x01\x00", "cmCC": b"\x30\x03\x81\x01\x00"}
# StreamIds kept for reuse (one per warrant and kind served): past this, forgotten at once.
_SHARED_IDS = 4096

# Why a PDU from a tap was refused (the keys of `mediate status`'s tap rows).
REASONS = (
    "not_served",  # no warrant of this tap has the PDU's case identity
    "inactive_warrant",
    "wrong_content_level",
    "malformed",
    "not_target",  # the packet's addresses are not the warrant's targets
    "unable_to_store",
)


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
        self._sids: dict[tuple[str, str], StreamId] = {}  # (handle, tap's kind): shared ids

    async def hello(self, tap: str, next_batch: int) -> int:
        """The ``lastStored`` to answer a tap's hello with.

        A tap whose next batch id is not above every id it ever sent has
        lost its spool (a new router, a wiped disk): its ids start again,
        and the journal of the old ones is dropped, or its new batches
        would be taken for stored ones.
        """
        last, _entries = self.journal.state(tap)
        if next_batch <= last:
            log.warning(
                "tap %s: batch ids went back (next %d, seen %d): its spool was lost; "
                "starting its journal again",
                tap,
                next_batch,
                last,
            )
            self.journal.reset(tap)
        return await self.last_stored(tap)

    async def last_stored(self, tap: str) -> int:
        """The highest batch id of ``tap`` all of whose PDUs (and all before) are durable.

        Waits for the records of batches appended by this process to be durable.
        """
        last, entries = self.journal.state(tap)
        for entry in list(entries.values()):
            for receipt in self._tails(entry):
                await receipt.durable()
        for batch in sorted(entries):
            if not self._complete(entries[batch]):
                return batch - 1
        return last

    def _stored(self, entry: JournalEntry) -> dict[StreamId, int]:
        """How many records of the entry's batch each stream holds (appended, in this process)."""
        out = {}
        for sid, span in entry.spans.items():
            if entry.loaded:
                opened = self.intake.opened_at.get(sid, span.start)
                out[sid] = span.already + max(0, min(span.count, opened - span.start))
            elif entry.stopped is not None:
                out[sid] = span.already + entry.stopped.get(sid, 0)
            else:
                out[sid] = span.already + span.count
        return out

    def _complete(self, entry: JournalEntry) -> bool:
        stored = self._stored(entry)
        return all(stored[sid] == s.already + s.count for sid, s in entry.spans.items())

    def _durable(self, entry: JournalEntry) -> bool:
        if not self._complete(entry):
            return False
        if entry.loaded:
            return True
        for sid, span in entry.spans.items():
            stream = self.intake.streams.get(sid)
            if span.count and (stream is None or stream.durable_seq < span.start + span.count - 1):
                return False
        return True

    async def batch(self, gate: TapGate, batch: T.PduBatch, durable: bool = True) -> BatchResult:
        """Check and append one batch of ``gate``'s tap.

        Args:
            durable: TLS (True): journalled for exactly once; UDP (False):
                appended as it comes (a datagram is never resent).
        """
        if self._lock.locked():  # another link's batch is being stored: wait for it
            async with self._lock:
                return await self._batch(gate, batch, durable)
        self._lock.acquire_nowait()  # free: taken without a turn of the loop (one a batch)
        try:
            return await self._batch(gate, batch, durable)
        finally:
            self._lock.release()

    async def _batch(self, gate: TapGate, batch: T.PduBatch, durable: bool) -> BatchResult:
        tap, skip = gate.name, {}
        if durable:
            last, entries = self.journal.state(tap)
            entry = entries.get(batch.batch_id)
            if entry is None and batch.batch_id <= last:  # stored, durable, forgotten
                return BatchResult(T.BatchAck(batch.batch_id, 0), [], True)
            if entry is not None:
                if self._complete(entry):
                    return BatchResult(T.BatchAck(batch.batch_id, 0), self._tails(entry), True)
                skip = self._stored(entry)
        targets, shares, refused = self._check(gate, batch)
        await self.intake.before_batch({sid.warrant_handle for sid in targets})
        spans, kept = {}, shares
        if skip:  # a resent batch: leave out each stream's share already stored
            kept = []
            for sid, share in zip(targets, shares, strict=True):
                kept.append(share[skip.get(sid, 0) :])
        for sid, share, left in zip(targets, shares, kept, strict=True):
            already = len(share) - len(left)
            spans[sid] = Span(self.intake.streams[sid].next_seq, len(left), already)
        new, barrier = JournalEntry(batch.batch_id, spans), None
        if durable:
            _last, entries = self.journal.state(tap)
            done = [b for b, e in entries.items() if b != batch.batch_id and self._durable(e)]
            barrier = self.journal.begin(tap, new, done)
        received = time.time_ns() // 1000
        counts, last, error = self.intake.append_batch(targets, kept, received, barrier)
        self.batches += 1
        if error is not None:
            new.stopped = dict(zip(targets, counts, strict=True))
            self.refused["unable_to_store"] += sum(map(len, kept)) - sum(counts)
            log.warning("tap %s: batch %d stopped: %s", tap, batch.batch_id, type(error).__name__)
        for reason, count in refused.items():
            self.refused[reason] += count
        ack = T.BatchAck(batch.batch_id, sum(map(len, shares)), tuple(sorted(refused.items())))
        return BatchResult(ack, [r for r in last if r is not None], error is None)

    def _check(
        self, gate: TapGate, batch: T.PduBatch
    ) -> tuple[list[StreamId], list[list[bytes]], collections.Counter[str]]:
        """The streams, each one's share of the PDUs that pass (in order); refusals by reason.

        The warrant's state and content level are looked up once per
        warrant and kind in the batch; per PDU only the gate's checks and
        the DER framing.
        """
        if isinstance(gate, BuiltGate):
            return self._check_built(gate.handle, batch)
        targets: list[StreamId] = []
        shares: list[list[bytes]] = []
        firsts: list[tuple[int, ...]] = []  # each share's first tags
        where: dict[tuple[str, str], int | str] = {}  # (handle, kind) -> index, or why not
        refused: collections.Counter[str] = collections.Counter()
        for pdu in batch.pdus:
            kind, der = pdu.kind, pdu.der
            handle, reason = gate.warrant_for(kind, der)
            if handle is None:
                refused[reason] += 1
                continue
            found = where.get((handle, kind))
            if found is None:
                found = where[handle, kind] = self._target(handle, kind, targets)
                if found.__class__ is not str:
                    shares.append([])
                    firsts.append(FIRST_TAGS[kind])
            if found.__class__ is str:  # no isinstance call a PDU: an int or a str
                refused[found] += 1
                continue
            shares[found].append(der)
        limit = self.intake.evidence.config.max_payload_bytes  # the log refuses larger
        for i, share in enumerate(shares):  # the DER framing: one call a share
            good = well_formed_of(share, firsts[i], limit)
            if good is not share and len(good) < len(share):  # some refused
                refused["malformed"] += len(share) - len(good)
                shares[i] = good
        return targets, shares, refused

    def _check_built(
        self, handle: str, batch: T.PduBatch
    ) -> tuple[list[StreamId], list[list[bytes]], collections.Counter[str]]:
        """:meth:`_check` for PDUs the server built for one warrant (a :class:`BuiltGate`'s).

        Sorted by kind in one pass, each kind's stream looked up once; per
        PDU only the size and the DER framing, as :meth:`_check` does.
        """
        by_kind: dict[str, list[bytes]] = {}
        for pdu in batch.pdus:
            by_kind.setdefault(pdu.kind, []).append(pdu.der)
        targets: list[StreamId] = []
        shares: list[list[bytes]] = []
        refused: collections.Counter[str] = collections.Counter()
        limit = self.intake.evidence.config.max_payload_bytes
        for kind, ders in by_kind.items():
            found = self._target(handle, kind, targets)
            if isinstance(found, str):
                refused[found] += len(ders)
                continue
            good = well_formed_of(ders, FIRST_TAGS[kind], limit)
            if len(good) < len(ders):
                refused["malformed"] += len(ders) - len(good)
            shares.append(good)
        return targets, shares, refused

    def _target(self, handle: str, kind: str, targets: list[StreamId]) -> int | str:
        """The index in ``targets`` of the stream for this warrant and kind (added), or why not."""
        found = self.intake.check(handle, kind, _SEQUENCE[kind])
        if isinstance(found, str):
            return found
        sid = self._sids.get((handle, kind))
        if sid is None or sid.kind is not found:  # made once per warrant and kind, then shared
            if len(self._sids) >= _SHARED_IDS:
                self._sids.clear()
            sid = self._sids[handle, kind] = StreamId(handle, found)
        if sid not in self.intake.streams:
            return "inactive_warrant"
        targets.append(sid)
        return len(targets) - 1

    def _tails(self, entry: JournalEntry) -> list[Appended]:
        """Receipts for the last records this process appended of an entry's batch."""
        out = []
        if entry.loaded:
            return out
        for sid, span in entry.spans.items():
            stream = self.intake.streams.get(sid)
            count = span.count if entry.stopped is None else entry.stopped.get(sid, 0)
            if stream is not None and count:
                out.append(Appended(stream, span.start + count - 1))
        return out


__all__ = [
    "JOURNAL_DIR",
    "REASONS",
    "StorageUnavailable",
    "TapGate",
    "TapIngest",
    "TapJournal",
]
