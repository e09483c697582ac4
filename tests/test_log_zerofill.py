"""Segments zero-filled ahead of the write position (``segments.SegmentWriter``).

While a segment is open its file holds zeros after the last record, so a
sync overwrites blocks that exist instead of growing the file; the fill is
cut on roll and close, cut silently by recovery after a crash, and every
reader (cursor, verification, export's reader) stops at it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from log_support import KEY
from log_writer_child import HANDLE as CHILD_HANDLE
from log_writer_child import KEY as CHILD_KEY
from log_writer_child import payload_for
from tmpfs_support import small_tmpfs

from mediation import pdu as P
from mediation.evidence.records import stream_items
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
from mediation.log.segments import FILL_FIRST, FILL_MAX, list_segments, read_range, scan_segment

HANDLE = "w-2e70f1"
CONFIG = LogConfig(checkpoint_records=1000)
CHILD = Path(__file__).with_name("log_writer_child.py")


def stream_dir(data: Path, handle: str = HANDLE, kind: str = "cmcc") -> Path:
    return data / "log" / handle / kind


def frames_end(path: Path) -> int:
    """Where the segment's last whole frame ends (its fill, if any, after it)."""
    return scan_segment(path, 1 << 30, chain=False).good_end


def verify(data: Path, key: object = None, handle: str = HANDLE) -> object:
    public = load_public_key(public_key_path(data))
    return verify_stream(stream_dir(data, handle), public, key=key)  # type: ignore[arg-type]


async def append_durably(data: Path, payloads: list[bytes], config: LogConfig = CONFIG) -> None:
    async with EvidenceLog.open(data, config, key=None) as log:
        stream = await log.stream(HANDLE, P.StreamKind.CMCC)
        for payload in payloads:
            await stream.append_nowait(payload, ContentKind.CMCC).durable()


async def test_an_open_segment_has_zeros_ahead_and_a_closed_one_is_exactly_its_frames(
    tmp_path: Path,
) -> None:
    sizes = []
    async with EvidenceLog.open(tmp_path, CONFIG, key=None) as log:
        stream = await log.stream(HANDLE, P.StreamKind.CMCC)
        for n in range(60):
            await stream.append_nowait(bytes([n + 1]) * 1000, ContentKind.CMCC).durable()
            [(_first, path)] = list_segments(stream_dir(tmp_path))
            sizes.append(path.stat().st_size)
            end = frames_end(path)
            data = path.read_bytes()
            assert end < len(data) and not data[end:].strip(b"\x00")  # zeros after the records
            assert len(data) % 4096 == 0 and len(data) - end <= FILL_MAX
    # The file grew by fills, not at each sync: 16 KiB, then 32 more, then 64 more.
    assert sorted(set(sizes)) == [FILL_FIRST, 3 * FILL_FIRST, 7 * FILL_FIRST]
    assert sizes.count(FILL_FIRST) > 10
    assert path.stat().st_size == frames_end(path)  # closed: the fill cut
    items = list(stream_items(stream_dir(tmp_path), None))
    assert [r.payload[0] for r in items] == list(range(1, 61))
    report = verify(tmp_path)
    assert report.complete and report.records == 60  # type: ignore[attr-defined]


async def test_a_rolled_segment_is_cut_to_its_frames_before_the_next_begins(
    tmp_path: Path,
) -> None:
    config = LogConfig(segment_bytes=8192, checkpoint_records=1000)
    async with EvidenceLog.open(tmp_path, config, key=None) as log:
        stream = await log.stream(HANDLE, P.StreamKind.CMCC)
        for n in range(20):
            await stream.append_nowait(b"r%03d" % n * 250, ContentKind.CMCC).durable()
        segments = list_segments(stream_dir(tmp_path))
        assert len(segments) > 2
        for _first, path in segments[:-1]:  # sealed: exactly their frames
            assert path.stat().st_size == frames_end(path)
        active = segments[-1][1]
        assert active.stat().st_size > frames_end(active)  # open: its fill
    assert active.stat().st_size == frames_end(active)
    assert verify(tmp_path).complete  # type: ignore[attr-defined]


async def test_readers_and_verification_stop_at_the_zeros_of_an_open_segment(
    tmp_path: Path,
) -> None:
    payloads = [b"payload %d " % n * 40 for n in range(30)]
    async with EvidenceLog.open(tmp_path, CONFIG, key=None) as log:
        stream = await log.stream(HANDLE, P.StreamKind.CMCC)
        for payload in payloads:
            stream.append_nowait(payload, ContentKind.CMCC)
        await stream.append_nowait(b"last", ContentKind.CMCC).durable()
        [(_first, path)] = list_segments(stream_dir(tmp_path))
        assert path.stat().st_size > frames_end(path)  # zeros after the records
        # The cursor's disk read, up to the durable end and past it.
        got = read_range(path, stream.id, 0, 0, 30, 100, None)
        assert [r.payload for r in got.items] == [*payloads, b"last"] and got.at_end
        with pytest.raises(LogCorrupted, match="bad frame"):  # zeros where 31 should be
            read_range(path, stream.id, 0, 0, 31, 100, None)
        # Verification and the offline reader (export, confirm) of the live files.
        report = verify(tmp_path)
        assert report.ok and report.records == 31, report.line()  # type: ignore[attr-defined]
        items = list(stream_items(stream_dir(tmp_path), None))
        assert [r.payload for r in items] == [*payloads, b"last"]


