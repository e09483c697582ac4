"""The receiver's connection driver on trio's mock clock: acks go out when the machine says.

The driver wakes its writer only when the machine queued octets, and its
timer task only when the machine's deadline moved earlier (lea/driver.py).
So an ack that comes due by time alone (``ack_delay`` after the first
unacknowledged envelope, fewer than ``ack_every`` of them) must still go
out then, and one due by count at once. The clock moves only when the
test moves it (the fsync before an ack runs in a thread, which an
autojumping clock would race past).
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing
from test_lea_support import CMCC, cc_record

from mediation import pdu as P
from mediation.lea import rawfile
from mediation.lea.driver import StreamDriver
from mediation.lea.state import ReceiverState
from mediation.protocol import DatagramSender, MessageBuffer, StreamReceiver
from mediation.protocol.envelope import decode_message
from mediation.protocol.stream import ACK_DELAY, ACK_EVERY


class Agency:
    """A StreamDriver over a memory stream; the test is the server at the other end."""

    def __init__(self, out: Path) -> None:
        self.server_end, agency_end = trio.testing.memory_stream_pair()
        self.state = ReceiverState(out)
        machine = StreamReceiver(trackers=self.state.trackers, streams=self.state.accepted)
        machine.connection_made(trio.current_time())
        self.driver = StreamDriver(machine, agency_end, self.state, "tls")
        self._buffer = MessageBuffer()

    async def send(self, count: int) -> None:
        sender = DatagramSender(CMCC)
        data = b"".join(sender.envelope(cc_record(n), 0.0) for n in range(count))
        await self.server_end.send_all(data)
        await trio.testing.wait_all_tasks_blocked()

    async def ack(self) -> int:
        """The next acknowledgement the server end reads (its next expected).

        Only once the machine has let it go (nothing due any more) and the
        writer has taken it: the rest is the fsync in its thread, then the send.
        """
        await trio.testing.wait_all_tasks_blocked()
        assert self.driver.machine.next_deadline() > trio.current_time(), "an ack due, not sent"
        assert not self.driver._pending, "output queued, the writer not woken"
        while True:
            for raw in self._buffer.messages():
                message = decode_message(raw)
                if isinstance(message, P.Acknowledgement):
                    assert message.stream == CMCC
                    return message.next_expected
            data = await self.server_end.receive_some(65536)
            assert data, f"the connection ended: {self.driver.ended_by}"
            self._buffer.feed(data)

    async def nothing_sent(self) -> bool:
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0) as scope:  # the mock clock: only what is there already
            data = await self.server_end.receive_some(65536)
            self._buffer.feed(data)
        return scope.cancelled_caught


async def test_a_few_envelopes_are_acknowledged_after_the_ack_delay(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    agency = Agency(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agency.driver.run)
        mock_clock.jump(1.0)  # the timer task asleep until the keepalive, far off
        await agency.send(3)
        mock_clock.jump(ACK_DELAY * 0.9)
        assert await agency.nothing_sent()
        mock_clock.jump(ACK_DELAY * 0.1)
        assert await agency.ack() == 3
        nursery.cancel_scope.cancel()
    agency.state.close()


async def test_ack_every_envelopes_are_acknowledged_at_once(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    agency = Agency(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agency.driver.run)
        mock_clock.jump(1.0)
        await agency.send(ACK_EVERY)
        assert await agency.ack() == ACK_EVERY  # without the clock moving
        nursery.cancel_scope.cancel()
    agency.state.close()


async def test_envelopes_before_a_broken_message_are_stored(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """A read of good envelopes then a fault: the envelopes are stored, none acknowledged.

    The machine counts them as held before it meets the fault, so a resent
    copy on the next connection is a duplicate: dropped with the fault's
    read, they were lost (regression).
    """
    agency = Agency(tmp_path)
    sender = DatagramSender(CMCC)
    good = [sender.envelope(cc_record(n), 0.0) for n in range(3)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agency.driver.run)
        await agency.server_end.send_all(b"".join(good) + b"\x30\x00")  # no delivery message
    assert agency.driver.ended_by.startswith("protocol error")
    assert agency.state.stats[CMCC].received == 3
    assert await agency.nothing_sent()  # no ack: the server sends them again
    agency.state.close()
    stored = rawfile.scan(tmp_path / CMCC.warrant_handle / "cmcc.raw")[0]
    assert [m.sequence for m in stored] == [0, 1, 2]
