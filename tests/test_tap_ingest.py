"""Tap batches into the log in-process: a batch cut by a crash is completed, never doubled."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from delivery_agency import UdpAgency
from delivery_support import TARGET, Site, cc_pdu, udp_endpoint

from mediation import pdu as P
from mediation.log import ContentKind
from mediation.pdu import StreamId, StreamKind
from mediation.pdu import taplink as T
from mediation.server.tap_gate import TapGate, case_identity, cc_payload
from mediation.server.tap_ingest import JOURNAL_DIR
from mediation.server.tap_journal import SLOT_BYTES, JournalEntry, Span, TapJournal, newest_slot

TAP = "edge-1"
NOW = dt.datetime.now(dt.UTC)


def ipv4(src: str, dst: str, n: int) -> bytes:
    """A small IPv4/UDP packet from ``src`` to ``dst`` carrying ``n``."""
    import ipaddress
    import struct

    body = struct.pack("!HHHH", 40000, 53, 8 + 8, 0) + n.to_bytes(8, "big")
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), n & 0xFFFF, 0, 64, 17, 0,
        ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed,
    )  # fmt: skip
    return header + body


def cc(n: int, src: str = TARGET, dst: str = "198.51.100.7") -> bytes:
    info = P.CorrelationInfo(P.ContentIdentifier.correlation(b"\x01"), "CASE-0001", "IAP-1")
    header = P.CCDeliveryHeader(info, NOW, P.PacketDirection.FROM_SUBJECT, n)
    return P.encode(P.CCApdu(payload=ipv4(src, dst, n), header=header))


def batch(batch_id: int, numbers: range) -> T.PduBatch:
    return T.PduBatch(batch_id, tuple(T.TapPdu("cmCC", NOW, cc(n)) for n in numbers))


async def payloads(server: object, handle: str) -> list[bytes]:
    stream = server.intake.streams[P.StreamId(handle, P.StreamKind.CMCC)]  # type: ignore[attr-defined]
    cursor, out = stream.cursor(0), []
    while cursor.position < stream.next_seq:
        out += [r.payload for r in await cursor.read(64) if r.kind is ContentKind.CMCC]
    return out


def test_the_pdu_readers_find_the_case_and_the_packet() -> None:
    der = cc(3)
    assert case_identity("cmCC", der) == "CASE-0001"
    assert cc_payload(der) == ipv4(TARGET, "198.51.100.7", 3)
    assert case_identity("cmCC", b"\x30\x03\x81\x01\x00") is None  # no header
    assert case_identity("cmII", b"\x30\x02\x06\x00") is None


async def test_a_batch_half_stored_before_a_crash_is_completed_once(tmp_path: Path) -> None:
    site = Site(tmp_path)
    agency = site.agency("AGENCY-A", udp_endpoint(await UdpAgency().bind()))
    warrant = site.warrant(agency, "CASE-0001")
    # Before the "crash": batch 5's first two records reached the disk; then
    # the journal written before them is all that says what batch 5 was.
    async with site.server() as server:
        for n in range(2):
            appended = await server.ingest(warrant.handle, "cmCC", cc(n))
            assert appended is not None
            await appended.durable()
    journal = site.data / JOURNAL_DIR / f"{TAP}.journal"
    journal.parent.mkdir(mode=0o700)
    spans = {f"{warrant.handle}/cmCC": [0, 6, 0]}
    journal.write_text(json.dumps({"last": 5, "entries": [{"batch": 5, "spans": spans}]}))
    async with site.server() as server:
        ingest = server.taps.ingest  # type: ignore[union-attr]
        assert await ingest.last_stored(TAP) == 4  # batch 5 is not all there: resend it
        gate = server.taps.gate(TAP)  # type: ignore[union-attr]
        done = await ingest.batch(gate, batch(5, range(6)))
        for receipt in done.receipts:
            await receipt.durable()
        assert done.complete and done.ack == T.BatchAck(5, 6)
        assert [r.seq for r in done.receipts] == [5]  # 2 to 5 appended: 0 and 1 were stored
        again = await ingest.batch(gate, batch(5, range(6)))  # resent once more: nothing new
        older = await ingest.batch(gate, batch(4, range(0)))
        assert (again.complete, older.complete) == (True, True)
        new = await ingest.batch(gate, batch(6, range(6, 8)))
        for receipt in new.receipts:
            await receipt.durable()
        assert await ingest.last_stored(TAP) == 6
        assert await payloads(server, warrant.handle) == [cc(n) for n in range(8)]
        # The tap lost its spool: its ids start at 1 again, and batch 1 is new, not "stored".
        assert await ingest.hello(TAP, 1) == 0
        fresh = await ingest.batch(gate, batch(1, range(8, 9)))
        assert [r.seq for r in fresh.receipts] == [8]
        assert await ingest.hello(TAP, 2) == 1  # next above the last: nothing forgotten


async def test_the_gate_refuses_a_bystander_and_another_case(tmp_path: Path) -> None:
    site = Site(tmp_path)
    agency = site.agency("AGENCY-A", udp_endpoint(await UdpAgency().bind()))
    warrant = site.warrant(agency, "CASE-0001")
    async with site.server() as server:
        gate: TapGate = server.taps.gate(TAP)  # type: ignore[union-attr]
        assert gate.warrant_for("cmCC", cc(1)) == (warrant.handle, "")
        assert gate.warrant_for("cmCC", cc(1, "198.51.100.8", "198.51.100.7")) == (
            None,
            "not_target",
        )
        assert gate.warrant_for("cmCC", cc_pdu("CASE-0002")) == (None, "not_served")


async def test_a_taps_gate_is_kept_until_the_warrant_table_changes(tmp_path: Path) -> None:
    site = Site(tmp_path)
    agency = site.agency("AGENCY-A", udp_endpoint(await UdpAgency().bind()))
    warrant = site.warrant(agency, "CASE-0001")
    async with site.server() as server:
        taps = server.taps  # type: ignore[union-attr]
        gate = taps.gate(TAP)
        assert taps.gate(TAP) is gate  # one build per change, not per batch
        server.table.tick(dt.datetime.now(dt.UTC))  # type: ignore[attr-defined]
        assert taps.gate(TAP) is gate  # a tick that moved no window changes nothing
        server.table.tick(NOW + dt.timedelta(days=2))  # type: ignore[attr-defined]
        ended = taps.gate(TAP)  # the warrant's window is over: a new gate refuses its PDUs
        assert ended is not gate
        assert ended.warrant_for("cmCC", cc(1)) == (None, "not_served")
        assert gate.warrant_for("cmCC", cc(1)) == (warrant.handle, "")


def test_the_journal_overwrites_the_older_slot_in_place_and_a_torn_one_leaves_the_other(
    tmp_path: Path,
) -> None:
    journal = TapJournal(tmp_path)
    sid = StreamId("w-3f9a1c", StreamKind.CMCC)
    for n in (1, 2, 3):
        journal.begin(TAP, JournalEntry(n, {sid: Span(n * 10, 10)}), [])()  # the writer syncs it
    path = tmp_path / JOURNAL_DIR / f"{TAP}.journal"
    made = path.stat()
    assert made.st_size == 2 * SLOT_BYTES
    journal.begin(TAP, JournalEntry(4, {sid: Span(40, 10)}), [])()
    now = path.stat()
    assert (now.st_ino, now.st_size) == (made.st_ino, made.st_size)  # in place: no new inode
    assert newest_slot(path.read_bytes())[0] == 4  # one write a state
    # A fifth state torn by a crash: the slot it went to (state 3's) is damaged.
    data = bytearray(path.read_bytes())
    data[SLOT_BYTES + 40] ^= 0xFF  # state 5 goes to slot 5 % 2
    path.write_bytes(bytes(data))
    last, entries = TapJournal(tmp_path).state(TAP)
    assert last == 4 and sorted(entries) == [1, 2, 3, 4]
    assert entries[4].spans == {sid: Span(40, 10)} and entries[4].loaded
    # The next process's first write replaces the file; a state too large for a
    # slot too (larger slots); either way the newest whole state is read.
    again = TapJournal(tmp_path)
    many = {StreamId(f"w-{n:06x}", StreamKind.CMCC): Span(n, 1) for n in range(300)}
    again.begin(TAP, JournalEntry(5, many), [])()
    assert path.stat().st_size > 2 * SLOT_BYTES
    again.begin(TAP, JournalEntry(6, {sid: Span(60, 10)}), [5])()
    last, entries = TapJournal(tmp_path).state(TAP)
    assert last == 6 and sorted(entries) == [1, 2, 3, 4, 6]


def test_a_journal_of_lines_from_before_slots_reads_as_its_last_whole_line(
    tmp_path: Path,
) -> None:
    sid = StreamId("w-3f9a1c", StreamKind.CMCC)
    path = tmp_path / JOURNAL_DIR / f"{TAP}.journal"
    path.parent.mkdir()
    lines = [
        json.dumps({"last": n, "entries": [{"batch": n, "spans": {str(sid): [n, 1, 0]}}]})
        for n in (1, 2)
    ]
    path.write_text("\n".join(lines) + "\n" + lines[-1][:-9])  # a third cut by a crash
    journal = TapJournal(tmp_path)
    last, entries = journal.state(TAP)
    assert last == 2 and entries[2].spans == {sid: Span(2, 1)}
    journal.begin(TAP, JournalEntry(3, {sid: Span(3, 1)}), [2])()  # now slots
    assert newest_slot(path.read_bytes())[0] == 1
    assert sorted(TapJournal(tmp_path).state(TAP)[1]) == [3]


def test_one_journal_sync_covers_every_batch_begun_before_it(tmp_path: Path) -> None:
    # The log's writer runs a batch's barrier; states begun meanwhile go out
    # as one line (the latest supersedes the others) with one sync.
    journal = TapJournal(tmp_path)
    sid = StreamId("w-3f9a1c", StreamKind.CMCC)
    barriers = [journal.begin(TAP, JournalEntry(n, {sid: Span(n * 10, 10)}), []) for n in (1, 2, 3)]
    path = tmp_path / JOURNAL_DIR / f"{TAP}.journal"
    assert not path.exists()  # nothing written in the event loop
    barriers[0]()
    assert newest_slot(path.read_bytes())[0] == 1  # one write, of the latest state
    barriers[2]()
    barriers[1]()
    assert newest_slot(path.read_bytes())[0] == 1  # already durable: no more writes
    last, entries = TapJournal(tmp_path).state(TAP)
    assert last == 3 and sorted(entries) == [1, 2, 3]
