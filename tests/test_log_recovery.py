"""Reopening after a crash: torn tails are cut, counted, kept aside and never served."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from log_support import KEY

from mediation import pdu as P
from mediation.log import (
    ContentKind,
    EvidenceLog,
    LogConfig,
    LogCorrupted,
    load_public_key,
    verify_stream,
)
from mediation.log import format as F
from mediation.log.keys import public_key_path
from mediation.log.segments import list_segments

HANDLE = "w-0bad5e"
CONFIG = LogConfig(segment_bytes=4096, checkpoint_records=20)


def stream_dir(data: Path) -> Path:
    return data / "log" / HANDLE / "cmii"


async def write(data: Path, count: int) -> None:
    async with EvidenceLog.open(data, CONFIG, key=KEY) as log:
        stream = await log.stream(HANDLE, P.StreamKind.CMII)
        for _ in range(count):
            await stream.append(b"record %d" % stream.next_seq, ContentKind.CMII)


async def test_a_torn_tail_is_cut_counted_kept_and_never_served(tmp_path: Path) -> None:
    await write(tmp_path, 100)
    last = list_segments(stream_dir(tmp_path))[-1][1]
    size = last.stat().st_size
    frame = F.encode_data(F.LogRecord(100, 0, ContentKind.CMII, P.ClockStatus.UNKNOWN, b"torn"))
    with open(last, "ab") as f:
        f.write(frame[:-2])  # a write cut short by the crash
    async with EvidenceLog.open(tmp_path, CONFIG, key=KEY) as log:
        stream = await log.stream(HANDLE, P.StreamKind.CMII)
        [torn] = stream.stats.torn
        assert (torn.offset, torn.bytes, torn.first_seq) == (size, len(frame) - 2, 100)
        assert "cut short" in torn.reason
        assert stream.next_seq == 100  # the torn record never existed
        appended = await stream.append(b"after", ContentKind.CMII)
        await appended.durable()
        cursor, records = stream.cursor(98), []
        while len(records) < 3:  # 98, 99 from disk, then 100 from memory
            records.extend(await cursor.read(10))
        assert [(r.seq, r.payload) for r in records] == [
            (98, b"record 98"),
            (99, b"record 99"),
            (100, b"after"),
        ]
    kept = stream_dir(tmp_path) / torn.quarantine
    assert kept.read_bytes() == frame[:-2]
    [entry] = [json.loads(line) for line in (stream_dir(tmp_path) / "recovery.jsonl").open()]
    assert entry["event"] == "torn-tail-cut" and entry["bytes"] == len(frame) - 2
    report = verify_stream(
        stream_dir(tmp_path), load_public_key(public_key_path(tmp_path)), key=KEY
    )
    assert report.complete and report.records == 101 and report.torn_cut == 1
    assert "1 torn tail(s) cut at recovery" in report.line()


async def test_a_segment_cut_during_creation_is_set_aside(tmp_path: Path) -> None:
    await write(tmp_path, 10)
    unfinished = stream_dir(tmp_path) / F.segment_name(10)
    unfinished.write_bytes(b"MLOGSEG1\x00\x01")  # killed while writing the header
    async with EvidenceLog.open(tmp_path, CONFIG, key=KEY) as log:
        stream = await log.stream(HANDLE, P.StreamKind.CMII)
        assert stream.next_seq == 10 and len(stream.stats.torn) == 1
        await (await stream.append(b"next", ContentKind.CMII)).durable()
    assert verify_stream(
        stream_dir(tmp_path), load_public_key(public_key_path(tmp_path)), key=KEY
    ).complete


async def test_damage_a_crash_cannot_explain_stops_the_stream(tmp_path: Path) -> None:
    await write(tmp_path, 100)
    last = list_segments(stream_dir(tmp_path))[-1][1]
    raw = bytearray(last.read_bytes())
    raw[20] ^= 0xFF  # inside the header of a segment full of records
    last.write_bytes(bytes(raw))
    async with EvidenceLog.open(tmp_path, CONFIG, key=KEY) as log:
        with pytest.raises(LogCorrupted, match="checksum"):
            await log.stream(HANDLE, P.StreamKind.CMII)
        await log.stream(HANDLE, P.StreamKind.CMCC)  # other streams carry on
