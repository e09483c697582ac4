"""Real-time delivery over UDP to one agency endpoint: sent as stored, loss counted.

One UDP socket per endpoint, connected to its address: envelopes go out
from it, and the agency's receiver reports come back to it (the agency
answers the datagrams' source address; a connected socket takes datagrams
from that address only). Every datagram is sealed under the endpoint's key
(``mediation/protocol/sealed.py``): one sending session per worker run,
one opener for the reports. A report that does not open is counted by
reason and dropped; it never touches the loss figure. An endpoint without
a key (a registry older than sealing) gets nothing, and says so.

Per stream, a cursor into the log starts at the stream's end when
delivery starts (UDP is real time; the history is what retrieval is for);
each record goes as one datagram through the stream's
:class:`DatagramSender`. One task reads every stream's cursor, woken by
the streams' logs (``StreamLog.listen``) when records become durable: a
commit of several streams costs one turn of the loop, not one per stream.
Reports are routed to their stream's sender, which turns them into the
loss figure; an endpoint with no report for ``silent_after`` intervals is
*silent*.

The hot loop does one trio checkpoint per batch of records, not per
datagram: the socket is non-blocking and only a full send buffer waits.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import socket
import time
from collections.abc import Callable, Mapping

import trio

from mediation import pdu
from mediation.log import Checkpoint, Cursor, LogRecord, RecordsUnavailable, StreamLog
from mediation.pdu import StreamId
from mediation.protocol import (
    DatagramSender,
    EndpointResponsive,
    EndpointSilent,
    ProtocolError,
    ReportReceived,
    parse_datagram,
)
from mediation.protocol.envelope import StreamEnvelopes, record_envelope
from mediation.protocol.scte import ScteFramer
from mediation.protocol.sealed import (
    DatagramOpener,
    DatagramSealer,
    Direction,
    SealKey,
    SealRefused,
)
from mediation.refusals import Refusals
from mediation.server.config import DeliveryConfig
from mediation.server.link import backoff_delays
from mediation.server.rounds import Rounds
from mediation.server.status import EndpointRef, StatusRow
from mediation.warrants.model import Endpoint

log = logging.getLogger("mediation.server.delivery")
# Bursts of a batch of full-size envelopes should not wait on the socket.
SEND_BUFFER = 4 * 1024 * 1024


@dataclasses.dataclass
class _UdpStream:
    sid: StreamId
    log: StreamLog
    sender: DatagramSender
    start: int
    oversize: int = 0
    cursor: Cursor | None = None  # while delivered: from ``start`` on
    unlisten: Callable[[], None] | None = None  # while delivered: stop the log's wake-ups

    def close(self) -> None:
        """No longer delivered: stop listening, leave the shared envelopes."""
        if self.unlisten is not None:
            self.unlisten()
            self.unlisten = None
            self.cursor = None
            self.sender.envelopes.leave()


class UdpWorker:
    """Delivery to one UDP endpoint of one agency."""

    transport = "udp"

    def __init__(self, ref: EndpointRef, endpoint: Endpoint, config: DeliveryConfig) -> None:
        self.ref = ref
        self.endpoint = endpoint
        self.config = config
        self._streams: dict[StreamId, _UdpStream] = {}
        self._sock: socket.socket | None = None
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self._rounds = Rounds()  # woken when a stream's log has something new for the reader
        self.state = "waiting"
        self.last_error: str | None = None
        self.send_errors = 0
        self.bad_datagrams = 0  # authentic, but not a valid report for a stream here
        self._key = (
            None
            if endpoint.udp_key is None or endpoint.udp_key_id is None
            else SealKey(endpoint.udp_key_id, endpoint.udp_key)
        )
        self._sealer: DatagramSealer | None = None
        # --format scte: CC as SCTE datagrams instead of sealed envelopes (protocol/scte.py).
        self._scte = ScteFramer(self._key.key) if self._key and endpoint.udp_format else None
        self.opener = DatagramOpener(
            [] if self._key is None else [self._key], Direction.AGENCY_TO_SERVER
        )
        # Log lines only: the opener's own counts are the ones status shows.
        self._refused_lines = Refusals(log, f"{ref.label}: report refused", clock=trio.current_time)

    def set_streams(
        self,
        streams: dict[StreamId, StreamLog],
        start_at: dict[StreamId, int] | None = None,
        envelopes: Mapping[StreamId, StreamEnvelopes] | None = None,
    ) -> None:
        """Deliver exactly these streams.

        Args:
            streams: the streams, with their logs.
            start_at: where a new stream starts; default its current end
                (real time: the history is what retrieval is for).
            envelopes: per stream, its envelopes shared with its other
                endpoints (default: encoded here alone).
        """
        for sid in list(self._streams):
            if sid not in streams:
                self._streams.pop(sid).close()
        for sid, stream in streams.items():
            if sid not in self._streams:
                sender = DatagramSender(
                    sid,
                    report_interval=self.config.report_interval,
                    silent_after=self.config.silent_after,
                    envelopes=(envelopes or {}).get(sid),
                )
                # The position is taken now, not when the task first runs: a
                # notice appended right after this call must not be skipped.
                start = (start_at or {}).get(sid, stream.next_seq)
                self._streams[sid] = _UdpStream(sid, stream, sender, start)
                self._rounds.wake()  # the reader opens it

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the socket, deliver every stream, read reports; until cancelled."""
        task_status.started()
        if self._key is None:
            await self._refuse_without_key()
            return
        # A new session per run: a new session key, so counters may start again.
        self._sealer = DatagramSealer(self._key, Direction.SERVER_TO_AGENCY, time.time_ns() // 1000)
        self._sock = await self._open()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._deliver)
                nursery.start_soon(self._reports)
                if self._scte is None:  # an SCTE receiver sends no reports
                    nursery.start_soon(self._silence)
        finally:
            self._nursery = None
            self._sock.close()

    async def _refuse_without_key(self) -> None:
        """Deliver nothing, unsealed, ever: say how to give the endpoint its key."""
        self.state = "no key"
        self.last_error = (
            f"no UDP key; run `mediate agency udp-key {self.ref.agency} --out FILE` "
            "and give the file to the agency"
        )
        log.warning("%s: not delivering: %s", self.ref.label, self.last_error)
        await trio.sleep_forever()

    async def _open(self) -> socket.socket:
        """A socket connected to the endpoint; retries while the name does not resolve."""
        delays = backoff_delays(self.config.reconnect_min, self.config.reconnect_max)
        while True:
            try:
                infos = await trio.socket.getaddrinfo(
                    self.endpoint.host, self.endpoint.port, type=socket.SOCK_DGRAM
                )
                family, kind, proto, _name, address = infos[0]
                sock = socket.socket(family, kind, proto)
                sock.setblocking(False)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
                sock.connect(address)
                return sock
            except OSError as exc:
                self._error(exc)
            await trio.sleep(delays(False))

    async def _deliver(self) -> None:
        """Send every stream's new records, in one task; sleep until a log has more."""

        async def one_round() -> bool:
            sent = False
            for state in list(self._streams.values()):
                if state.cursor is None:
                    self._open_stream(state)
                sent |= await self._deliver_ready(state)
            return sent and Cursor.any_behind(state.cursor for state in self._streams.values())

        try:
            await self._rounds.run(one_round)
        finally:
            for state in self._streams.values():
                state.close()

    def _open_stream(self, state: _UdpStream) -> None:
        state.sender.envelopes.join()  # shared with the stream's other endpoints
        # Checkpoints too: the agency can check what it holds against them.
        state.cursor = state.log.cursor(state.start, checkpoints=True)
        state.unlisten = state.log.listen(self._rounds.wake)

    async def _deliver_ready(self, state: _UdpStream) -> bool:
        """Send what the stream's log holds for it now; False: nothing yet."""
        cursor = state.cursor
        assert cursor is not None
        try:
            records = cursor.read_nowait(self.config.batch)
            if records is None:  # behind the log's memory: from disk (waits)
                records = await cursor.read(self.config.batch)
        except RecordsUnavailable as exc:  # retention overtook us: go on from there
            cursor.seek(exc.first_available)
            return True
        if not records or state.cursor is not cursor:  # none, or the stream was dropped
            return False
        first = state.sender.first_sent is None
        await self._send_batch(state, records)
        if first:
            self._wake.set()  # the silence clock starts with the first envelope
        return True

    async def _send_batch(self, state: _UdpStream, records: list) -> None:
        sock, sealer = self._sock, self._sealer
        assert sock is not None and sealer is not None
        if self._scte is not None:
            await self._send_scte(state, records)
            return
        # Runs of records between checkpoints: each run enveloped and sealed
        # in one call, so per datagram the loop is the seal and the send.
        sender, now, start = state.sender, trio.current_time(), 0
        for i, item in enumerate(records):
            if item.__class__ is Checkpoint:
                await self._send_run(state, records[start:i], now)
                await self._send(sock, sealer.seal(sender.checkpoint(item.to_pdu())))
                start = i + 1
        await self._send_run(state, records[start:] if start else records, now)

    async def _send_run(self, state: _UdpStream, records: list, now: float) -> None:
        """Envelope, seal and send a run of records (no checkpoints)."""
        if not records:
            return
        messages, skipped = state.sender.envelope_run(records, now)  # also the loss count
        for record in skipped:
            self._oversize(state, record)
        sock = self._sock
        assert sock is not None and self._sealer is not None
        send = sock.send
        for data in self._sealer.seal_run(messages):
            try:
                send(data)
            except BlockingIOError:
                await self._send(sock, data)
            except OSError as exc:  # e.g. ECONNREFUSED from an earlier datagram
                self._error(exc)

    async def _send_scte(self, state: _UdpStream, records: list) -> None:
        """CC as SCTE datagrams (checkpoints are not sent in this format)."""
        sock, scte, now = self._sock, self._scte, trio.current_time()
        assert sock is not None and scte is not None
        for record in records:
            if record.__class__ is Checkpoint:
                continue
            _, skipped = state.sender.envelope_run([record], now)  # the sender's count
            try:
                if skipped:
                    raise ValueError
                data = scte(state.sid, record)
            except ValueError:
                self._oversize(state, record)
                continue
            await self._send(sock, data)

    async def _send(self, sock: socket.socket, data: bytes) -> None:
        """One datagram; waits only while the socket's buffer is full."""
        while True:
            try:
                sock.send(data)
                return
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
            except OSError as exc:  # e.g. ECONNREFUSED from an earlier datagram
                self._error(exc)
                return

    def _oversize(self, state: _UdpStream, record: LogRecord) -> None:
        """A record whose envelope does not fit a datagram: skipped, fetch it by retrieval.

        The sender has passed it already (its run goes on after it).
        """
        state.oversize += 1
        log.warning("%s: %s %d too large for UDP", self.ref.label, state.sid, record.seq)

    def _error(self, exc: OSError) -> None:
        self.send_errors += 1
        name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        if name != self.last_error:
            log.warning("%s: %s", self.ref.label, name)
        self.last_error = name

    async def _reports(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            await trio.lowlevel.wait_readable(sock)
            while True:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    break
                except OSError as exc:  # ICMP unreachable, reported on the next call
                    self._error(exc)
                    continue
                self._report(data, trio.current_time())

    def _report(self, data: bytes, now: float) -> None:
        try:
            opened = self.opener.open(data)
        except SealRefused as exc:  # counted by the opener; believed in nothing
            self._refused_lines.refuse(exc.reason.value)
            return
        try:
            message = parse_datagram(opened.message)
            if isinstance(message, pdu.UnknownDeliveryMessage):
                return
            if not isinstance(message, pdu.ReceiverReport):
                raise ProtocolError(f"unexpected {type(message).__name__}")
            state = self._streams.get(message.stream)
            if state is None:
                raise ProtocolError(f"report for {message.stream}, not delivered here")
            events = state.sender.receive_report(message, now)
        except ProtocolError as exc:
            self.bad_datagrams += 1
            log.debug("%s: datagram dropped: %s", self.ref.label, exc)
            return
        for event in events:
            if isinstance(event, EndpointResponsive):
                log.info("%s: reports again for %s", self.ref.label, event.stream)
            elif isinstance(event, ReportReceived):
                self.state = "receiving"
        self._wake.set()

    async def _silence(self) -> None:
        while True:
            deadlines = [
                d for s in self._streams.values() if (d := s.sender.next_deadline()) is not None
            ]
            with trio.move_on_at(min(deadlines, default=math.inf)):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            for state in list(self._streams.values()):
                for event in state.sender.tick(now):
                    if isinstance(event, EndpointSilent):
                        log.warning(
                            "%s: silent (no receiver report for %s)", self.ref.label, event.stream
                        )
            if any(s.sender.silent for s in self._streams.values()):
                self.state = "silent"

    def deliver_from_memory(self, sid: StreamId, record: LogRecord) -> None:
        """A held notice, sent at once (out of order is normal on UDP).

        It bypasses the stream's sender: its loss figure counts the copy
        that comes from the log later, when storage returns.
        """
        if sid not in self._streams or self._sock is None or self._sealer is None:
            return
        try:
            self._sock.send(self._sealer.seal(record_envelope(sid, record, redelivered=False)))
        except OSError as exc:
            self._error(exc)

    def rows(self) -> list[StatusRow]:
        out = []
        for sid, state in self._streams.items():
            sender = state.sender
            delivered = state.start if sender.next_sequence is None else sender.next_sequence
            appended = state.log.next_seq
            loss = sender.loss
            out.append(
                StatusRow(
                    handle=sid.warrant_handle,
                    stream=sid.kind.value,
                    endpoint=self.ref,
                    appended=appended,
                    delivered=delivered,
                    acknowledged=None,
                    lost=loss.lost,
                    backlog=max(0, appended - delivered),
                    state="silent" if sender.silent else self.state,
                    last_error=self.last_error,
                    exact=loss.exact,
                )
            )
        return out

    def refusals(self) -> dict[str, int]:
        """Datagrams from the endpoint's address that were dropped, by reason."""
        out = {reason.value: n for reason, n in self.opener.refused.items() if n}
        if self.bad_datagrams:
            out["not a report for a stream here"] = self.bad_datagrams
        return out

    def loss(self, sid: StreamId) -> object:
        """The stream's :class:`LossCount` (tests and the status op)."""
        return self._streams[sid].sender.loss
