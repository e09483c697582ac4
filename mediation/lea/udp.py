"""UDP delivery at the agency: one socket, every stream arriving on it, reports back.

The server sends one envelope per datagram, from one socket per endpoint.
A reader task feeds each datagram to the :class:`DatagramReceiver` (whose
trackers are the receiver's shared ones) and stores what is new; a
reporter task sends, every interval, one receiver report per stream to
the address that stream's envelopes come from.
"""

from __future__ import annotations

import functools
import logging
import socket as stdlib_socket

import trio

from mediation import pdu
from mediation.errors import UsageError
from mediation.lea.state import ReceiverState
from mediation.protocol import DatagramReceiver, EnvelopeReceived, ProtocolError, parse_datagram

log = logging.getLogger("mediation.lea")

Address = tuple[str, int]
MAX_DATAGRAM = 65535
BAD_DATAGRAMS_LOGGED = 5  # then only counted: a flood must not flood the log too


async def bind(host: str, port: int) -> tuple[trio.socket.SocketType, Address]:
    """A UDP socket bound to ``host:port`` (port 0: any free one), and where it is bound.

    Raises:
        UsageError: the address cannot be listened on (names ``--udp``).
    """
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=stdlib_socket.SOCK_DGRAM)
        family, kind, proto, _name, address = infos[0]
        sock = trio.socket.socket(family, kind, proto)
        try:
            await sock.bind(address)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise UsageError("--udp", f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock, sock.getsockname()[:2]


class UdpDelivery:
    """The reader and reporter tasks of one UDP socket."""

    def __init__(
        self, sock: trio.socket.SocketType, state: ReceiverState, report_interval: float
    ) -> None:
        self.sock = sock
        self.state = state
        self.machine = DatagramReceiver(streams=state.accepted, report_interval=report_interval)
        self.machine.trackers = state.trackers  # one tracker per stream, shared by all
        self.sources: dict[pdu.StreamId, Address] = {}
        self._first = trio.Event()

    async def reader(self) -> None:
        """Store every new envelope; drop and count anything else."""
        counters = self.state.counters
        while True:
            data, source = await self.sock.recvfrom(MAX_DATAGRAM)
            now = trio.current_time()
            try:
                events = self.machine.receive_datagram(data, now)
            except ProtocolError as exc:
                counters.bad_datagrams += 1
                if counters.bad_datagrams <= BAD_DATAGRAMS_LOGGED:
                    log.warning("udp: datagram from %s dropped: %s", source[0], exc)
                continue
            for event in events:
                if isinstance(event, EnvelopeReceived):
                    self.sources[event.envelope.stream] = source[:2]
            self.state.on_events(events, functools.partial(_same, data), "udp", now)
            self._first.set()

    async def reporter(self) -> None:
        """Each interval, one receiver report per UDP stream, to where its envelopes come from."""
        await self._first.wait()  # the first datagram starts the report clock
        while True:
            deadline = self.machine.next_deadline()
            assert deadline is not None, "a stream is known after the first datagram"
            await trio.sleep_until(deadline)
            now = trio.current_time()
            if not self.machine.report_due(now):
                continue
            for report in self.machine.make_reports(now):
                stream = getattr(parse_datagram(report), "stream", None)
                source = self.sources.get(stream)  # type: ignore[arg-type]
                if source is None:
                    continue  # a stream that came by TLS or retrieval: no UDP sender
                try:
                    await self.sock.sendto(report, source)
                except OSError as exc:  # e.g. ICMP unreachable from an earlier send
                    log.debug("udp: report to %s not sent: %s", source[0], exc)


def _same(data: bytes, _event: object) -> bytes:
    """A datagram is one message: its octets are the octets of its event."""
    return data
