"""Ingest and completeness notices: refusals counted, notices stored in the CmII stream."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import trio
from delivery_agency import UdpAgency
from delivery_support import Site, cc_pdu, fast_config, udp_endpoint, wait_until

from mediation import pdu as P
from mediation.clock import ClockReading
from mediation.log import ContentKind, StreamLog
from mediation.pdu import fast
from mediation.protocol import MessageBuffer
from mediation.server.config import ClockConfig, ServerConfig
from mediation.server.ingest import MAX_PDU, well_formed
from mediation.warrants.model import ContentLevel

E = P.CompletenessEvent


async def notices_in(stream: StreamLog) -> list[P.CompletenessNotice]:
    """Every notice stored in a CmII stream so far (durable ones), in order."""
    records = []
    cursor = stream.cursor(0)
    while len(records) <= stream.durable_seq:
        records += await cursor.read(1024)
    return [
        fast.decode_content("notice", r.payload) for r in records if r.kind is ContentKind.NOTICE
    ]


def cc_of_size(size: int) -> bytes:
    """An IAS-CC-APDU (payload only) of exactly ``size`` octets, at least 65546."""
    payload = size - 10  # two headers of 5 octets: tag, 0x83, three length octets
    inner = b"\x81\x83" + payload.to_bytes(3, "big") + bytes(payload)
    return b"\x30\x83" + len(inner).to_bytes(3, "big") + inner


def test_well_formed_reads_the_header_with_the_ingest_limit() -> None:
    largest = cc_of_size(MAX_PDU)
    assert len(largest) == MAX_PDU
    assert well_formed(P.StreamKind.CMCC, largest)
    assert not well_formed(P.StreamKind.CMCC, cc_of_size(MAX_PDU + 1))
    assert well_formed(P.StreamKind.CMCC, cc_pdu())
    assert not well_formed(P.StreamKind.CMCC, b"\x30\x81\x03\x81\x01\x01")  # not minimal
    assert not well_formed(P.StreamKind.CMCC, b"\x30\x00")
    assert not well_formed(P.StreamKind.CMCC, cc_pdu() + b"\x00")
    assert not well_formed(P.StreamKind.CMCC, b"")
    # What ingest admits, enveloped with the widest header fields, still
    # passes the receiver's framing: it can always be delivered.
    envelope = fast.encode_envelope_raw(
        P.StreamId("w-" + "f" * 30, P.StreamKind.CMCC),
        2**64 - 1,
        dt.datetime(2026, 11, 23, 0, 11, 8, 123457, tzinfo=dt.UTC),
        "cmCC",
        largest,
        P.ClockStatus.SYNCHRONISED,
        redelivered=True,
    )
    buffer = MessageBuffer()
    buffer.feed(envelope)
    assert buffer.messages() == [envelope]


async def test_ingest_stores_what_it_may_and_counts_what_it_refuses(tmp_path: Path) -> None:
    site = Site(tmp_path)
    udp = UdpAgency()
    agency = site.agency("AGENCY-A", udp_endpoint(await udp.bind()))
    full = site.warrant(agency, "CASE-0001")
    headers = site.warrant(agency, "CASE-0002", ContentLevel.HEADERS)
    pending = site.warrant(agency, "CASE-0003", starts_in=dt.timedelta(hours=1))
    async with site.server() as server:
        appended = await server.ingest(full.handle, "cmCC", cc_pdu())
        assert appended is not None
        await appended.durable()
        assert appended.seq == 0  # the CmCC stream starts at 0; notices are in CmII
        captured = dt.datetime.now(dt.UTC)
        assert await server.ingest(full.handle, "cmCC", cc_pdu(n=1), captured) is not None
        refused = [
            await server.ingest("w-000000", "cmCC", cc_pdu()),  # unknown
            await server.ingest(pending.handle, "cmCC", cc_pdu()),  # not active yet
            await server.ingest(headers.handle, "cmCC", cc_pdu()),  # headers only
            await server.ingest(full.handle, "cmCC", b"\x30\x03\x02\x01\x00"),  # not CC
            await server.ingest(full.handle, "cmII", cc_pdu()),  # CC in the CmII stream
            await server.ingest(full.handle, "cmCC", cc_pdu()[:-1]),  # truncated
            await server.ingest(full.handle, "cmXX", cc_pdu()),  # no such stream
            await server.ingest(full.handle, "cmCC", cc_of_size(MAX_PDU + 1)),  # oversize
        ]
        assert refused == [None] * 8
        counters = server.intake.counters
        assert (counters.accepted, counters.unknown_warrant, counters.inactive_warrant) == (2, 1, 1)
        assert (counters.wrong_content_level, counters.malformed) == (2, 4)
        status = await server.handle_request({"op": "status"})
        assert status["ingest"]["accepted"] == 2
        assert status["warrants"][full.handle]["counters"] == {"cmii": 0, "cmcc": 2}
        with pytest.raises(ValueError, match="timezone"):
            await server.ingest(full.handle, "cmCC", cc_pdu(), dt.datetime(2026, 1, 1))


async def test_notices_for_windows_taps_gaps_and_the_clock(tmp_path: Path) -> None:
    site = Site(tmp_path)
    udp = UdpAgency()
    agency = site.agency("AGENCY-A", udp_endpoint(await udp.bind()))
    first = site.warrant(agency, "CASE-0001", ContentLevel.HEADERS)
    clock = [ClockReading(P.ClockStatus.SYNCHRONISED, 1000, 1000)]
    config = ServerConfig(
        delivery=fast_config().delivery,
        retrieval=fast_config().retrieval,
        clock=ClockConfig(check_interval=0.05),
    )
    async with site.server(config, clock_reader=lambda: clock[0]) as server:
        cmii = server.intake.streams[P.StreamId(first.handle, P.StreamKind.CMII)]
        start, end = (
            dt.datetime(2026, 11, 23, 1, tzinfo=dt.UTC),
            dt.datetime(2026, 11, 23, 2, tzinfo=dt.UTC),
        )
        server.tap_lost("edge-1")
        server.tap_restored("edge-1")
        server.upstream_gap(first.handle, 17, start, end, "edge-1")
        clock[0] = ClockReading(P.ClockStatus.UNSYNCHRONISED, 16_000_000, 16_000_000)
        await wait_until(lambda: server.notices.announced_clock is P.ClockStatus.UNSYNCHRONISED)
        appended = await server.ingest(first.handle, "cmII", b"")  # refused: not a PDU
        assert appended is None

        second = site.warrant(agency, "CASE-0002", ContentLevel.HEADERS)
        await server.reload()  # what `mediate add` asks of a running server
        site.remove(first.handle)
        await server.reload()
        await wait_until(lambda: cmii.durable_seq >= 6)  # six notices and the targets report
        notices = await notices_in(cmii)
        second_cmii = server.intake.streams[P.StreamId(second.handle, P.StreamKind.CMII)]
        await wait_until(lambda: second_cmii.durable_seq >= 0)
        second_notices = await notices_in(second_cmii)

    assert [n.event for n in notices] == [
        E.WARRANT_ACTIVE,
        E.TAP_LOST,
        E.TAP_RESTORED,
        E.UPSTREAM_GAP,
        E.CLOCK_UNSYNCHRONISED,
        E.WARRANT_INACTIVE,
    ]
    assert notices[0].detail == "already active when the server started"
    assert notices[1].source == notices[2].source == "edge-1"
    gap = notices[3]
    assert (gap.lost_count, gap.period_start, gap.period_end, gap.source) == (
        17,
        start,
        end,
        "edge-1",
    )
    assert "maximum error 16000000 us" in notices[4].detail
    assert notices[5].detail == "removed"
    assert [n.event for n in second_notices] == [E.WARRANT_ACTIVE]
    assert second_notices[0].detail is None  # activated while running, not "already"


async def test_the_clock_status_of_each_record_is_the_kernels(tmp_path: Path) -> None:
    site = Site(tmp_path)
    udp = UdpAgency()
    agency = site.agency("AGENCY-A", udp_endpoint(await udp.bind()))
    warrant = site.warrant(agency)
    unsynchronised = ClockReading(P.ClockStatus.UNSYNCHRONISED, 16_000_000, 16_000_000)
    async with site.server(clock_reader=lambda: unsynchronised) as server:
        appended = await server.ingest(warrant.handle, "cmCC", cc_pdu())
        await appended.durable()
        stream = server.intake.streams[P.StreamId(warrant.handle, P.StreamKind.CMCC)]
        [record] = await stream.cursor(0).read(1)
        cmii = server.intake.streams[P.StreamId(warrant.handle, P.StreamKind.CMII)]
        await wait_until(lambda: cmii.durable_seq >= 1)
        notices = await notices_in(cmii)
    assert record.clock is P.ClockStatus.UNSYNCHRONISED
    # At start-up the agency is told at once (it assumes a synchronised clock).
    assert [n.event for n in notices] == [E.WARRANT_ACTIVE, E.CLOCK_UNSYNCHRONISED]
    await trio.lowlevel.checkpoint()
