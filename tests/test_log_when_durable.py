"""StreamLog.when_durable: a callback once a record is on disk, never before, in order."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from log_support import KEY

from mediation import pdu as P
from mediation.log import ContentKind, EvidenceLog, LogConfig

HANDLE = "w-3f9a1c"


async def test_callbacks_run_once_durable_in_order_and_at_once_when_already(
    tmp_path: Path, mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    config = LogConfig(commit_records=100, commit_interval=0.002, checkpoint_interval=1000)
    async with EvidenceLog.open(tmp_path, config, key=KEY) as log:
        stream = await log.stream(HANDLE, P.StreamKind.CMII)
        called: list[tuple[str, int]] = []

        def note(name: str, seq: int) -> None:
            assert stream.durable_seq >= seq, "called before the record was durable"
            called.append((name, seq))

        def broken() -> None:
            raise RuntimeError("a waiter's bug")

        first = stream.append_nowait(b"one", ContentKind.CMII)
        second = stream.append_nowait(b"two", ContentKind.CMII)
        second.when_durable(lambda: note("second", second.seq))  # registered out of order
        first.when_durable(broken)
        first.when_durable(lambda: note("first", first.seq))
        await trio.testing.wait_all_tasks_blocked()
        assert called == [] and not first.is_durable  # the commit deadline has not come
        mock_clock.jump(0.002)
        await second.durable()
        assert called == [("first", first.seq), ("second", second.seq)]
        assert "a durability callback failed" in caplog.text  # logged; the others still ran
        first.when_durable(lambda: called.append(("again", first.seq)))
        assert called[-1] == ("again", first.seq)  # already durable: at once


async def test_listeners_hear_each_publication_and_read_nowait_never_waits(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    config = LogConfig(commit_records=100, commit_interval=0.002, checkpoint_interval=1000)
    async with EvidenceLog.open(tmp_path, config, key=KEY) as log:
        stream = await log.stream(HANDLE, P.StreamKind.CMII)
        heard: list[int] = []
        stop = stream.listen(lambda: heard.append(stream.durable_seq))
        cursor = stream.cursor(stream.next_seq)
        assert cursor.read_nowait() == []  # nothing durable yet: an empty list, no wait
        appended = stream.append_nowait(b"one", ContentKind.CMII)
        assert cursor.read_nowait() == []  # appended is not durable
        mock_clock.jump(0.002)
        await appended.durable()
        assert heard == [appended.seq]
        assert [r.payload for r in cursor.read_nowait()] == [b"one"]
        stop()
        again = stream.append_nowait(b"two", ContentKind.CMII)
        mock_clock.jump(0.002)
        await again.durable()
        assert heard == [appended.seq]  # stopped


async def test_a_stream_closed_first_calls_closed_never_the_callback(tmp_path: Path) -> None:
    config = LogConfig(checkpoint_interval=1000)
    async with EvidenceLog.open(tmp_path, config, key=KEY) as log:
        stream = await log.stream(HANDLE, P.StreamKind.CMII)
        await stream.aclose()
        calls: list[str] = []
        stream.when_durable(
            stream.next_seq, lambda: calls.append("stored"), lambda: calls.append("closed")
        )
        assert calls == ["closed"]
