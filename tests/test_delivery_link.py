"""The link's write queue: one flusher sends what every writer queued; full, writers wait."""

from __future__ import annotations

import socket

import trio
import trio.testing
from test_protocol_fixtures import CMCC

from mediation.protocol import StreamSender
from mediation.server.link import Link

CHUNK = 16 * 1024
HIGH_WATER = 64 * 1024
TOTAL = 200  # chunks: far more than the socket buffers and the queue hold


async def test_a_peer_that_does_not_read_bounds_what_the_link_holds() -> None:
    ours, theirs = socket.socketpair()
    stream, peer = trio.SocketStream(trio.socket.from_stdlib_socket(ours)), theirs
    sender = StreamSender({CMCC: 0})
    sender.resume(trio.current_time())
    link = Link(stream, sender, {}, "test", high_water=HIGH_WATER)
    queued = 0

    async def writer(link: Link) -> None:
        nonlocal queued
        for n in range(TOTAL):
            await link.write(bytes([n]) * CHUNK)
            queued += 1
        await trio.sleep_forever()

    received = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run, writer)
        await trio.testing.wait_all_tasks_blocked()
        # The writer waits on the full queue; the flusher on the full socket.
        assert 0 < queued < TOTAL
        assert len(link._out) < HIGH_WATER + CHUNK
        peer.setblocking(False)
        while len(received) < TOTAL * CHUNK:
            await trio.lowlevel.wait_readable(peer)
            received += peer.recv(1 << 20)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    peer.close()
    assert queued == TOTAL
    # In order, every chunk whole, in fewer sends than writes.
    assert bytes(received) == b"".join(bytes([n]) * CHUNK for n in range(TOTAL))
    assert link.sends < TOTAL
