"""The agency side of the delivery tests: the real protocol machines on loopback sockets.

- :class:`UdpAgency`: a ``DatagramReceiver`` that can drop datagrams on purpose;
- :class:`TlsAgency`: a TLS server running a ``StreamReceiver``, which can
  cut its connections;
- :func:`retrieve`: a ``StreamReceiver`` that only asks for missing ranges.

No tests here.
"""

from __future__ import annotations

import dataclasses
import math
import ssl
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import trio
from delivery_support import HOST, TEST_UDP_KEY, Cert

from mediation import pdu as P
from mediation.protocol import (
    CheckpointReceived,
    DatagramReceiver,
    EnvelopeReceived,
    ReplayFinished,
    SequenceTracker,
    StreamReceiver,
    parse_datagram,
)
from mediation.protocol.sealed import (
    DatagramOpener,
    DatagramSealer,
    Direction,
    SealKey,
    SealRefused,
)


class UdpAgency:
    """A UDP receiver that drops chosen datagrams on purpose and reports once per interval.

    Datagrams are opened with ``key`` (the endpoint's, as registered by
    ``udp_endpoint``); those that do not open are counted in ``refused``.
    """

    def __init__(
        self,
        drop: Callable[[P.Envelope], bool] = lambda e: False,
        interval: float = 0.1,
        key: SealKey = TEST_UDP_KEY,
    ):
        self.receiver = DatagramReceiver(report_interval=interval)
        self.opener = DatagramOpener([key], Direction.SERVER_TO_AGENCY)
        self.sealer = DatagramSealer(key, Direction.AGENCY_TO_SERVER, time.time_ns() // 1000)
        self.refused = 0
        self.drop = drop
        self.dropped: dict[P.StreamId, set[int]] = {}
        self.envelopes: list[P.Envelope] = []
        self.checkpoints: list[P.ChainCheckpoint] = []
        self.reports_sent = 0
        self.sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        self._peer: object = None
        self._heard = trio.Event()

    @property
    def peer(self) -> object:
        """Where the server's datagrams come from (its delivery socket)."""
        return self._peer

    async def bind(self) -> int:
        await self.sock.bind((HOST, 0))
        return self.sock.getsockname()[1]

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reports)
            while True:
                data, peer = await self.sock.recvfrom(65536)
                try:
                    data = self.opener.open(data).message
                except SealRefused:
                    self.refused += 1
                    continue
                self._peer = peer
                message = parse_datagram(data)
                if isinstance(message, P.Envelope) and self.drop(message):
                    self.dropped.setdefault(message.stream, set()).add(message.sequence_number)
                    continue
                for event in self.receiver.receive_datagram(data, trio.current_time()):
                    if isinstance(event, EnvelopeReceived):
                        self.envelopes.append(event.envelope)
                    elif isinstance(event, CheckpointReceived):
                        self.checkpoints.append(event.checkpoint)
                self._heard.set()

    async def _reports(self) -> None:
        await self._heard.wait()
        while True:
            deadline = self.receiver.next_deadline() or math.inf
            await trio.sleep_until(deadline)
            for report in self.receiver.make_reports(trio.current_time()):
                await self.sock.sendto(self.sealer.seal(report), self._peer)
                self.reports_sent += 1

    def missing(self, stream: P.StreamId, first: int, last: int) -> int:
        """The receiver's count of sequence numbers missing in ``first..last``."""
        tracker = self.receiver.tracker(stream)
        return sum(b - a + 1 for a, b in tracker.gaps_within(first, last))


class TlsAgency:
    """A TLS endpoint: verifies the server against its CA, runs a StreamReceiver.

    ``cut_at``: after these numbers of envelopes received in total, the TCP
    connection is dropped at once (no TLS close, acks in flight lost).
    """

    def __init__(self, cert: Cert, server_ca: Path, cut_at: Iterable[int] = ()) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert.cert_file, cert.key_file)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.load_verify_locations(cafile=str(server_ca))
        self.receiver = StreamReceiver()
        self.stored: dict[P.StreamId, list[int]] = {}
        self.contents: dict[P.StreamId, list[P.Envelope]] = {}
        self.checkpoints: list[P.ChainCheckpoint] = []
        self.duplicates = 0
        self.unmarked_duplicates = 0
        self.total = 0
        self.connections = 0
        self.handshakes_failed = 0
        self.plaintext_bytes = 0
        self._cuts = sorted(cut_at)
        self.port = 0
        self.connected = trio.Event()

    async def serve(
        self, port: int = 0, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=HOST)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, self.context, server_side=True)
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError:
            self.handshakes_failed += 1
            await trio.aclose_forcefully(tcp)
            return
        self.connections += 1
        self.connected.set()
        self.receiver.connection_made(trio.current_time())
        try:
            await _drive(self, stream, tcp)
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the server went away, or we cut the connection
        finally:
            self.receiver.connection_lost()
            await trio.aclose_forcefully(stream)

    def take(self, event: object) -> None:
        """Store what is new; count what came twice (and whether the server marked it)."""
        if isinstance(event, CheckpointReceived):
            self.checkpoints.append(event.checkpoint)
            return
        if not isinstance(event, EnvelopeReceived):
            return
        self.total += 1
        envelope = event.envelope
        if event.duplicate:
            self.duplicates += 1
            self.unmarked_duplicates += 0 if envelope.redelivered else 1
            return
        self.stored.setdefault(envelope.stream, []).append(envelope.sequence_number)
        self.contents.setdefault(envelope.stream, []).append(envelope)

    def cut_due(self) -> bool:
        if self._cuts and self.total >= self._cuts[0]:
            self._cuts.pop(0)
            return True
        return False


