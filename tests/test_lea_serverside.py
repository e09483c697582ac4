"""The mediation server's side of the receiver tests, played by its protocol machines.

No tests of its own. UDP: a DatagramSender per stream on one socket.
TLS: a StreamSender connecting out to the receiver, or answering replay
requests from an in-memory log on a retrieval listener. Driven as the
server drives them (docs/delivery-protocol.md, "Driving the machines").
"""

from __future__ import annotations

import socket as stdlib_socket
import ssl
import time

import trio
from test_lea_support import CMCC, CMII, UDP_KEY, Pki, record_for

from mediation import pdu as P
from mediation.protocol import (
    AckReceived,
    DatagramSender,
    ReplayWanted,
    ReportReceived,
    RetrievalLimits,
    StoredRecord,
    StreamSender,
    parse_datagram,
)
from mediation.protocol.sealed import DatagramOpener, DatagramSealer, Direction, SealKey


class ServerConnection:
    """A StreamSender over one trio stream, driven as the mediation server will.

    A reader feeds ``receive_data`` (and answers replay requests from
    ``log``), a timer task ticks; every write under one lock.
    """

    def __init__(
        self,
        machine: StreamSender,
        stream: trio.abc.Stream,
        log: dict[P.StreamId, dict[int, StoredRecord]] | None = None,
        reason: str = "past retention",
        never: set[int] | None = None,
    ) -> None:
        self.machine, self.stream, self.log, self.reason = machine, stream, log or {}, reason
        self.never = never  # None: whatever is not in the log is unavailable
        self.events: list[object] = []
        self._lock = trio.Lock()
        self._changed = trio.Event()
        self.acked: dict[P.StreamId, int] = {}
        self.ack_changed = trio.Event()

    async def write(self, data: bytes) -> None:
        if data:
            async with self._lock:
                await self.stream.send_all(data)

    async def run(self, *, close: bool = True) -> None:
        """Until the peer closes or this is cancelled; ``close=False`` leaves the stream open."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._timers)
                await self._reader()
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the receiver hung up (its run ended)
        finally:
            self.machine.connection_lost()
            if close:
                await trio.aclose_forcefully(self.stream)

    async def _reader(self) -> None:
        while self.machine.connected:
            data = await self.stream.receive_some(65536)
            if not data:
                return
            for event in self.machine.receive_data(data, trio.current_time()):
                self.events.append(event)
                if isinstance(event, ReplayWanted):
                    await self._replay(event)
                elif isinstance(event, AckReceived):
                    self.acked[event.stream] = event.next_expected
                    self.ack_changed.set()
                    self.ack_changed = trio.Event()
            await self.write(self.machine.data_to_send())
            self._changed.set()

    async def _replay(self, wanted: ReplayWanted) -> None:
        records = self.log.get(wanted.stream, {})
        unavailable = []
        for first, last in wanted.ranges:
            for seq in range(first, last + 1):
                if seq in records:
                    data = self.machine.replay_envelope(wanted.request_id, records[seq])
                    if data is None:  # a limit: the rest is "not yet"
                        break
                    await self.write(data)
                elif self.never is None or seq in self.never:
                    unavailable.append((seq, seq))
                # else: neither sent nor unavailable, so the machine says "not yet"
        reason = self.reason if unavailable else None
        await self.write(self.machine.finish_replay(wanted.request_id, None, unavailable, reason))

    async def _timers(self) -> None:
        while (deadline := self.machine.next_deadline()) is not None:
            with trio.move_on_at(deadline):
                await self._changed.wait()
            self._changed = trio.Event()
            self.machine.tick(trio.current_time())
            await self.write(self.machine.data_to_send())

    async def wait_acked(self, stream: P.StreamId, value: int) -> None:
        with trio.fail_after(10):
            while self.acked.get(stream, 0) < value:
                await self.ack_changed.wait()


async def serve_retrieval(
    nursery: trio.Nursery,
    pki: Pki,
    log: dict[P.StreamId, dict[int, StoredRecord]],
    reason: str = "past retention",
    never: set[int] | None = None,
    limits: RetrievalLimits | None = None,
) -> tuple[int, list[ServerConnection]]:
    """The server's retrieval listener: replays from ``log``; returns its port.

    ``never``: the only numbers answered unavailable when not in ``log``
    (others: "not yet"); None: every number not in ``log``.
    """
    connections: list[ServerConnection] = []
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    tls = [trio.SSLListener(t, pki.server_listen_context()) for t in listeners]

    async def handle(stream: trio.SSLStream) -> None:
        sender = StreamSender(dict.fromkeys(log, 0), retrieval_limits=limits)
        sender.resume(trio.current_time())  # replays only: send() is never called
        connection = ServerConnection(sender, stream, log, reason, never)
        connections.append(connection)
        await connection.run()

    await nursery.start(trio.serve_listeners, handle, tls)
    return port, connections


async def connect_out(port: int, context: ssl.SSLContext) -> trio.SSLStream:
    """The server connecting out to the agency's TLS listener."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname="127.0.0.1")
    await stream.do_handshake()
    return stream


class UdpServer:
    """The server's UDP delivery: one socket, one DatagramSender per stream, sealed."""

    def __init__(self, target: tuple[str, int], key: SealKey = UDP_KEY) -> None:
        self.target = target
        family = stdlib_socket.AF_INET6 if ":" in target[0] else stdlib_socket.AF_INET
        self.sock = trio.socket.socket(family, stdlib_socket.SOCK_DGRAM)
        self.senders = {s: DatagramSender(s, report_interval=0.2) for s in (CMCC, CMII)}
        self.sealer = DatagramSealer(key, Direction.SERVER_TO_AGENCY, time.time_ns() // 1000)
        self.opener = DatagramOpener([key], Direction.AGENCY_TO_SERVER)
        self.reports: list[ReportReceived] = []
        self.report_arrived = trio.Event()

    def datagram(self, stream: P.StreamId, seq: int) -> bytes:
        """The sealed datagram of envelope ``seq`` (the next one of its stream)."""
        data = self.senders[stream].envelope(record_for(stream, seq), trio.current_time())
        return self.sealer.seal(data)

    async def send(self, stream: P.StreamId, count: int, drop: set[int] = frozenset()) -> None:
        """Envelopes 0..count-1 of ``stream`` in order; those in ``drop`` never leave."""
        for seq in range(count):
            data = self.datagram(stream, seq)
            if seq not in drop:
                await self.sock.sendto(data, self.target)

    async def read_reports(self) -> None:
        while True:
            data, _source = await self.sock.recvfrom(2048)
            data = self.opener.open(data).message  # a report that does not open: fails the test
            stream = parse_datagram(data).stream
            for event in self.senders[stream].receive_datagram(data, trio.current_time()):
                if isinstance(event, ReportReceived):
                    self.reports.append(event)
                    self.report_arrived.set()
                    self.report_arrived = trio.Event()

    async def wait_report(self, stream: P.StreamId, check) -> ReportReceived:
        """The first report of ``stream`` (from now on or already in) that passes ``check``."""
        with trio.fail_after(10):
            while True:
                for event in self.reports:
                    if event.report.stream == stream and check(event):
                        return event
                await self.report_arrived.wait()
