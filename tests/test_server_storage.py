"""A full disk under the server: the agency is told from memory, the log catches up after.

Runs the server's data directory on a small tmpfs mounted for the test
(needs root), grown with ``mount -o remount`` to give the space back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from delivery_agency import UdpAgency
from delivery_support import Site, cc_pdu, fast_config, udp_endpoint, wait_until
from tmpfs_support import mount, small_tmpfs

from mediation import pdu as P
from mediation.log import ContentKind, LogConfig, LogRecord, StreamLog
from mediation.pdu import fast
from mediation.server.config import ServerConfig

E = P.CompletenessEvent


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path, "2m") as point:
        yield point


def notices(envelopes: list[P.Envelope]) -> list[P.Envelope]:
    return [e for e in envelopes if isinstance(e.content, P.CompletenessNotice)]


async def stored_until_restored(cmii: StreamLog) -> list[LogRecord]:
    """The CmII stream's records, read until both streams' storageRestored are among them."""
    records: list[LogRecord] = []
    cursor = cmii.cursor(0)
    with trio.fail_after(20):
        while True:
            records += await cursor.read(256)
            restored = [
                r
                for r in records
                if r.kind is ContentKind.NOTICE
                and fast.decode_content("notice", r.payload).event is E.STORAGE_RESTORED
            ]
            if len(restored) == 2:
                return records


async def test_storage_unavailable_reaches_the_agency_and_the_log_keeps_its_number(
    small_disk: Path,
) -> None:
    site = Site(small_disk)
    udp = UdpAgency(interval=0.1)
    udp.sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4 * 1024 * 1024)
    agency = site.agency("AGENCY-A", udp_endpoint(await udp.bind()))
    warrant = site.warrant(agency)
    config = ServerConfig(
        log=LogConfig(commit_records=8, retry_interval=0.05, segment_bytes=256 * 1024),
        delivery=fast_config().delivery,
        retrieval=fast_config().retrieval,
    )
    cmii_id = P.StreamId(warrant.handle, P.StreamKind.CMII)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(udp.run)
        async with site.server(config) as server:
            cmii = server.intake.streams[cmii_id]
            refused = 0
            with trio.fail_after(30):
                while refused < 5:  # fill the disk, then be refused a few times
                    appended = await server.ingest(warrant.handle, "cmCC", cc_pdu(payload=4000))
                    if appended is None:
                        refused += 1
                        await trio.sleep(0.01)
                    elif appended.seq % 8 == 7:
                        await trio.sleep(0.002)  # a paced stream: little queued when it fails
            # The CmII stream still has room (the failed CmCC write was cut
            # back, freeing its pages); tap events during the outage fill it,
            # and then the CmII stream fails too. Paced, so that the agency's
            # socket keeps up: a datagram it drops is lost for this test.
            with trio.fail_after(30):
                while cmii.state.healthy:
                    for _ in range(10):
                        server.tap_lost("edge-1")
                    await trio.sleep(0.005)
            # The CmII stream cannot store either, so its own notice is held:
            # numbered, and at the agency already, from memory.
            await wait_until(lambda: server.intake.counters.notices_held >= 1)
            await wait_until(
                lambda: any(
                    n.content.event is E.STORAGE_UNAVAILABLE and "cmII" in n.content.detail
                    for n in notices(udp.envelopes)
                )
            )
            early = next(n for n in notices(udp.envelopes) if "cmII" in (n.content.detail or ""))
            assert server.intake.counters.unable_to_store == refused

            grown = mount("-o", "remount,size=64m", str(small_disk))
            assert grown.returncode == 0, grown.stderr
            await wait_until(lambda: all(s.state.healthy for s in server.intake.streams.values()))
            await wait_until(lambda: server.intake.held(warrant.handle) == 0)
            records = await stored_until_restored(cmii)
        nursery.cancel_scope.cancel()

    # The log stored the held notice at the number the agency already had, byte for byte.
    stored = records[early.sequence_number]
    assert stored.kind is ContentKind.NOTICE
    assert fast.decode_content("notice", stored.payload) == early.content
    events = [
        fast.decode_content("notice", r.payload) for r in records if r.kind is ContentKind.NOTICE
    ]
    restored = {n.detail.split(":")[0]: n for n in events if n.event is E.STORAGE_RESTORED}
    assert restored["cmCC"].lost_count == refused  # the PDUs the log had to refuse
    assert restored["cmII"].lost_count == 0
    assert restored["cmCC"].period_start < restored["cmCC"].period_end


async def test_targets_changed_while_the_log_cannot_store_are_recorded_when_it_can(
    small_disk: Path,
) -> None:
    """The confirmation record's targets report waits for storage, then is appended."""
    from mediation.evidence.confirmation import confirmation_records
    from mediation.log import LOG_KEY_PURPOSE, LogKey

    site = Site(small_disk)
    agency = site.agency("AGENCY-A", udp_endpoint(9))
    warrant = site.warrant(agency)
    config = ServerConfig(
        log=LogConfig(commit_records=8, retry_interval=0.05, segment_bytes=256 * 1024),
        delivery=fast_config().delivery,
        retrieval=fast_config().retrieval,
    )
    cmii_id = P.StreamId(warrant.handle, P.StreamKind.CMII)
    async with site.server(config) as server:
        cmii = server.intake.streams[cmii_id]
        with trio.fail_after(30):
            while cmii.state.healthy:  # fill the disk until the CmII stream cannot store
                await server.ingest(warrant.handle, "cmCC", cc_pdu(payload=4000))
                server.tap_lost("edge-1")
                await trio.sleep(0.002)
        # (The registry shares the full disk, so `modify` itself would fail
        # here: the report is asked for directly, as a modify would.)
        assert not await server.targets_record.record(warrant.handle, "warrant-modified")
        assert server.targets_record.refused == 1  # not stored now ...
        assert warrant.handle in server.targets_record.recorded  # (at the start, it was)
        server.targets_record.recorded.clear()
        grown = mount("-o", "remount,size=64m", str(small_disk))
        assert grown.returncode == 0, grown.stderr
        await wait_until(lambda: warrant.handle in server.targets_record.recorded)  # ... but then
        await wait_until(lambda: cmii.durable_seq == cmii.next_seq - 1)
    key = LogKey(site.key.derive(LOG_KEY_PURPOSE))
    records = confirmation_records(site.data, key, warrant.handle)
    targets = [(r["reason"], r["targets"]) for r in records if r["event"] == "targets"]
    assert targets == [("already-active", ["192.0.2.10"]), ("warrant-modified", ["192.0.2.10"])]
