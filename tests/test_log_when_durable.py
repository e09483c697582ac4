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
