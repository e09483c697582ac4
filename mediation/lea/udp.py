"""UDP delivery at the agency: one socket, every stream arriving on it, sealed reports back.

The server sends one sealed datagram per message (``protocol/sealed.py``),
from one socket per endpoint. The reader opens each datagram with the
agency's keys *before* decoding it: one that does not open (forged,
altered, replayed, of a stale session) is counted by reason and dropped,
never decoded, stored or answered, so it opens no gap and creates no
directory. What opens goes to the :class:`DatagramReceiver` (whose
trackers are the receiver's shared ones) and what is new is stored. The
reporter sends, every interval, one sealed report per stream to the
source address of that stream's last authenticated datagram.

The opener's replay state (sessions and their highest counters) is saved
in the output directory (:data:`SESSIONS_FILE`), so a recording cannot be
played back across a restart of the receiver either.

Keeping up: the socket asks for a large receive buffer (``--udp-buffer``,
default :data:`DEFAULT_BUFFER`; past ``net.core.rmem_max`` with
``SO_RCVBUFFORCE`` where allowed, else capped, and a warning names the
sysctl), the reader takes every queued datagram at each wake-up (up to
:data:`BATCH` before it lets other tasks run), and the kernel's count of
datagrams dropped for want of buffer (``SO_RXQ_OVFL``) is kept in the
counters, so a drop at the socket is never mistaken for loss upstream.
"""

from __future__ import annotations

import json
import logging
import operator
import socket as stdlib_socket
import struct
import time
from pathlib import Path

import trio

from mediation import pdu
from mediation.durable import write_atomic
from mediation.errors import UsageError
from mediation.lea.state import ReceiverState
from mediation.protocol import (
    CheckpointReceived,
    DatagramReceiver,
    EnvelopeReceived,
    Event,
    ProtocolError,
    parse_datagram,
)
from mediation.protocol.sealed import (
    DatagramOpener,
    DatagramSealer,
    Direction,
    SealKey,
    SealRefused,
)
from mediation.refusals import Refusals
from mediation.udpbuffer import set_receive_buffer

log = logging.getLogger("mediation.lea")

Address = tuple[str, int]
MAX_DATAGRAM = 65535
BAD_DATAGRAMS_LOGGED = 5  # then only counted: a flood must not flood the log too
SESSIONS_FILE = "udp-sessions.json"
MAX_SESSIONS_FILE = 64 * 1024
DEFAULT_BUFFER = 32 * 1024 * 1024  # about 20,000 full-size datagrams: a second at the goal
BATCH = 256  # datagrams taken per wake-up before other tasks get a turn
SO_RXQ_OVFL = getattr(stdlib_socket, "SO_RXQ_OVFL", 40)
_ANCILLARY = stdlib_socket.CMSG_SPACE(4)


