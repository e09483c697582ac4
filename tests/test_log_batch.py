"""Appending a batch at a time (``StreamLog.append_many``): the same log as one at a time."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from log_support import KEY

from mediation import pdu as P
from mediation.log import (
    ContentKind,
    EvidenceLog,
    LogConfig,
    LogError,
    load_public_key,
    verify_stream,
)
from mediation.log.keys import public_key_path

HANDLE = "w-3f9a1c"
CMII, CMCC = P.StreamKind.CMII, P.StreamKind.CMCC
SYNC = P.ClockStatus.SYNCHRONISED
RECEIVED = 1_700_000_000_000_000
# Small segments and frequent checkpoints: a batch crosses both.
SMALL = LogConfig(
    segment_bytes=4096, checkpoint_records=7, commit_records=16, checkpoint_interval=1000
)


async def _write(data: Path, batches: list[list[bytes]], many: bool) -> tuple[bytes, list]:
    async with EvidenceLog.open(data, SMALL, key=KEY) as log:
        stream = await log.stream(HANDLE, CMCC)
        for batch in batches:
            if many:
                count, error = stream.append_many(batch, ContentKind.CMCC, SYNC, RECEIVED)
                assert (count, error) == (len(batch), None)
            else:
                for payload in batch:
                    stream.append_nowait(payload, ContentKind.CMCC, SYNC, RECEIVED)
        await stream.wait_durable(stream.next_seq - 1)
        records = await stream.cursor(0).read(10_000)
        return stream._chain, records


async def test_a_batch_makes_the_same_records_and_chain_as_single_appends(
    tmp_path: Path,
) -> None:
    batches = [[b"%d-%d" % (b, i) * (1 + i % 40) for i in range(b * 9 % 50)] for b in range(12)]
    one_chain, one = await _write(tmp_path / "one", batches, many=False)
    many_chain, many = await _write(tmp_path / "many", batches, many=True)
    assert one_chain == many_chain and one == many and len(one) == sum(map(len, batches))
    segments = sorted((tmp_path / "many" / "log" / HANDLE / "cmcc").glob("*.seg"))
    assert len(segments) > 3  # the batches crossed segment ends
    report = verify_stream(
        segments[0].parent, load_public_key(public_key_path(tmp_path / "many")), key=KEY
    )
    assert report.complete and report.records == len(many)


async def test_a_batch_is_one_fdatasync(tmp_path: Path) -> None:
    config = LogConfig(commit_records=64, commit_interval=5.0, checkpoint_interval=1000)
    async with EvidenceLog.open(tmp_path, config, key=KEY) as log:
        stream = await log.stream(HANDLE, CMCC)
        count, _ = stream.append_many([b"x" * 100] * 1000, ContentKind.CMCC, SYNC)
        await stream.wait_durable(999)
        assert count == 1000 and stream.stats.batch_sizes == (1000,)


async def test_a_committed_batch_goes_at_once_after_its_barrier(tmp_path: Path) -> None:
    # commit: no waiting for the commit interval; the barrier (the tap
    # journal's sync) runs in the writer before a byte of the batch is
    # written, and while it fails nothing is written, then all of it once.
    config = LogConfig(commit_interval=3600.0, retry_interval=0.01, checkpoint_interval=1000)
    async with EvidenceLog.open(tmp_path, config, key=KEY) as log:
        stream = await log.stream(HANDLE, CMCC)
        seen: list[int] = []
        failing = [True]

        def barrier() -> None:
            seen.append(sum(p.stat().st_size for p in stream.directory.glob("*.seg")))
            if failing[0]:
                raise OSError(5, "journal: I/O error")

        state = stream.state
        count, error = stream.append_many(
            [b"a" * 50, b"b" * 50], ContentKind.CMCC, SYNC, RECEIVED, True, barrier
        )
        assert (count, error) == (2, None)
        state = await stream.wait_state_change(state)  # unable to store: the barrier failed
        assert not state.healthy and seen[0] == 0 and stream.durable_seq == -1
        failing[0] = False
        await stream.wait_state_change(state)
        await stream.wait_durable(1)  # within the hour's commit interval: at once
        assert len(seen) >= 2 and set(seen) == {0}  # never anything written before it
        records = await stream.cursor(0).read(10)
        assert [r.payload for r in records] == [b"a" * 50, b"b" * 50]
        assert stream.stats.batch_sizes == (2,)


async def test_a_batch_stops_where_the_disk_is_behind(tmp_path: Path) -> None:
    config = LogConfig(max_pending_bytes=4000, commit_interval=5.0, checkpoint_interval=1000)
    async with EvidenceLog.open(tmp_path, config, key=None) as log:
        stream = await log.stream(HANDLE, CMCC)
        count, error = stream.append_many([b"y" * 1000] * 10, ContentKind.CMCC, SYNC)
        # Four records reach the bound (each is 1027 bytes with its frame).
        assert count == 4 and isinstance(error, trio.WouldBlock)
        assert stream.next_seq == 4
        await stream.aclose()
        assert stream.durable_seq == 3


async def test_a_batch_of_the_wrong_kind_or_too_large_a_record_is_refused(
    tmp_path: Path,
) -> None:
    async with EvidenceLog.open(tmp_path, LogConfig(max_payload_bytes=100), key=KEY) as log:
        cmii = await log.stream(HANDLE, CMII)
        with pytest.raises(LogError, match="refused"):
            cmii.append_many([b"x"], ContentKind.CMCC, SYNC)
        count, error = cmii.append_many([b"a", b"b" * 101, b"c"], ContentKind.CMII, SYNC)
        assert count == 1 and isinstance(error, LogError) and "101 bytes" in str(error)
        assert cmii.next_seq == 1
