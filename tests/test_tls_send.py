"""server/tls_send.send_all: the same octets as SSLStream.send_all, without the loop's turns."""

from __future__ import annotations

import ssl
import struct
from pathlib import Path

import pytest
import trio
import trio.testing
from delivery_support import make_cert

from mediation.server.tls_send import send_all


def _contexts(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert = make_cert(tmp, "tls-send")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert.cert_file, cert.key_file)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.load_verify_locations(cafile=str(cert.cert_file))
    return server, client


async def _pair(tmp: Path) -> tuple[trio.SSLStream, trio.SSLStream]:
    """A connected, handshaken (client, server) pair of TLS streams on loopback."""
    server_ctx, client_ctx = _contexts(tmp)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    accepted: list[trio.SSLStream] = []

    async def accept() -> None:
        tcp = await listeners[0].accept()
        stream = trio.SSLStream(tcp, server_ctx, server_side=True)
        await stream.do_handshake()
        accepted.append(stream)

    async with trio.open_nursery() as inner:
        inner.start_soon(accept)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        client = trio.SSLStream(tcp, client_ctx, server_hostname="127.0.0.1")
        await client.do_handshake()
    await listeners[0].aclose()
    return client, accepted[0]


async def _receive(stream: trio.SSLStream, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        data = await stream.receive_some(65536)
        assert data, "closed early"
        out += data
    return bytes(out)


async def test_every_octet_arrives_in_order_small_and_larger_than_the_socket(
    tmp_path: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        client, server = await _pair(tmp_path)
        # Small writes go straight to the socket; 6 MiB cannot, so the rest waits.
        sizes = [1, 31, 1500, 16_384, 6 << 20, 7]
        messages = [bytes([n]) * size for n, size in enumerate(sizes)]
        total = sum(map(len, messages))
        got: list[bytes] = []

        async def reader() -> None:
            got.append(await _receive(server, total))

        nursery.start_soon(reader)
        for message in messages:
            await send_all(client, message)
    assert got == [b"".join(messages)]


class _Steps(trio.abc.Instrument):
    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def test_a_send_the_socket_takes_costs_no_turn_where_send_all_costs_two(
    tmp_path: Path,
) -> None:
    client, server = await _pair(tmp_path)
    steps = _Steps(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(steps)
    try:
        await send_all(client, b"ack")
        direct = steps.steps
        await client.send_all(b"ack")
        trios = steps.steps - direct
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert await _receive(server, 6) == b"ackack"
    assert direct == 0
    assert trios == 2


async def test_a_lost_connection_is_a_broken_stream_as_with_send_all(tmp_path: Path) -> None:
    client, server = await _pair(tmp_path)
    server.transport_stream.socket.setsockopt(  # type: ignore[attr-defined]
        trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0)
    )
    await trio.aclose_forcefully(server)  # a reset, not a TLS close
    # In trio's words, with the cause (it was an empty message).
    with pytest.raises(trio.BrokenResourceError, match=r"^socket connection broken: \[Errno"):
        for _ in range(100):  # the first write may go before the reset is seen
            await send_all(client, b"x" * 1500)
            await trio.lowlevel.checkpoint()
    with pytest.raises(trio.BrokenResourceError):
        await client.send_all(b"x")  # the stream is broken for trio too
    await trio.aclose_forcefully(client)


async def test_another_kind_of_stream_uses_its_own_send_all() -> None:
    left, right = trio.testing.memory_stream_pair()
    await send_all(left, b"plain")
    await send_all(left, b"")
    assert await right.receive_some(100) == b"plain"
