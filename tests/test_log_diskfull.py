"""A full disk: a clear error, an "unable to store" state, and storing resumes.

Runs on a 1 MiB tmpfs mounted for the test (needs root); it is grown with
``mount -o remount`` to give the space back.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from log_support import KEY
from tmpfs_support import mount, small_tmpfs

from mediation import pdu as P
from mediation.log import (
    Appended,
    ContentKind,
    EvidenceLog,
    LogConfig,
    StorageUnavailable,
    StreamLog,
    load_public_key,
    verify_stream,
)
from mediation.log.keys import public_key_path

HANDLE = "w-d15cf1"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path, "1m") as point:
        yield point


async def _durable_or_refused(stream: StreamLog, appended: Appended) -> bool:
    """True once ``appended`` is durable; False if storing failed first."""
    result = False
    seen = stream.state
    if not seen.healthy:
        return False
    async with trio.open_nursery() as nursery:

        async def durable() -> None:
            nonlocal result
            await appended.durable()
            result = True
            nursery.cancel_scope.cancel()

        async def failed() -> None:
            await stream.wait_state_change(seen)
            nursery.cancel_scope.cancel()

        nursery.start_soon(durable)
        nursery.start_soon(failed)
    return result


async def test_a_full_disk_is_reported_survived_and_recovered_from(small_disk: Path) -> None:
    config = LogConfig(commit_records=8, retry_interval=0.05, segment_bytes=256 * 1024)
    payload = os.urandom(1000)
    accepted: list[Appended] = []
    async with EvidenceLog.open(small_disk, config, key=KEY) as log:
        stream = await log.stream(HANDLE, P.StreamKind.CMCC)
        with trio.fail_after(30):
            while stream.state.healthy:
                accepted.append(await stream.append(payload, ContentKind.CMCC))
                if len(accepted) % 8 == 0 and not await _durable_or_refused(stream, accepted[-1]):
                    break
        state = stream.state
        assert not state.healthy and state.reason == "No space left on device"
        assert len(accepted) > 500  # most of the megabyte was used
        with pytest.raises(StorageUnavailable) as refused:
            stream.append_nowait(payload, ContentKind.CMCC)
        message = str(refused.value)
        assert message.startswith(f"{HANDLE}/cmcc: unable to store since ")
        assert message.endswith("No space left on device")
        with pytest.raises(StorageUnavailable):
            await stream.append(payload, ContentKind.CMCC)
        assert stream.state.refused == 2
        # Space comes back: the writer retries by itself and the stream is healthy again.
        grown = mount("-o", "remount,size=8m", str(small_disk))
        assert grown.returncode == 0, grown.stderr
        with trio.fail_after(30):
            restored = await stream.wait_state_change(state)
            assert restored.healthy and restored.refused == 2  # for the completeness notice
            await accepted[-1].durable()  # every accepted record was stored after all
            after = await stream.append(b"after", ContentKind.CMCC)
            await after.durable()
        assert after.seq == len(accepted)  # refused records took no sequence numbers
        records = []
        cursor = stream.cursor(0)
        while len(records) < len(accepted) + 1:
            records.extend(await cursor.read(256))
        assert [r.payload for r in records] == [payload] * len(accepted) + [b"after"]
    report = verify_stream(
        small_disk / "log" / HANDLE / "cmcc", load_public_key(public_key_path(small_disk)), key=KEY
    )
    assert report.complete and report.records == len(accepted) + 1