def test_no_frame_is_zeros_and_a_frame_cut_by_the_fill_is_told_from_damage() -> None:
    frame = F.encode_data(F.LogRecord(7, 0, ContentKind.CMCC, P.ClockStatus.UNKNOWN, b"x" * 50))
    zeros = bytes(4096)
    with pytest.raises(F.FrameError, match="impossible frame length 0"):
        F.read_frame(zeros, 0)
    assert F.in_fill(frame + zeros, len(frame))  # only zeros from there: the fill
    assert F.in_fill(frame[:30] + zeros, 0)  # a frame written part-way over the fill
    assert F.in_fill(frame[:5] + zeros, 0)  # ... even its header part-way
    damaged = frame[:-1] + b"?"
    assert not F.in_fill(damaged + zeros, 0)  # written whole: damage, not the fill
    assert not F.in_fill(frame[:30] + zeros + b"\x01", 0)  # not zeros to the end
    assert F.fill_start(frame + zeros) == len(frame) and F.fill_start(frame) == len(frame)
    # A closed segment's last frame, whole, damaged, its payload ending in zeros:
    # no fill after it, so damage (export must not stop before it in silence).
    record = F.LogRecord(8, 0, ContentKind.CMCC, P.ClockStatus.UNKNOWN, b"y" * 9 + bytes(40))
    padded = F.encode_data(record)
    hurt = padded[:20] + b"?" + padded[21:]
    with pytest.raises(F.FrameError):
        F.read_frame(hurt, 0)
    assert not F.in_fill(hurt, 0) and F.in_fill(hurt[:30] + zeros, 0)


async def crash_image(tmp_path: Path, payloads: list[bytes]) -> tuple[Path, Path, int]:
    """A stream with ``payloads`` durable, copied while open (its files as a power
    cut would leave them): the copy's directory, its one segment, its frames' end."""
    live, image = tmp_path / "live", tmp_path / "image"
    async with EvidenceLog.open(live, CONFIG, key=None) as log:
        stream = await log.stream(HANDLE, P.StreamKind.CMCC)
        for payload in payloads:
            await stream.append_nowait(payload, ContentKind.CMCC).durable()
        shutil.copytree(live, image)
    [(_first, path)] = list_segments(stream_dir(image))
    return image, path, frames_end(path)


async def test_recovery_cuts_a_crash_images_zero_fill_silently_and_goes_on(
    tmp_path: Path,
) -> None:
    image, path, end = await crash_image(tmp_path, [b"before %d" % n for n in range(10)])
    assert path.stat().st_size == FILL_FIRST > end
    async with EvidenceLog.open(image, CONFIG, key=None) as log:
        stream = await log.stream(HANDLE, P.StreamKind.CMCC)
        assert stream.next_seq == 10 and stream.stats.torn == ()
        assert path.stat().st_size == end  # cut, and nothing quarantined or journalled
        await stream.append_nowait(b"after", ContentKind.CMCC).durable()
    assert not (stream_dir(image) / "quarantine").exists()
    assert not (stream_dir(image) / "recovery.jsonl").exists()
    report = verify(image)
    assert report.complete and report.records == 11 and report.torn_cut == 0  # type: ignore[attr-defined]


async def test_a_record_torn_over_the_fill_is_quarantined_as_a_torn_tail(
    tmp_path: Path,
) -> None:
    image, path, end = await crash_image(tmp_path, [b"kept %d" % n for n in range(5)])
    record = F.LogRecord(5, 0, ContentKind.CMCC, P.ClockStatus.UNKNOWN, b"torn" * 100)
    torn_bytes = F.encode_data(record)[:200]  # the crash came 200 bytes into the write
    with open(path, "r+b") as f:
        f.seek(end)
        f.write(torn_bytes)
    before = verify(image)
    assert not before.ok and "torn tail" in before.line()  # type: ignore[attr-defined]
    async with EvidenceLog.open(image, CONFIG, key=None) as log:
        stream = await log.stream(HANDLE, P.StreamKind.CMCC)
        [torn] = stream.stats.torn
        assert (torn.offset, torn.bytes, torn.first_seq) == (end, 200, 5)
        assert torn.reason == "checksum mismatch"
        assert path.stat().st_size == end and stream.next_seq == 5
        await stream.append_nowait(b"after", ContentKind.CMCC).durable()
    assert (stream_dir(image) / torn.quarantine).read_bytes() == torn_bytes  # not the zeros
    report = verify(image)
    assert report.complete and report.records == 6 and report.torn_cut == 1  # type: ignore[attr-defined]


