"""The writer pool and the one timer: thousands of streams on bounded threads and files."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import trio
from log_support import KEY
from tmpfs_support import small_tmpfs

from mediation import pdu as P
from mediation.log import ContentKind, EvidenceLog, LogConfig
from mediation.log import inline as inline_module

CMCC = P.StreamKind.CMCC
SYNC = P.ClockStatus.SYNCHRONISED


def _open_segments(under: Path) -> int:
    """Segment files under ``under`` this process has open now."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            count += target.startswith(str(under)) and target.endswith(".seg")
        except OSError:
            continue
    return count


def _writer_threads() -> int:
    return sum(t.name.startswith("log-writer") for t in threading.enumerate())


async def test_many_streams_share_bounded_threads_and_open_files(tmp_path: Path) -> None:
    config = LogConfig(writer_threads=2, open_segments=8, commit_records=4)
    threads_before = _writer_threads()
    async with EvidenceLog.open(tmp_path, config, key=KEY) as log:
        streams = [await log.stream(f"w-{n:04d}", CMCC) for n in range(40)]
        for round_ in range(3):
            for stream in streams:
                count, error = stream.append_many([b"r%d" % round_] * 4, ContentKind.CMCC, SYNC)
                assert (count, error) == (4, None)
            for stream in streams:
                await stream.wait_durable(stream.next_seq - 1)
            assert _writer_threads() - threads_before <= 2
            # A thread may still be between reporting a write and closing the
            # oldest file: the bound is open_segments plus one per thread.
            assert log.pool.threads <= 2 and log.pool.open_segments <= 8 + 2
            assert _open_segments(tmp_path) <= 8 + 2
        for stream in streams:  # every stream kept its own order
            records = await stream.cursor(0).read(100)
            assert [r.payload for r in records] == [b"r0"] * 4 + [b"r1"] * 4 + [b"r2"] * 4
    assert _writer_threads() == threads_before  # closing the log stops its threads


async def test_an_idle_log_does_not_wake(tmp_path: Path, autojump_clock: object) -> None:
    config = LogConfig(commit_interval=0.002, checkpoint_interval=1.0)
    async with EvidenceLog.open(tmp_path, config, key=KEY) as log:
        streams = [await log.stream(f"w-{n:04d}", CMCC) for n in range(20)]
        for stream in streams:
            await (await stream.append(b"x", ContentKind.CMCC, SYNC)).durable()
        await trio.sleep(5)  # every commit and checkpoint is submitted by now
        woken = log.timer.wakeups
        await trio.sleep(3600)
        assert log.timer.wakeups == woken  # an hour of nothing: not one wake-up
    # Closed: every write finished (the mock clock does not wait for threads).
    # Each stream's checkpoint was the timer's (closing adds none when none is due).
    assert all(s.latest_checkpoint is not None for s in streams)


async def test_a_full_disk_on_one_stream_does_not_stop_another(tmp_path: Path) -> None:
    # One writer thread: if a failing stream held it while waiting to retry,
    # the healthy stream would never be written.
    config = LogConfig(writer_threads=1, retry_interval=0.05, commit_records=8)
    data = tmp_path / "data"
    with small_tmpfs(tmp_path, "256k") as disk:
        full = data / "log" / "w-full" / "cmcc"
        full.parent.mkdir(parents=True)
        full.symlink_to(disk)
        async with EvidenceLog.open(data, config, key=KEY) as log:
            failing = await log.stream("w-full", CMCC)
            healthy = await log.stream("w-fine", CMCC)
            with trio.fail_after(30):
                while failing.state.healthy:
                    failing.append_many([os.urandom(1000)] * 8, ContentKind.CMCC, SYNC)
                    await trio.sleep(0.01)
                for _ in range(20):  # while the other keeps failing and retrying
                    count, _ = healthy.append_many([b"fine"] * 8, ContentKind.CMCC, SYNC)
                    assert count == 8
                    await healthy.wait_durable(healthy.next_seq - 1)
            assert not failing.state.healthy and healthy.state.healthy
            assert healthy.durable_seq == 159


