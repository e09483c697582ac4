"""tls_io.receive_some: the same octets as SSLStream.receive_some, fewer turns."""

from __future__ import annotations

import ssl
import struct
from pathlib import Path

import pytest
import trio
import trio.testing
from test_tls_send import _pair, _Steps

from mediation.tls_io import receive_some


async def _receive(stream: trio.SSLStream, size: int) -> tuple[bytes, int]:
    """``size`` octets by tls_io; and how many calls it took."""
    out, calls = bytearray(), 0
    while len(out) < size:
        data = await receive_some(stream, 256 * 1024)
        calls += 1
        assert data, "closed early"
        out += data
    return bytes(out), calls


async def test_every_octet_arrives_in_order_small_and_larger_than_the_socket(
    tmp_path: Path,
) -> None:
    client, server = await _pair(tmp_path)
    sizes = [1, 31, 1500, 16_384, 40_000, 6 << 20, 7]
    messages = [bytes([n]) * size for n, size in enumerate(sizes)]
    total = sum(map(len, messages))
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:

        async def reader() -> None:
            got.append((await _receive(server, total))[0])

        nursery.start_soon(reader)
        for message in messages:
            await client.send_all(message)
    assert got == [b"".join(messages)]
    # max_bytes bounds a call; what is left comes on the next one.
    await client.send_all(b"abcdef")
    assert await receive_some(server, 4) == b"abcd"
    assert await receive_some(server, 4) == b"ef"


async def test_a_burst_of_records_is_one_call_and_one_turn(tmp_path: Path) -> None:
    client, server = await _pair(tmp_path)
    burst = b"b" * 40_000  # three TLS records, as a tap batch of ~25-40 KiB
    await client.send_all(burst)  # on loopback, in the server's socket when this returns
    steps = _Steps(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(steps)
    try:
        data, calls = await _receive(server, len(burst))
        direct = steps.steps
        await client.send_all(burst)
        before = steps.steps
        got = bytearray()
        while len(got) < len(burst):
            got += await server.receive_some(256 * 1024)
        trios = steps.steps - before
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert (data, bytes(got)) == (burst, burst)
    assert calls == 1 and direct == 1  # the checkpoint every call makes
    assert trios >= 3  # trio: a record a call, a turn each


async def test_a_waiting_receive_wakes_on_data_and_a_tls_close_is_empty(tmp_path: Path) -> None:
    client, server = await _pair(tmp_path)
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:

        async def reader() -> None:
            got.append(await receive_some(server, 1000))  # waits: nothing sent yet
            got.append(await receive_some(server, 1000))  # the close

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        await client.send_all(b"late")
        await trio.testing.wait_all_tasks_blocked()
        await client.aclose()  # close_notify
    assert got == [b"late", b""]


async def test_a_reset_is_a_broken_stream_as_with_receive_some(tmp_path: Path) -> None:
    client, server = await _pair(tmp_path)
    client.transport_stream.socket.setsockopt(  # type: ignore[attr-defined]
        trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0)
    )
    await trio.aclose_forcefully(client)  # a reset, not a TLS close
    with pytest.raises(trio.BrokenResourceError):
        await receive_some(server, 1000)
    with pytest.raises(trio.BrokenResourceError):
        await server.receive_some(1000)  # broken for trio too
    await trio.aclose_forcefully(server)


async def test_a_send_that_must_read_waits_for_the_readers_read(tmp_path: Path) -> None:
    """A send that meets a TLS 1.2 renegotiation must read before it can write:
    trio's own ``_retry`` takes the stream's inner receive lock and counts reads,
    so it never waits on the socket beside a reader. tls_io's reader does the
    same: the sender waits for the reader's read and goes on (before, both
    waited on one socket and trio refused the second: BusyResourceError)."""
    client, server = await _pair(tmp_path)
    owed = [True]

    def write_that_needs_a_read() -> str:  # what SSL_write does mid-renegotiation
        if owed.pop() if owed else False:
            raise ssl.SSLWantReadError
        return "written"

    got: dict[str, object] = {}
    async with trio.open_nursery() as nursery:

        async def reader() -> None:
            got["reader"] = await receive_some(server, 1000)

        async def sender() -> None:
            got["sender"] = await server._retry(write_that_needs_a_read)  # trio's own path

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()  # the reader waits on the socket
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()  # the sender waits for the reader's read
        await client.send_all(b"renegotiated")
    assert got == {"reader": b"renegotiated", "sender": "written"}
    await client.send_all(b"after")
    assert await receive_some(server, 1000) == b"after"


async def test_a_cancelled_wait_leaves_the_stream_usable(tmp_path: Path) -> None:
    client, server = await _pair(tmp_path)
    with trio.move_on_after(0.01):
        await receive_some(server, 1000)
    await client.send_all(b"after")
    assert await receive_some(server, 1000) == b"after"


async def test_another_kind_of_stream_uses_its_own_receive_some() -> None:
    left, right = trio.testing.memory_stream_pair()
    await left.send_all(b"plain")
    assert await receive_some(right, 100) == b"plain"
