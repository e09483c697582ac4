"""The receiver's connection driver over a real loopback TLS connection (lea/driver.py).

The driver reads with ``tls_io.receive_some``: every TLS record already
received in one call, where trio's ``SSLStream.receive_some`` gives one a
call. The envelopes, the acks and the way a connection ends must be what
they were: a TLS close ends it "closed by peer", a reset or a cut without
a TLS close as a lost connection, with every envelope before it stored.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from test_lea_support import CMCC, cc_record
from test_tls_send import _pair

from mediation import pdu as P
from mediation.lea import rawfile
from mediation.lea.driver import StreamDriver
from mediation.lea.state import ReceiverState
from mediation.protocol import DatagramSender, MessageBuffer, StreamReceiver
from mediation.protocol.envelope import decode_message


class _ReadsKept(StreamReceiver):
    """The agency's real machine, keeping the size of every read the driver feeds it."""

    def __init__(self, state: ReceiverState) -> None:
        super().__init__(trackers=state.trackers, streams=state.accepted)
        self.reads: list[int] = []

    def receive_data(self, data: bytes, now: float) -> list:
        self.reads.append(len(data))
        return super().receive_data(data, now)


class _Link:
    """The server's end of a TLS connection to a :class:`StreamDriver` (the agency's end)."""

    def __init__(self, out: Path, server_end: trio.SSLStream, agency_end: trio.SSLStream) -> None:
        self.server_end = server_end
        self.state = ReceiverState(out)
        self.machine = _ReadsKept(self.state)
        self.machine.connection_made(trio.current_time())
        self.driver = StreamDriver(self.machine, agency_end, self.state, "tls")
        self._sender = DatagramSender(CMCC)
        self._buffer = MessageBuffer()
        self.sent = 0
        self.first_burst = 0  # octets of the first write

    async def send(self, count: int) -> None:
        """The next ``count`` envelopes, in one write."""
        first, self.sent = self.sent, self.sent + count
        records = (cc_record(n) for n in range(first, self.sent))
        data = b"".join(self._sender.envelope(r, 0.0) for r in records)
        self.first_burst = self.first_burst or len(data)
        await self.server_end.send_all(data)

    async def acked(self, upto: int) -> None:
        """Read acknowledgements until one says every envelope below ``upto`` is stored."""
        while True:
            for raw in self._buffer.messages():
                message = decode_message(raw)
                if isinstance(message, P.Acknowledgement) and message.next_expected >= upto:
                    return
            data = await self.server_end.receive_some(65536)
            assert data, f"the connection ended: {self.driver.ended_by}"
            self._buffer.feed(data)

    def stored(self) -> list[int]:
        self.state.close()
        path = self.state.out_dir / CMCC.warrant_handle / "cmcc.raw"
        return [m.sequence for m in rawfile.scan(path)[0]] if path.exists() else []


async def _link(tmp_path: Path) -> _Link:
    server_end, agency_end = await _pair(tmp_path)  # the agency accepts, as `mediate receive`
    return _Link(tmp_path / "out", server_end, agency_end)


async def test_a_burst_already_buffered_is_one_read_and_every_envelope_is_stored(
    tmp_path: Path,
) -> None:
    link = await _link(tmp_path)
    await link.send(300)  # ~60 KiB: four TLS records, in the agency's socket before it reads
    await trio.testing.wait_all_tasks_blocked()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.driver.run)
        await link.acked(300)
        for _ in range(10):  # then bursts while it reads, ~1 MiB in all
            await link.send(500)
        await link.acked(link.sent)
        await link.server_end.aclose()  # close_notify
    assert link.driver.ended_by == "closed by peer"
    assert link.machine.reads[0] == link.first_burst  # all four records at once
    assert link.stored() == list(range(link.sent))


async def test_a_tls_close_with_nothing_sent_ends_the_connection_closed_by_peer(
    tmp_path: Path,
) -> None:
    link = await _link(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.driver.run)
        await trio.testing.wait_all_tasks_blocked()
        await link.server_end.aclose()
    assert link.driver.ended_by == "closed by peer"
    assert link.stored() == []


def _reset(stream: trio.SSLStream) -> None:
    """Make closing ``stream`` a TCP reset, not a TLS close."""
    stream.transport_stream.socket.setsockopt(  # type: ignore[attr-defined]
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )


async def _cut_by_reset(stream: trio.SSLStream) -> None:
    _reset(stream)
    await trio.aclose_forcefully(stream)


async def _cut_without_tls_close(stream: trio.SSLStream) -> None:
    await stream.transport_stream.aclose()  # TCP FIN, no close_notify


async def _as_trio_ends(tmp_path: Path, cut: Callable[[trio.SSLStream], Awaitable[None]]) -> str:
    """How a connection cut so ended before: trio's own ``receive_some``, as the driver words it."""
    server_end, agency_end = await _pair(tmp_path)
    await server_end.send_all(b"x")
    assert await agency_end.receive_some(100) == b"x"
    await cut(server_end)
    try:
        if await agency_end.receive_some(100) == b"":
            return "closed by peer"
    except trio.BrokenResourceError as exc:
        return f"connection lost: {exc or type(exc).__name__}"
    finally:
        await trio.aclose_forcefully(agency_end)
    raise AssertionError("data after the cut")


@pytest.mark.parametrize(
    ("cut", "count", "said"),
    [
        # a reset: a lost connection, with its errno
        (_cut_by_reset, 400, "connection lost: socket connection broken: "),
        # a cut without a TLS close, as trio's own read takes it (a close:
        # Python 3.11 sets OP_IGNORE_UNEXPECTED_EOF)
        (_cut_without_tls_close, 20, ""),
    ],
    ids=["reset", "cut-without-close"],
)
async def test_a_connection_that_ends_badly_ends_as_before_and_what_came_before_is_stored(
    tmp_path: Path, cut: Callable[[trio.SSLStream], Awaitable[None]], count: int, said: str
) -> None:
    before = await _as_trio_ends(tmp_path / "trio", cut)
    assert before.startswith(said)
    link = await _link(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.driver.run)
        await link.send(count)
        await link.acked(count)
        await cut(link.server_end)
    assert link.driver.ended_by == before
    assert link.stored() == list(range(count))