async def test_the_rings_of_all_streams_share_one_budget(tmp_path: Path) -> None:
    config = LogConfig(ring_bytes=1 << 20, ring_budget=64 * 1024)
    async with EvidenceLog.open(tmp_path, config, key=KEY) as log:
        streams = [await log.stream(f"w-{n:04d}", CMCC) for n in range(4)]
        busy = streams[0]
        busy.append_many([os.urandom(1000) for _ in range(200)], ContentKind.CMCC, SYNC)
        await busy.wait_durable(199)
        assert busy._ring_bytes <= 16 * 1024  # a quarter of the budget, not ring_bytes
        cursor, records = busy.cursor(0), []
        while len(records) < 200:  # the older ones come from the segments
            records += await cursor.read(200)
        assert [r.seq for r in records] == list(range(200))
        await log.close_stream("w-0001", CMCC)
        await log.close_stream("w-0002", CMCC)
        busy.append_many([os.urandom(1000) for _ in range(100)], ContentKind.CMCC, SYNC)
        assert 16 * 1024 < busy._ring_bytes <= 32 * 1024  # two streams left: half each


async def test_batches_handed_over_at_once_are_reported_in_order_by_any_thread(
    tmp_path: Path,
) -> None:
    # A thread reports the streams it wrote back to back in one go; another
    # thread must not take one of those streams and report a later chunk first
    # (the stream would drop the report and never publish those records).
    config = LogConfig(writer_threads=3)
    async with EvidenceLog.open(tmp_path, config, key=KEY) as log:
        log.pool.inline_bytes = 0  # every held batch to the threads (not written in the loop)
        streams = [await log.stream(f"w-{n:04d}", CMCC) for n in range(3)]
        with trio.fail_after(60):
            for round_ in range(600):
                with log.pool.held():  # as a tap batch: two streams, one thread woken
                    for stream in (streams[round_ % 3], streams[(round_ + 1) % 3]):
                        stream.append_many([b"r%d" % round_], ContentKind.CMCC, SYNC, None, True)
                await trio.sleep(0.0005)  # let the threads' turns interleave with new work
            for stream in streams:
                await stream.wait_durable(stream.next_seq - 1)
        for stream in streams:
            records = await stream.cursor(0).read(1000)
            assert len(records) == 400 and stream.durable_seq == stream.next_seq - 1