async def _drive(agency: TlsAgency, stream: trio.SSLStream, tcp: trio.SocketStream) -> None:
    """Reader and timers of one agency connection (the shape of test_protocol_trio)."""
    receiver = agency.receiver
    lock = trio.Lock()
    changed = trio.Event()

    async def write(data: bytes) -> None:
        if data:
            async with lock:
                await stream.send_all(data)

    async def timers() -> None:
        nonlocal changed
        while (deadline := receiver.next_deadline()) is not None:
            with trio.move_on_at(deadline):
                await changed.wait()
            changed = trio.Event()
            receiver.tick(trio.current_time())
            await write(receiver.data_to_send())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers)
        await write(receiver.data_to_send())  # the opening acks
        while True:
            data = await stream.receive_some(65536)
            if not data:
                break
            agency.plaintext_bytes += len(data)
            for event in receiver.receive_data(data, trio.current_time()):
                agency.take(event)
            if agency.cut_due():
                await trio.aclose_forcefully(tcp)  # the connection dies, acks with it
                break
            await write(receiver.data_to_send())
            changed.set()
        nursery.cancel_scope.cancel()


def free_port() -> int:
    """A loopback TCP port nobody listens on (an agency that is down)."""
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def client_context(cert: Cert, server_ca: Path) -> ssl.SSLContext:
    """The agency's context for retrieval: its certificate; the server checked by its CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_cert_chain(cert.cert_file, cert.key_file)
    context.load_verify_locations(cafile=str(server_ca))
    return context


@dataclasses.dataclass
class Retrieved:
    """What a retrieval connection brought: its events, and whether the server cut it."""

    events: list[object] = dataclasses.field(default_factory=list)
    closed_by_server: bool = False

    @property
    def envelopes(self) -> list[P.Envelope]:
        return [e.envelope for e in self.events if isinstance(e, EnvelopeReceived)]


async def retrieve(
    address: tuple[str, int],
    cert: Cert,
    server_ca: Path,
    trackers: dict[P.StreamId, SequenceTracker],
    streams: Iterable[P.StreamId],
) -> Retrieved:
    """Fetch every missing range of ``streams`` over retrieval.

    A refused handshake or a connection the server closes ends it early
    with ``closed_by_server``; whatever arrived before is in the events.
    """
    streams = list(streams)
    tcp = await trio.open_tcp_stream(*address)
    stream = trio.SSLStream(tcp, client_context(cert, server_ca), server_hostname=address[0])
    receiver = StreamReceiver(trackers=trackers)
    out = Retrieved()
    try:
        await stream.do_handshake()
        receiver.connection_made(trio.current_time())
        await _ask(stream, receiver, streams)
        while receiver.retrieval.open_requests:
            data = await stream.receive_some(65536)
            if not data:
                raise trio.BrokenResourceError("closed by the server")
            out.events += receiver.receive_data(data, trio.current_time())
            if not receiver.retrieval.open_requests:  # ask for what is still missing
                await _ask(stream, receiver, streams)
    except trio.BrokenResourceError:
        out.closed_by_server = True
    finally:
        await trio.aclose_forcefully(stream)
    return out


async def _ask(stream: trio.SSLStream, receiver: StreamReceiver, streams: list[P.StreamId]) -> None:
    for sid in streams:
        # With the clock: ranges answered "not yet" wait their pause, so this ends.
        for request in receiver.request_missing(sid, now=trio.current_time()):
            await stream.send_all(request)


def finished(retrieved: Retrieved) -> list[ReplayFinished]:
    return [e for e in retrieved.events if isinstance(e, ReplayFinished)]
