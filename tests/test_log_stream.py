"""Appending, group commit, checkpoints, cursors and named cursors of one stream."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import trio
import trio.testing
from log_support import KEY

from mediation import pdu as P
from mediation.log import (
    Checkpoint,
    ContentKind,
    EvidenceLog,
    LogClosed,
    LogConfig,
    LogError,
    LogRecord,
    RecordsUnavailable,
    load_public_key,
    retention_until,
    verify_stream,
)
from mediation.log import cursor as cursor_module
from mediation.log.keys import public_key_path

HANDLE = "w-3f9a1c"
CMII, CMCC = P.StreamKind.CMII, P.StreamKind.CMCC
SYNC = P.ClockStatus.SYNCHRONISED


def stream_path(data: Path, kind: str = "cmii") -> Path:
    return data / "log" / HANDLE / kind


async def test_a_batch_of_n_records_is_synced_without_waiting_for_t(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    config = LogConfig(commit_records=8, commit_interval=5.0, checkpoint_interval=1000)
    async with EvidenceLog.open(tmp_path, config, key=KEY) as log:
        stream = await log.stream(HANDLE, CMII)
        start = trio.current_time()
        for i in range(7):
            last = stream.append_nowait(b"%d" % i, ContentKind.CMII, SYNC)
        await trio.testing.wait_all_tasks_blocked()
        assert stream.stats.syncs == 0 and not last.is_durable
        eighth = stream.append_nowait(b"7", ContentKind.CMII, SYNC)
        await eighth.durable()
        assert trio.current_time() == start  # the mock clock never moved: no timer was needed
        assert stream.durable_seq == 7 and stream.stats.batch_sizes == (8,)


async def test_a_lone_record_is_synced_after_t(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    config = LogConfig(commit_records=100, commit_interval=0.002, checkpoint_interval=1000)
    async with EvidenceLog.open(tmp_path, config, key=KEY) as log:
        stream = await log.stream(HANDLE, CMII)
        appended = stream.append_nowait(b"lone", ContentKind.CMII)
        await trio.testing.wait_all_tasks_blocked()
        assert not appended.is_durable
        mock_clock.jump(0.002)
        await appended.durable()
        assert stream.stats.batch_sizes == (1,)


async def test_checkpoints_every_n_records_and_every_t_seconds(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    config = LogConfig(checkpoint_records=10, checkpoint_interval=1.0)
    async with EvidenceLog.open(tmp_path, config, key=KEY) as log:
        stream = await log.stream(HANDLE, CMII)
        start = trio.current_time()
        for _ in range(25):
            last = await stream.append(b"x", ContentKind.CMII)
        await last.durable()
        cursor = stream.cursor(0, checkpoints=True)
        items = []
        while len(items) < 28:  # 25 records, 3 checkpoints
            items.extend(await cursor.read(100))
        covered = [(i.last_seq, i) for i in items if isinstance(i, Checkpoint)]
        assert [seq for seq, _ in covered] == [9, 19, 24]
        # 20..24 were signed by the timer, once a second had passed (mock clock).
        assert trio.current_time() - start >= 1.0
        # Each checkpoint follows the record it covers.
        assert [getattr(i, "seq", "cp") for i in items][9:12] == [9, "cp", 10]
    report = verify_stream(
        stream_path(tmp_path), load_public_key(public_key_path(tmp_path)), key=KEY
    )
    assert report.complete and report.checkpoints == 3 and report.unsigned == 0


async def test_readers_see_only_durable_records_and_wait_for_new_ones(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    config = LogConfig(commit_records=1000, commit_interval=0.010, checkpoint_interval=1000)
    got: list[LogRecord] = []
    async with EvidenceLog.open(tmp_path, config, key=KEY) as log:
        stream = await log.stream(HANDLE, CMII)

        async def reader() -> None:
            got.extend(await stream.cursor(0).read(10))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            stream.append_nowait(b"one", ContentKind.CMII, SYNC, 1_700_000_000_000_000)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # appended but not yet on disk: never served
            mock_clock.jump(0.010)
    assert got == [LogRecord(0, 1_700_000_000_000_000, ContentKind.CMII, SYNC, b"one")]
    assert got[0].received == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC)


async def test_old_ranges_are_read_from_disk_through_the_sparse_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = LogConfig(segment_bytes=8192, ring_bytes=4096, index_interval=16)
    payloads = [bytes([i % 251]) * (50 + i % 90) for i in range(600)]
    starts: list[tuple[str, int]] = []
    real_read_range = cursor_module.read_range

    def spy(path: Path, stream: P.StreamId, offset: int, *args: object) -> object:
        starts.append((path.name, offset))
        return real_read_range(path, stream, offset, *args)

    monkeypatch.setattr(cursor_module, "read_range", spy)
    async with EvidenceLog.open(tmp_path, config, key=KEY) as log:
        stream = await log.stream(HANDLE, CMCC)
        for payload in payloads:
            last = await stream.append(payload, ContentKind.CMCC)
        await last.durable()
        assert stream._ring_base > 500  # the old records are no longer in memory
        cursor = stream.cursor(333)
        records = await cursor.read(20)
        assert [r.seq for r in records] == list(range(333, 353))
        assert [r.payload for r in records] == payloads[333:353]
        # The read started at the indexed record 320 of its segment (or at the start of a
        # segment after it: offset 0 is its first frame), not at the log's start.
        segment, offset = starts[0]
        first = int(segment[:20])
        assert first <= 333 and (offset > 0 or first >= 320)
        # A cursor walks on from disk into memory seamlessly.
        rest = []
        while len(rest) < 600 - 353:
            rest.extend(await cursor.read(64))
        assert [r.payload for r in rest] == payloads[353:]


async def test_named_cursors_resume_where_they_acknowledged(tmp_path: Path) -> None:
    async with EvidenceLog.open(tmp_path, key=KEY) as log:
        stream = await log.stream(HANDLE, CMII)
        for i in range(10):
            last = await stream.append(b"%d" % i, ContentKind.CMII)
        await last.durable()
        cursor = stream.named_cursor("lea-tls-1")
        assert [r.seq for r in await cursor.read(6)] == [0, 1, 2, 3, 4, 5]
        cursor.ack(4)  # the agency stored 0..3
        cursor.ack(2)  # a stale ack changes nothing
        with pytest.raises(LogError, match="beyond"):
            cursor.ack(11)
        with pytest.raises(LogError, match="cursor name"):
            stream.named_cursor("has space")
    saved = json.loads((stream_path(tmp_path) / "cursors.json").read_text())
    assert saved == {"version": 1, "cursors": {"lea-tls-1": 4}}
    async with EvidenceLog.open(tmp_path, key=KEY) as log:
        stream = await log.stream(HANDLE, CMII)
        resumed = stream.named_cursor("lea-tls-1")
        assert resumed.position == 4
        assert (await resumed.next()).payload == b"4"
        assert stream.named_cursor("lea-new", default_start=9).position == 9


async def test_sequence_continues_across_reopening(tmp_path: Path) -> None:
    for round_ in range(3):
        async with EvidenceLog.open(tmp_path, key=KEY) as log:
            stream = await log.stream(HANDLE, CMII)
            assert stream.next_seq == round_ * 5
            for _ in range(5):
                appended = await stream.append(b"r%d" % round_, ContentKind.CMII)
            assert appended.seq == round_ * 5 + 4
    report = verify_stream(
        stream_path(tmp_path), load_public_key(public_key_path(tmp_path)), key=KEY
    )
    assert report.complete and report.records == 15 and report.unsigned == 0


async def test_wrong_kinds_oversize_payloads_and_closed_streams_are_refused(
    tmp_path: Path,
) -> None:
    async with EvidenceLog.open(tmp_path, LogConfig(max_payload_bytes=100), key=KEY) as log:
        cmcc = await log.stream(HANDLE, CMCC)
        with pytest.raises(LogError, match="refused"):
            cmcc.append_nowait(b"x", ContentKind.NOTICE)  # notices go in the CmII stream
        with pytest.raises(LogError, match="101 bytes"):
            cmcc.append_nowait(b"x" * 101, ContentKind.CMCC)
        appended = cmcc.append_nowait(b"x", ContentKind.CMCC)
        await log.close_stream(HANDLE, CMCC)
        assert appended.is_durable  # closing stores what was queued
        with pytest.raises(LogClosed):
            cmcc.append_nowait(b"x", ContentKind.CMCC)
        with pytest.raises(LogClosed):
            await cmcc.cursor(1).read()


async def test_one_writer_per_stream(tmp_path: Path) -> None:
    async with (
        EvidenceLog.open(tmp_path, key=KEY) as first,
        EvidenceLog.open(tmp_path, key=KEY) as second,
    ):
        await first.stream(HANDLE, CMII)
        with pytest.raises(LogError, match="another process"):
            await second.stream(HANDLE, CMII)
        await second.stream(HANDLE, CMCC)  # other streams are independent


async def test_paths_hold_only_the_opaque_handle(tmp_path: Path) -> None:
    async with EvidenceLog.open(tmp_path, key=KEY) as log:
        stream = await log.stream(HANDLE, CMII)
        await (await stream.append(b"CASE-0001 target@example", ContentKind.CMII)).durable()
        with pytest.raises(ValueError, match="handle"):
            await log.stream("CASE/0001", CMII)
    names = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")]
    assert all("CASE" not in name and "target" not in name for name in names)
    assert "log/w-3f9a1c/cmii/00000000000000000000.seg" in names


def test_retention_defaults_to_five_years_after_the_warrant_ends() -> None:
    end = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
    assert retention_until(end) == dt.datetime(2031, 11, 23, 12, 0, tzinfo=dt.UTC)
    leap = dt.datetime(2024, 2, 29, tzinfo=dt.UTC)
    assert retention_until(leap) == dt.datetime(2029, 2, 28, tzinfo=dt.UTC)


async def test_removed_records_are_reported_unavailable_to_readers(tmp_path: Path) -> None:
    end = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    async with EvidenceLog.open(tmp_path, key=KEY) as log:
        stream = await log.stream(HANDLE, CMCC)
        for _ in range(3):
            await stream.append(b"old", ContentKind.CMCC)
        [removed] = await log.apply_retention(HANDLE, dt.datetime.now(dt.UTC), retention_until(end))
        assert (removed.stream, removed.records) == (f"{HANDLE}/cmcc", 3)
        stream = await log.stream(HANDLE, CMCC)
        await (await stream.append(b"new", ContentKind.CMCC)).durable()
        with pytest.raises(RecordsUnavailable) as gone:
            await stream.cursor(1).read()
        assert gone.value.first_available == 3
        [record] = await stream.cursor(3).read()
        assert (record.seq, record.payload) == (3, b"new")