async def test_a_small_held_batch_is_written_in_the_loop_and_a_large_one_by_a_thread(
    tmp_path: Path,
) -> None:
    # Light load: a tap batch's streams are written before held() returns, with
    # no thread woken and no report waiting for a turn of the loop; a batch over
    # inline_bytes (saturation) goes to a thread, so the loop does not wait.
    async with EvidenceLog.open(tmp_path, LogConfig(), key=KEY) as log:
        streams = [await log.stream(f"w-{n:04d}", CMCC) for n in range(2)]
        before = _writer_threads()
        with log.pool.held():
            for stream in streams:
                stream.append_many([b"small"] * 3, ContentKind.CMCC, SYNC, None, True)
        assert [s.durable_seq for s in streams] == [2, 2]  # durable on return
        assert log.pool.threads == 0 and _writer_threads() == before
        large = [os.urandom(1000) for _ in range(log.pool.inline_bytes // 1000 + 1)]
        with log.pool.held():
            streams[0].append_many(large, ContentKind.CMCC, SYNC, None, True)
        assert streams[0].durable_seq == 2  # not yet: a thread writes it
        with trio.fail_after(30):
            await streams[0].wait_durable(streams[0].next_seq - 1)
        assert log.pool.threads == 1
        records = await streams[0].cursor(0).read(1000)
        assert [r.payload for r in records] == [b"small"] * 3 + large


async def test_a_slow_write_in_the_loop_sends_held_batches_to_the_threads(
    tmp_path: Path, monkeypatch: object
) -> None:
    monkeypatch.setattr(inline_module, "INLINE_SLOW", -1.0)  # any write is "slow"
    async with EvidenceLog.open(tmp_path, LogConfig(), key=KEY) as log:
        stream = await log.stream("w-0001", CMCC)
        with log.pool.held():
            stream.append_many([b"first"], ContentKind.CMCC, SYNC, None, True)
        assert stream.durable_seq == 0  # written in the loop, found slow
        with log.pool.held():
            stream.append_many([b"second"], ContentKind.CMCC, SYNC, None, True)
        assert stream.durable_seq == 0  # so this one went to a thread
        with trio.fail_after(30):
            await stream.wait_durable(1)
        assert log.pool.threads == 1


async def test_a_loop_busy_writing_sends_held_batches_to_the_threads(
    tmp_path: Path, monkeypatch: object
) -> None:
    monkeypatch.setattr(inline_module, "INLINE_SHARE", 0.0)  # any time spent writing is too much
    async with EvidenceLog.open(tmp_path, LogConfig(), key=KEY) as log:
        stream = await log.stream("w-0001", CMCC)
        with log.pool.held():
            stream.append_many([b"first"], ContentKind.CMCC, SYNC, None, True)
        assert stream.durable_seq == 0  # written in the loop: its time counted
        with log.pool.held():
            stream.append_many([b"second"], ContentKind.CMCC, SYNC, None, True)
        assert stream.durable_seq == 0  # the loop's share is used: a thread writes it
        with trio.fail_after(30):
            await stream.wait_durable(1)
        assert log.pool.threads == 1


async def test_a_full_disk_in_a_loop_write_is_retried_by_a_thread(tmp_path: Path) -> None:
    config = LogConfig(retry_interval=0.05, segment_bytes=256 * 1024)
    with small_tmpfs(tmp_path, "1m") as disk:
        async with EvidenceLog.open(disk, config, key=KEY) as log:
            stream = await log.stream("w-0001", CMCC)
            filler = disk / "filler"
            with contextlib.suppress(OSError), open(filler, "wb") as f:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            with log.pool.held():  # small: written in the loop, which fails
                stream.append_many([b"kept"] * 4, ContentKind.CMCC, SYNC, None, True)
            with trio.fail_after(30):
                state = stream.state
                if state.healthy:
                    state = await stream.wait_state_change(state)
                assert not state.healthy and state.reason == "No space left on device"
                filler.unlink()  # the space comes back: a thread retries
                await stream.wait_durable(3)
            assert stream.state.healthy
            records = await stream.cursor(0).read(100)
            assert [r.payload for r in records] == [b"kept"] * 4


async def test_a_write_in_the_loop_never_reports_ahead_of_a_threads_queued_report(
    tmp_path: Path,
) -> None:
    # Regression: a thread wrote a stream's chunk and posted its report; before
    # the loop ran it, a small held batch of the same stream was written in the
    # loop and reported at once, out of order: the stream dropped that report
    # and never published those records (the server stopped acking its tap).
    # On the old code this test hangs (the log's close waits for those records).
    async with EvidenceLog.open(tmp_path, LogConfig(), key=KEY) as log:
        stream = await log.stream("w-0001", CMCC)
        stream.append_many([b"first"], ContentKind.CMCC, SYNC, None, True)  # to a thread
        writer, deadline = stream._thread, time.monotonic() + 30
        while writer.scheduled and time.monotonic() < deadline:  # no yield: report queued
            time.sleep(0.001)
        assert not writer.scheduled and stream.durable_seq == -1
        with log.pool.held():
            stream.append_many([b"second"], ContentKind.CMCC, SYNC, None, True)
        with trio.fail_after(30):
            await stream.wait_durable(1)
        records = await stream.cursor(0).read(10)
        assert [r.payload for r in records] == [b"first", b"second"]
