"""mediation/tap/file_replay.py: a replay at a set rate, its steps counted from the clock."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import test_tap_frames as F
import trio

from mediation.evidence.pcap import PcapWriter
from mediation.tap.file_replay import PACE_SECONDS, REPLAY_FRAMES, Pace, replay_file


class _Client:
    """Records each step: when it came, its frames and their stamps."""

    fixed = None

    def __init__(self) -> None:
        self.steps: list[tuple[float, list[bytes], set[dt.datetime]]] = []

    async def frames(self, frames, linktype, *, interface=None) -> None:  # type: ignore[no-untyped-def]
        stamps = {when for _data, when in frames}
        self.steps.append((time.monotonic(), [data for data, _when in frames], stamps))


def _capture(tmp_path: Path, count: int) -> tuple[Path, list[bytes]]:
    """A capture of ``count`` distinct frames to the target, and the frames."""
    frames = [
        F.eth(F.OTHER_MAC, F.TARGET_MAC, 0x0800, F.ipv4("192.0.2.10", "198.51.100.20", 17,
              F.udp(40000, 5004, i.to_bytes(4, "big"))))
        for i in range(count)
    ]  # fmt: skip
    path = tmp_path / "frames.pcap"
    with PcapWriter.open(path) as writer:
        for data in frames:
            writer.write(data, F.T0)
    return path, frames


def test_every_frame_goes_in_order_no_step_before_its_last_frame_is_due(tmp_path: Path) -> None:
    path, frames = _capture(tmp_path, 1500)
    client, rate = _Client(), 30_000.0
    began = time.monotonic()
    trio.run(replay_file, client, path, Pace(rate=rate))
    assert [data for _at, step, _stamps in client.steps for data in step] == frames
    handed = 0
    for at, step, stamps in client.steps:
        assert 1 <= len(step) <= REPLAY_FRAMES
        assert len(stamps) == 1  # a step's frames stamped with one time, when it goes
        handed += len(step)
        assert at - began >= (handed - 1) / rate  # its last frame was due
    assert len(client.steps) < len(frames) / 4  # frames went in steps, not one by one


def test_a_step_that_caught_up_waits_for_the_next_pace(tmp_path: Path) -> None:
    """Frames due while a step is handed over wait for the next step, one
    ``PACE_SECONDS`` after it woke: no trickle of small steps in between."""
    path, frames = _capture(tmp_path, 600)

    class _Slow(_Client):
        async def frames(self, frames, linktype, *, interface=None) -> None:  # type: ignore[no-untyped-def]
            await super().frames(frames, linktype)
            time.sleep(0.002)  # a busy tap: frames come due while this step is handled

    client = _Slow()
    trio.run(replay_file, client, path, Pace(rate=10_000.0))
    assert sum(len(step) for _at, step, _stamps in client.steps) == len(frames)
    for (at, step, _s), (after, _next, _t) in zip(client.steps, client.steps[1:], strict=False):
        if len(step) < REPLAY_FRAMES:
            assert after - at >= PACE_SECONDS * 0.95, (after - at, len(step))