async def test_zeros_in_a_sealed_segment_are_a_fault(tmp_path: Path) -> None:
    config = LogConfig(segment_bytes=4096, checkpoint_records=1000)
    await append_durably(tmp_path, [b"s%02d" % n * 200 for n in range(40)], config)
    sealed = list_segments(stream_dir(tmp_path))[0][1]
    with open(sealed, "ab") as f:
        f.write(bytes(4096))
    report = verify(tmp_path)
    assert not report.ok and "zero fill in a sealed segment" in report.line()  # type: ignore[attr-defined]


async def test_a_disk_without_room_for_the_fill_still_stores_every_record(
    tmp_path: Path,
) -> None:
    with small_tmpfs(tmp_path, "1m") as disk:
        async with EvidenceLog.open(disk, CONFIG, key=None) as log:
            stream = await log.stream(HANDLE, P.StreamKind.CMCC)
            await stream.append_nowait(b"first" * 200, ContentKind.CMCC).durable()
            [(_first, path)] = list_segments(stream_dir(disk))
            assert path.stat().st_size == FILL_FIRST
            filler = disk / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
            try:  # take every free page ...
                while os.write(fd, bytes(4096)):
                    pass
            except OSError:
                pass
            finally:
                os.close(fd)
            os.truncate(filler, filler.stat().st_size // 4096 * 4096 - 12 * 1024)  # ... but 3
            payloads = [b"%02d" % n * 500 for n in range(20)]  # 20 KiB: past the 16 KiB fill
            with trio.fail_after(20):
                for payload in payloads:
                    await stream.append_nowait(payload, ContentKind.CMCC).durable()
            assert stream.state.healthy and stream.state.refused == 0
            data = path.read_bytes()
            assert len(data) == frames_end(path)  # no room for a fill: the records alone
            assert data.endswith(payloads[-1])
        report = verify(disk)
        assert report.complete and report.records == 21  # type: ignore[attr-defined]


def _stop_with_fill(child: subprocess.Popen, directory: Path) -> Path:
    """Stop the child (SIGSTOP) at a moment its last segment has a fill; that segment."""
    for _ in range(200):
        child.send_signal(signal.SIGSTOP)
        segments = list_segments(directory)
        if segments:
            path = segments[-1][1]
            scan = scan_segment(path, 1 << 30, chain=False)
            if scan.fault is None and scan.good_end < scan.size:
                return path
        child.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    raise AssertionError("the child's segment never had a zero fill")


@pytest.mark.slow
def test_kill_9_with_a_fill_keeps_every_durable_record_and_the_chain(tmp_path: Path) -> None:
    data = tmp_path / "data"
    stored = 0
    for _round in range(3):
        child = subprocess.Popen(
            [sys.executable, str(CHILD), str(data)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None
            word, start, _torn = child.stdout.readline().split()
            assert word == "start" and int(start) == stored
            durable = stored - 1
            for _ in range(40):
                durable = int(child.stdout.readline().split()[1])
            path = _stop_with_fill(child, stream_dir(data, CHILD_HANDLE))
            end = frames_end(path)
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            child.wait(timeout=30)
        stored, torn = trio.run(_read_back, data)
        assert stored > durable, f"record {durable} was reported durable but is gone"
        assert torn == 0  # the zeros were ours: cut without a word
        assert path.stat().st_size == end  # sealed by recovery (encrypted: no more appends)
        report = verify(data, CHILD_KEY, CHILD_HANDLE)
        assert report.complete and report.records == stored, report.line()  # type: ignore[attr-defined]
        assert report.torn_cut == 0  # type: ignore[attr-defined]


async def _read_back(data: Path) -> tuple[int, int]:
    """Reopen (recovering) and check every record byte for byte; (records, torn tails cut)."""
    from log_writer_child import CONFIG as CHILD_CONFIG

    async with EvidenceLog.open(data, CHILD_CONFIG, key=CHILD_KEY) as log:
        stream = await log.stream(CHILD_HANDLE, P.StreamKind.CMCC)
        cursor, seq = stream.cursor(0), 0
        while seq < stream.next_seq:
            for record in await cursor.read(512):
                assert record.seq == seq and record.payload == payload_for(seq)
                seq += 1
        return stream.next_seq, len(stream.stats.torn)


_ = KEY  # the encrypted path is the child's (the server's format)
