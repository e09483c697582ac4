"""Replaying a pcap file into the tap (``mediate tap run --read``), paced as asked.

The file's frames go to the tap client in bounded steps, at the recorded
pace, at a set rate (each frame stamped when it goes, as a live capture
would) or as fast as the tap takes them. :mod:`mediation.tap.runner`
chooses between this and a live capture.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import trio

from mediation.errors import UsageError

# A paced replay wakes at most this often: the frames due by then go to the tap
# together (one batching step, one clock read), as a live capture's ring read
# hands over what arrived; each is stamped when it goes, so this adds nothing
# to the latency measured from capture.
PACE_SECONDS = 0.005
REPLAY_FRAMES = 256  # frames handed to the tap at once at most (a bounded step)


@dataclasses.dataclass(frozen=True)
class Pace:
    """How a file is replayed (``--speed``).

    Attributes:
        recorded: at the pace of its recorded time stamps.
        rate: instead, this many frames a second, frame ``i`` going ``i /
            rate`` s after the first and stamped with the time it goes (as
            a live capture would), so latency from capture can be measured.
        Neither: as fast as the tap takes them.
    """

    recorded: bool = False
    rate: float | None = None

    def due(self, index: int, when_ns: int, first_ns: int) -> float:
        """Seconds after the replay began when frame ``index`` goes.

        ``when_ns``, ``first_ns``: its and the first frame's recorded times
        (pcap nanoseconds), used to the microsecond as the capture times are.
        """
        if self.rate is not None:
            return index / self.rate
        if self.recorded:
            return (when_ns // 1000 - first_ns // 1000) / 1e6
        return 0.0


async def replay_file(
    client: Any,
    source: Path,
    pace: Pace,
    interface: str | None = None,
) -> None:
    """Every frame of a pcap file, paced by ``pace``, handed to the tap in steps.

    Each step hands over every frame due by then (at most
    ``REPLAY_FRAMES``), with one clock read; between steps it sleeps until
    the next frame is due, but at least ``PACE_SECONDS``: no sleep or
    scheduler round per frame. The seed form's file goes through its ``-f``
    filter, as the kernel filter would have taken it, and counts as
    captured on its interface.
    """
    from mediation.evidence.pcap import PcapError, PcapReader
    from mediation.tap.bpf import OfflineFilter

    try:
        reader = PcapReader.open(source)
    except (OSError, PcapError) as exc:
        raise UsageError("--read", f"{source}: {exc}") from None
    wanted = None
    with reader, contextlib.ExitStack() as stack:
        expression = None
        if client.fixed is not None:  # the seed's -f, with DHCP when following
            expression = client.fixed[0].matcher.kernel_expression()
        if expression is not None:
            try:
                wanted = OfflineFilter(expression, reader.linktype)
            except (OSError, ValueError) as exc:
                raise UsageError("-f", f"cannot filter {source}: {exc}") from None
            stack.callback(wanted.close)
        frames = reader.records()  # no Packet and no datetime per frame
        if wanted is not None:
            frames = ((data, ns) for data, ns in frames if wanted.matches(data))
        await _paced(client, frames, pace, reader.linktype, interface)


async def _paced(
    client: Any, frames: Any, pace: Pace, linktype: int, interface: str | None
) -> None:
    """``frames`` (pcap ``(data, time ns)``) to ``client.frames`` in steps, when ``pace`` says."""
    if pace.rate is not None:
        await _at_rate(client, iter(frames), pace, linktype, interface)
        return
    step: list[tuple[bytes, int]] = []
    first: int | None = None
    began = time.monotonic()
    elapsed = 0.0
    for index, packet in enumerate(frames):
        if first is None:
            first = packet[1]
        due = pace.due(index, packet[1], first)
        if due > elapsed:
            if step:
                await _hand(client, step, pace, linktype, interface)
                step = []
            elapsed = time.monotonic() - began
            if due > elapsed:
                await trio.sleep(max(due - elapsed, PACE_SECONDS))
                elapsed = time.monotonic() - began
        step.append(packet)
        if len(step) >= REPLAY_FRAMES:
            await _hand(client, step, pace, linktype, interface)
            step = []
            elapsed = time.monotonic() - began
    if step:
        await _hand(client, step, pace, linktype, interface)


async def _at_rate(
    client: Any, frames: Iterator[tuple[bytes, int]], pace: Pace, linktype: int,
    interface: str | None,
) -> None:
    """:func:`_paced` at a set rate: each step's frames counted from the clock, not
    looked at one by one (the same steps: frame ``i`` goes once ``pace.due(i)`` has
    passed, at most ``REPLAY_FRAMES`` at a time; ~0.2 us a frame less).

    A step that caught up is followed by a sleep to ``PACE_SECONDS`` after the
    step's wake-up: the frames that came due while it was handed over wait for
    the next step. Without it a busy tap handed 60 frames, then the 15 due
    meanwhile, then 4, ...: three to four steps (batching turns, scheduler
    rounds) per ``PACE_SECONDS`` instead of one (docs/architecture.md, "The
    replay's steps").
    """
    assert pace.rate is not None
    rate, began, index = pace.rate, time.monotonic(), 0
    woke = began
    while True:
        elapsed = time.monotonic() - began
        last = int(elapsed * rate)  # the last frame due, give or take the rounding
        while (last + 1) / rate <= elapsed:
            last += 1
        while last >= index and last / rate > elapsed:
            last -= 1
        if last < index:  # the next frame is not due yet
            await trio.sleep(max(index / rate - elapsed, PACE_SECONDS))
            woke = time.monotonic()
            continue
        step = list(islice(frames, min(last + 1 - index, REPLAY_FRAMES)))
        if not step:
            return
        index += len(step)
        await _hand(client, step, pace, linktype, interface)
        if len(step) < REPLAY_FRAMES:  # caught up: the next step one PACE_SECONDS after this one
            rest = woke + PACE_SECONDS - time.monotonic()
            if rest > 0:
                await trio.sleep(rest)
            woke = time.monotonic()


async def _hand(
    client: Any,
    step: list[tuple[bytes, int]],
    pace: Pace,
    linktype: int,
    interface: str | None,
) -> None:
    """One step's frames to the tap; at a set rate, each stamped with the time it goes."""
    if pace.rate is not None:
        now = dt.datetime.now(dt.UTC)
        frames = [(data, now) for data, _recorded in step]
    else:
        from mediation.evidence.pcap import capture_time

        frames = [(data, capture_time(ns)) for data, ns in step]
    await client.frames(frames, linktype, interface=interface)
    await trio.lowlevel.checkpoint()  # a step, not a frame, between other tasks' turns
