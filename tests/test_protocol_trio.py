"""The stream machines driven by thin trio loops, on trio's mock clock.

These loops are the shape the server and ``mediate receive`` take: one
task reads and feeds ``receive_data``, one sleeps until ``next_deadline``
(woken early when input moved it) and calls ``tick``; every write goes
through one lock.
"""

from __future__ import annotations

import trio
import trio.testing
from test_protocol_fixtures import CMCC, record, utc_now

from mediation.protocol import (
    AckReceived,
    EnvelopeReceived,
    KeepaliveAnswered,
    PeerTimedOut,
    StreamReceiver,
    StreamSender,
)
from mediation.protocol.connection import StreamConnection


class Driver:
    """Runs one machine over one trio stream, recording (time, event)."""

    def __init__(self, machine: StreamConnection, stream: trio.abc.Stream) -> None:
        self.machine, self.stream = machine, stream
        self.events: list[tuple[float, object]] = []
        self._lock = trio.Lock()
        self._changed = trio.Event()

    async def write(self, data: bytes) -> None:
        if data:
            async with self._lock:
                await self.stream.send_all(data)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._timers, nursery.cancel_scope)
            await self._reader()
            nursery.cancel_scope.cancel()

    async def _reader(self) -> None:
        while self.machine.connected:
            data = await self.stream.receive_some(65536)
            if not data:
                return
            now = trio.current_time()
            self.events += [(now, e) for e in self.machine.receive_data(data, now)]
            await self.write(self.machine.data_to_send())
            self._changed.set()

    async def _timers(self, scope: trio.CancelScope) -> None:
        while (deadline := self.machine.next_deadline()) is not None:
            with trio.move_on_at(deadline):
                await self._changed.wait()
            self._changed = trio.Event()
            now = trio.current_time()
            self.events += [(now, e) for e in self.machine.tick(now)]
            await self.write(self.machine.data_to_send())
        scope.cancel()  # timed out: the connection is finished


def of(driver: Driver, kind: type) -> list[tuple[float, object]]:
    return [(t, e) for t, e in driver.events if isinstance(e, kind)]


async def test_keepalives_both_ways_keep_an_idle_connection_up(autojump_clock) -> None:
    server_end, agency_end = trio.testing.memory_stream_pair()
    tx = StreamSender({CMCC: 0}, utc_now=utc_now)
    rx = StreamReceiver(utc_now=utc_now, keepalive_interval=15.0)
    tx.resume(trio.current_time())
    rx.connection_made(trio.current_time())
    server, agency = Driver(tx, server_end), Driver(rx, agency_end)
    with trio.move_on_after(65):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.run)
            nursery.start_soon(agency.run)
            await server.write(b"".join(tx.send(CMCC, record(n)) for n in range(3)))
    assert [e.envelope.sequence_number for _t, e in of(agency, EnvelopeReceived)] == [0, 1, 2]
    assert of(server, AckReceived) == [(0.2, AckReceived(CMCC, 3, 3))]  # after the ack delay
    # The server probes 10 s after it last heard the agency (its ack at 0.2 s).
    answered = [t for t, _e in of(server, KeepaliveAnswered)]
    assert answered == [10.2, 20.2, 30.2, 40.2, 50.2, 60.2]
    # The agency hears the server's keepalives every 10 s, so its own 15 s
    # timer never fires: no keepalives of its own, and no timeouts anywhere.
    assert of(agency, KeepaliveAnswered) == []
    assert of(server, PeerTimedOut) == of(agency, PeerTimedOut) == []


async def test_an_agency_that_stops_answering_times_out(autojump_clock) -> None:
    server_end, _silent_agency = trio.testing.memory_stream_pair()
    tx = StreamSender({CMCC: 0}, utc_now=utc_now, keepalive_interval=10, keepalive_timeout=30)
    tx.resume(trio.current_time())
    server = Driver(tx, server_end)
    await server.run()  # returns by itself once the timer gives up
    assert of(server, PeerTimedOut) == [(40.0, PeerTimedOut(30.0))]
    assert trio.current_time() == 40.0
    assert not tx.connected