async def bind(
    host: str, port: int, buffer: int = DEFAULT_BUFFER
) -> tuple[stdlib_socket.socket, Address, int]:
    """A non-blocking UDP socket bound to ``host:port`` (port 0: any free one).

    Args:
        host, port: where to listen.
        buffer: the receive buffer to ask for, in bytes.

    Returns:
        The socket, where it is bound, and the receive buffer the kernel
        granted (``SO_RCVBUF`` as read back; Linux counts its overhead in it).

    Raises:
        UsageError: the address cannot be listened on (names ``--udp``).
    """
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=stdlib_socket.SOCK_DGRAM)
        family, kind, proto, _name, address = infos[0]
        sock = stdlib_socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            granted = set_receive_buffer(sock, buffer, "udp", log)
            sock.setsockopt(stdlib_socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise UsageError("--udp", f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock, sock.getsockname()[:2], granted


class UdpDelivery:
    """The reader and reporter tasks of one UDP socket."""

    def __init__(
        self,
        sock: stdlib_socket.socket,
        state: ReceiverState,
        report_interval: float,
        keys: list[SealKey],
    ) -> None:
        self.sock = sock
        self.state = state
        self.machine = DatagramReceiver(streams=state.accepted, report_interval=report_interval)
        self.machine.trackers = state.trackers  # one tracker per stream, shared by all
        self.opener = DatagramOpener(keys, Direction.SERVER_TO_AGENCY)
        self.routes: dict[pdu.StreamId, tuple[int, Address]] = {}  # key id, source
        self._sealers: dict[int, DatagramSealer] = {}
        self._known = trio.Event()  # set when a stream's reports become due
        self._reporting = False  # whether _known is set
        self._saved: dict | None = None
        self.refusals = Refusals(
            log, "udp: datagram refused", counts=state.counters.unauthenticated
        )
        self._restore()

    @property
    def sessions_file(self) -> Path:
        return self.state.out_dir / SESSIONS_FILE

    async def reader(self) -> None:
        """Open, check and store every datagram; drop and count anything else.

        Each wake-up takes what is queued, up to :data:`BATCH` datagrams,
        then lets the other tasks run: one wake-up per burst, not per datagram.
        """
        sock = self.sock
        recvmsg = sock.recvmsg
        counters = self.state.counters
        seen: list[tuple[int, int, bytes]] = []  # the last ancillary data read
        while True:
            await trio.lowlevel.wait_readable(sock)
            now = trio.current_time()
            batch: list[tuple[bytes, Address]] = []
            for _ in range(BATCH):
                try:
                    data, ancillary, _flags, source = recvmsg(MAX_DATAGRAM, _ANCILLARY)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # e.g. ICMP unreachable from an earlier report
                    log.debug("udp: receive: %s", exc)
                    continue
                if ancillary and ancillary != seen:  # once drops began, every datagram has it
                    seen = ancillary
                    counters.socket_drops = max(counters.socket_drops, _dropped(ancillary))
                batch.append((data, source[:2]))
            if batch:
                self.receive_all(batch, now)
            await trio.lowlevel.checkpoint()

    def receive(self, data: bytes, source: Address, now: float) -> None:
        """One datagram from ``source``: stored if authentic and new, else counted."""
        self.receive_all([(data, source)], now)

    def receive_all(self, datagrams: list[tuple[bytes, Address]], now: float) -> None:
        """A wake-up's datagrams, each with its source: the authentic and new stored, in order.

        Each is opened, checked and tracked in turn (a refused or malformed
        one is counted and dropped alone); what they bring is then stored
        in one call (``ReceiverState.on_events``), each file appended once.
        """
        open_datagram = self.opener.open
        receive = self.machine.receive_datagram
        routes = self.routes
        events: list[Event] = []
        for data, source in datagrams:
            try:
                opened = open_datagram(data)
            except SealRefused as exc:  # counted under its reason, shown by the view
                self.refusals.refuse(exc.reason.value, source[0])
                continue
            try:
                got = receive(opened.message, now)
            except ProtocolError as exc:
                counters = self.state.counters
                counters.bad_datagrams += 1
                if counters.bad_datagrams <= BAD_DATAGRAMS_LOGGED:
                    log.warning("udp: datagram from %s dropped: %s", source[0], exc)
                continue
            # The machine returns [GapDetected,] EnvelopeReceived, or one other event.
            last = got[-1]
            if last.__class__ is EnvelopeReceived:
                stream = last.envelope.stream
                route = routes.get(stream)  # _route() inline: per datagram, nearly always equal
                if route is None or route[1] != source or route[0] != opened.key_id:
                    routes[stream] = (opened.key_id, source)
            elif isinstance(last, CheckpointReceived):
                self._route(last.checkpoint.stream, opened.key_id, source)
            events += got
        if events:
            self.state.on_events(events, _raw_of, "udp", now)
        if not self._reporting and self.machine.next_deadline() is not None:
            self._reporting = True  # (not _known.is_set(): a call per datagram)
            self._known.set()

    def _route(self, stream: pdu.StreamId, key_id: int, source: Address) -> None:
        """Reports for ``stream`` go to where (and under the key) it last came from."""
        route = self.routes.get(stream)
        if route is None or route[1] != source or route[0] != key_id:
            self.routes[stream] = (key_id, source)

    async def reporter(self) -> None:
        """Each interval, one sealed receiver report per UDP stream, to where it comes from."""
        while True:
            deadline = self.machine.next_deadline()
            if deadline is None:  # no stream yet (a checkpoint or notice may come first)
                await self._known.wait()
                continue
            await trio.sleep_until(deadline)
            now = trio.current_time()
            if not self.machine.report_due(now):
                continue
            for report in self.machine.make_reports(now):
                stream = getattr(parse_datagram(report), "stream", None)
                route = self.routes.get(stream)  # type: ignore[arg-type]
                if route is None:
                    continue  # a stream that came by TLS or retrieval: no UDP sender
                key_id, source = route
                try:  # non-blocking: a full send buffer drops this report, not the run
                    self.sock.sendto(self._sealer(key_id).seal(report), source)
                except OSError as exc:  # e.g. ICMP unreachable from an earlier send
                    log.debug("udp: report to %s not sent: %s", source[0], exc)

    def _sealer(self, key_id: int) -> DatagramSealer:
        """This run's sending session under one key (made at the first report)."""
        if key_id not in self._sealers:
            key = self.opener.keys[key_id]
            start = time.time_ns() // 1000
            self._sealers[key_id] = DatagramSealer(key, Direction.AGENCY_TO_SERVER, start)
        return self._sealers[key_id]

    # Replay state across restarts --------------------------------------------

    def _restore(self) -> None:
        """Take back the opener's state of an earlier run; a damaged file is only a warning."""
        try:
            with self.sessions_file.open("rb") as handle:
                raw = handle.read(MAX_SESSIONS_FILE + 1)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("udp: %s unreadable (%s); replay state starts empty", SESSIONS_FILE, exc)
            return
        try:
            if len(raw) > MAX_SESSIONS_FILE:
                raise ValueError("too large")
            self.opener.restore(json.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("udp: %s damaged (%s); replay state starts empty", SESSIONS_FILE, exc)
            return
        self._saved = self.opener.saved()

    def save(self) -> None:
        """Write the opener's state if it changed (housekeeping calls it, and the end of a run)."""
        saved = self.opener.saved()
        if saved == self._saved:
            return
        self.state.out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.sessions_file, json.dumps(saved).encode("ascii"), 0o600)
        self._saved = saved


def _dropped(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The socket's drop counter from ``SO_RXQ_OVFL`` ancillary data (0 if absent)."""
    for level, kind, data in ancillary:
        if level == stdlib_socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(data) >= 4:
            return struct.unpack("=I", data[:4])[0]
    return 0


_raw_of = operator.attrgetter("raw")  # an envelope's or checkpoint's datagram, as received
