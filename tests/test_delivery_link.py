"""The link's write queue: one flusher sends what every writer queued; full, writers wait."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing
from test_protocol_fixtures import CMCC

from mediation.protocol import StreamSender
from mediation.server.link import Link

CHUNK = 16 * 1024
HIGH_WATER = 64 * 1024
TOTAL = 200  # chunks: far more than the socket buffers and the queue hold


@pytest.mark.parametrize("flush", [False, True], ids=["flusher", "writer-flushes"])
async def test_a_peer_that_does_not_read_bounds_what_the_link_holds(flush: bool) -> None:
    """Writers that flush themselves too: one send at a time, in order, bounded."""
    ours, theirs = socket.socketpair()
    stream, peer = trio.SocketStream(trio.socket.from_stdlib_socket(ours)), theirs
    sender = StreamSender({CMCC: 0})
    sender.resume(trio.current_time())
    link = Link(stream, sender, {}, "test", high_water=HIGH_WATER)
    queued = 0

    async def writer(link: Link) -> None:
        nonlocal queued
        for n in range(TOTAL):
            await link.write(bytes([n]) * CHUNK, flush_after=flush)
            if flush:
                await link.flush()
            queued += 1
        await trio.sleep_forever()

    received = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run, writer)
        await trio.testing.wait_all_tasks_blocked()
        # The writer waits on the full queue; the flusher on the full socket.
        assert 0 < queued < TOTAL
        assert link.queued < HIGH_WATER + CHUNK
        peer.setblocking(False)
        while len(received) < TOTAL * CHUNK:
            await trio.lowlevel.wait_readable(peer)
            received += peer.recv(1 << 20)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    peer.close()
    assert queued == TOTAL
    # In order, every chunk whole; the flusher in fewer sends than writes.
    assert bytes(received) == b"".join(bytes([n]) * CHUNK for n in range(TOTAL))
    assert link.sends < TOTAL or flush


async def test_a_quiet_link_sends_at_once_and_a_busy_one_a_linger_apart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A send waits only for the rest of a linger since the last send, not a whole one.

    At light load commits are further apart than the linger: waiting one
    out joined nothing and cost a timer wake-up per commit.
    """
    ours, theirs = socket.socketpair()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    peer = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
    sender = StreamSender({CMCC: 0}, keepalive_interval=1e6, keepalive_timeout=1e6)
    sender.resume(trio.current_time())
    link = Link(stream, sender, {}, "test", linger=1.0)
    arrivals: list[tuple[float, bytes]] = []

    async def writer(link: Link) -> None:
        await link.write(b"a")  # the link was quiet: in the next loop turn
        await trio.sleep(0.1)
        await link.write(b"b")  # 0.1 after a send: at 1.0, a linger after it
        await link.write(b"c")  # joins it
        await trio.sleep(5.0)
        await link.write(b"d")  # quiet again: at once
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run, writer)
        while sum(len(data) for _at, data in arrivals) < 4:
            data = await peer.receive_some(64)
            arrivals.append((trio.current_time(), bytes(data)))
        nursery.cancel_scope.cancel()
    await peer.aclose()
    got = [(round(at, 3), data) for at, data in arrivals]
    assert got == [(0.0, b"a"), (1.0, b"bc"), (5.1, b"d")]
    assert link.sends == 3


class _FlusherSteps(trio.abc.Instrument):
    """Counts the steps of the link's flusher task (a ``guarded`` wrapper of ``_flusher``)."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        frame = getattr(task.coro, "cr_frame", None)
        if frame is not None and frame.f_locals.get("task") is Link._flusher:
            self.steps += 1


async def test_a_writer_that_flushes_sends_without_waking_the_flusher(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A flush sends from the writer when the linger is up; within a linger the flusher does.

    Lists of messages go out joined, in order.
    """
    ours, theirs = socket.socketpair()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    peer = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
    sender = StreamSender({CMCC: 0}, keepalive_interval=1e6, keepalive_timeout=1e6)
    sender.resume(trio.current_time())
    link = Link(stream, sender, {}, "test", linger=1.0)
    flusher = _FlusherSteps()
    arrivals: list[tuple[float, bytes]] = []
    woken: list[int] = []

    async def writer(link: Link) -> None:
        await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.add_instrument(flusher)
        await link.write([b"a", b"A"], flush_after=True)  # quiet link: sent by this flush
        await link.flush()
        assert (link.sends, link.queued) == (1, 0)
        await trio.sleep(0.1)
        await link.write(b"b", flush_after=True)  # 0.1 after a send: the flusher's, at 1.0
        await link.flush()
        assert (link.sends, link.queued) == (1, 1)
        await link.write([b"c"])  # joins it
        await trio.sleep(5.0)
        woken.append(flusher.steps)
        await link.write(b"d", flush_after=True)  # quiet again: this flush
        await link.flush()
        woken.append(flusher.steps)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run, writer)
        while sum(len(data) for _at, data in arrivals) < 5:
            data = await peer.receive_some(64)
            arrivals.append((trio.current_time(), bytes(data)))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    trio.lowlevel.remove_instrument(flusher)
    await peer.aclose()
    got = [(round(at, 3), data) for at, data in arrivals]
    assert got == [(0.0, b"aA"), (1.0, b"bc"), (5.1, b"d")]
    assert link.sends == 3
    # The flusher woke for the lingered send only (one step: its wake and send).
    assert woken[0] == woken[1] and woken[0] >= 1
