"""Live delivery over TLS/TCP to one agency endpoint: nothing lost, in order.

The server connects out (mutual TLS, see ``tls``), and one connection
carries every stream the endpoint receives. Per stream, a writer task is a
cursor into the log: it sends envelopes while the window has room and
sleeps on acknowledgements and appends; acknowledgements move the stream's
*named* cursor (``DATA_DIR/log/<handle>/<kind>/cursors.json``), so after a
disconnect or a restart delivery resumes from the first unacknowledged
record, and what an earlier connection (or process) may have carried is
marked ``redelivered``.

A refused certificate, a failed connect or a lost connection are retried
with a doubling delay (``reconnect_min`` .. ``reconnect_max``); a good
connection starts the delay over, so a brief cut resumes within
``reconnect_min``.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import random
import socket
import ssl
from collections.abc import Mapping

import trio

from mediation.log import Checkpoint, Cursor, LogRecord, RecordsUnavailable, StreamLog
from mediation.pdu import StreamId
from mediation.pki import RoleRefused
from mediation.protocol import AckReceived, StreamSender
from mediation.protocol.envelope import StreamEnvelopes
from mediation.server.config import DeliveryConfig
from mediation.server.link import Link, backoff_delays, close_quietly
from mediation.server.rounds import Rounds
from mediation.server.status import EndpointRef, StatusRow
from mediation.server.tls import (
    AgencyTrust,
    IdentityFiles,
    check_delivery_peer,
    delivery_context,
)
from mediation.warrants.model import Endpoint

log = logging.getLogger("mediation.server.delivery")


@dataclasses.dataclass
class _TlsStream:
    """One stream of the endpoint: its log, its named cursor, what was sent."""

    sid: StreamId
    log: StreamLog
    cursor: Cursor
    acked: int  # first unacknowledged
    sent_high: int  # one past the highest possibly sent (this process or an earlier one)


class TlsWorker:
    """Delivery to one TLS endpoint of one agency."""

    transport = "tls"

    def __init__(
        self,
        ref: EndpointRef,
        endpoint: Endpoint,
        config: DeliveryConfig,
        identity: IdentityFiles,
        trust: AgencyTrust,
    ) -> None:
        self.ref = ref
        self.endpoint = endpoint
        self.config = config
        self._identity = identity
        self._trust = trust
        self._streams: dict[StreamId, _TlsStream] = {}
        self._link: Link | None = None
        self._connection: trio.CancelScope | None = None
        self._changed = trio.Event()  # the set of streams changed: reconnect
        self._rounds = Rounds()  # woken by a log with more for the writer, or an ack's room
        self._want_room: set[StreamId] = set()  # streams whose full window stops the writer
        self._shared: Mapping[StreamId, StreamEnvelopes] = {}
        self.state = "connecting"
        self.last_error: str | None = None
        self.connections = 0
        self.refused = 0
        self._sends = 0  # sends of links that ended

    @property
    def writes(self) -> int:
        """Sends on the TLS stream so far, every connection (each one run of envelopes)."""
        link = self._link
        return self._sends + (link.sends if link is not None else 0)

    # The set of streams ------------------------------------------------------

    def set_streams(
        self,
        streams: dict[StreamId, StreamLog],
        envelopes: Mapping[StreamId, StreamEnvelopes] | None = None,
    ) -> None:
        """Deliver exactly these streams; a change restarts the connection.

        A StreamSender serves a fixed set of streams, so a warrant that
        joins or leaves costs one reconnect, which resumes from each
        stream's first unacknowledged record.

        Args:
            streams: the streams, with their logs.
            envelopes: per stream, its envelopes shared with its other
                endpoints (default: encoded here alone).
        """
        self._shared = envelopes or {}
        if set(streams) == set(self._streams):
            return
        for sid in list(self._streams):
            if sid not in streams:
                del self._streams[sid]
        for sid, stream in streams.items():
            if sid not in self._streams:
                self._streams[sid] = self._open_stream(sid, stream)
        if self._connection is not None:
            self._connection.cancel()
        self._changed.set()

    def _open_stream(self, sid: StreamId, stream: StreamLog) -> _TlsStream:
        cursor = stream.named_cursor(
            self.ref.cursor_name, default_start=stream.first_seq, checkpoints=True
        )
        start = max(cursor.position, stream.first_seq)
        # Resumed from a saved position: whatever follows it in the log may
        # have gone out from an earlier process, so it is marked redelivered.
        sent_before = stream.next_seq if cursor.acked is not None else start
        return _TlsStream(sid, stream, cursor, start, max(start, sent_before))

    # Connecting ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, deliver, reconnect; until cancelled."""
        task_status.started()
        delays = backoff_delays(self.config.reconnect_min, self.config.reconnect_max)
        while True:
            if not self._streams:
                self.state = "idle"
                await self._changed.wait()
            self._changed = trio.Event()
            connected = await self._connect_once()
            if self._changed.is_set():
                continue  # the streams changed: reconnect at once
            delay = delays(connected) * random.uniform(0.5, 1.0)  # spread the retries
            with trio.move_on_after(delay):
                await self._changed.wait()

    async def _connect_once(self) -> bool:
        """One connection attempt and, if it succeeds, its life. True if it connected."""
        self.state = "connecting"
        connected = False
        with trio.CancelScope() as self._connection:
            stream = await self._handshake()
            if stream is not None:
                connected = True
                self.connections += 1
                try:
                    self._lost(await self._deliver(stream))
                except Exception as exc:  # a bug here must not end delivery for good
                    log.exception("%s: internal error", self.ref.label)
                    self._lost(f"internal error ({type(exc).__name__})")
                finally:
                    self._link = None
                    await close_quietly(stream)
        self._connection = None
        return connected

    async def _handshake(self) -> trio.SSLStream | None:
        """A verified TLS connection to the endpoint, or None (state and error set)."""
        context = delivery_context(self._identity, self.endpoint)
        try:
            with trio.fail_after(self.config.connect_timeout):
                tcp = await trio.open_tcp_stream(self.endpoint.host, self.endpoint.port)
                stream = trio.SSLStream(tcp, context)
                try:
                    await stream.do_handshake()
                except BaseException:
                    await close_quietly(stream)
                    raise
        except trio.TooSlowError:
            return self._failed("down", "connect timeout")
        except OSError as exc:  # its text names the address: log the kind only
            return self._failed("down", _errno_name(exc))
        except trio.BrokenResourceError as exc:
            if isinstance(exc.__cause__, ssl.SSLCertVerificationError):
                return self._refuse()
            return self._failed("down", "TLS handshake failed")
        peer = stream.getpeercert(binary_form=True)
        try:
            check_delivery_peer(self.endpoint, peer, self._identity)
        except RoleRefused as exc:
            await close_quietly(stream)
            return self._refuse(f"certificate refused: {exc}")
        if self.endpoint.fingerprint and peer is not None:
            self._trust.learn(peer)  # the same certificate may fetch by retrieval
        return stream

    def _failed(self, state: str, error: str) -> None:
        if self.last_error != error:  # once per kind of failure, not once per retry
            log.warning("%s: cannot connect (%s); retrying", self.ref.label, error)
        self.state, self.last_error = state, error
        return None

    def _refuse(self, error: str = "certificate refused") -> None:
        """The agency's certificate is not the registered one: nothing is sent."""
        self.refused += 1
        if self.last_error != error:
            log.warning("%s: %s", self.ref.label, error)
        self.state, self.last_error = "refused", error
        return None

    def _lost(self, reason: str) -> None:
        self.state, self.last_error = "connecting", reason
        log.info("%s: disconnected (%s)", self.ref.label, reason)

    # Delivering ----------------------------------------------------------------

    async def _deliver(self, stream: trio.SSLStream) -> str:
        streams = dict(self._streams)
        sender = StreamSender(
            {sid: s.acked for sid, s in streams.items()},
            sent_before={sid: s.sent_high for sid, s in streams.items()},
            window=self.config.window,
            keepalive_interval=self.config.keepalive_interval,
            keepalive_timeout=self.config.keepalive_timeout,
            envelopes={sid: self._shared[sid] for sid in streams if sid in self._shared},
        )
        sender.resume(trio.current_time())
        link = Link(
            stream,
            sender,
            {sid: s.log for sid, s in streams.items()},
            self.ref.label,
            batch=self.config.batch,
            on_ack=self._acked,
            linger=self.config.write_linger,
        )
        self._link = link
        self.state, self.last_error = "connected", None
        log.info("%s: connected", self.ref.label)
        states = list(streams.values())

        async def writer(link: Link) -> None:
            await self._write_streams(link, states)

        shared = [self._shared[sid] for sid in streams if sid in self._shared]
        for envelopes in shared:  # while connected, this endpoint takes the stream's envelopes
            envelopes.join()
        try:
            return await link.run(writer)
        finally:
            self._sends += link.sends
            self._link = None
            for envelopes in shared:
                envelopes.leave()

    def _acked(self, event: AckReceived) -> None:
        if event.stream in self._want_room:  # the writer waits for this window
            self._want_room.discard(event.stream)
            self._rounds.wake()
        state = self._streams.get(event.stream)
        if state is None:
            return
        state.acked = event.next_expected
        state.sent_high = max(state.sent_high, event.next_expected)
        # The log refuses an ack beyond what is durable (a notice delivered
        # from memory while storage was down); the next ack catches up.
        state.cursor.ack(min(event.next_expected, state.log.durable_seq + 1))

    async def _write_streams(self, link: Link, states: list[_TlsStream]) -> None:
        """Queue every stream's records from the log on the link while its window has room.

        One task for all the endpoint's streams, woken by their logs
        (``StreamLog.listen``) and by acks: a commit of several streams is
        one turn of the loop, not one per stream. A full window waits
        until a quarter of it is free (or everything is acknowledged), not
        for every ack: each read then takes many records instead of the
        few one ack freed. The link's flusher sends what was queued in one
        write, at least ``write_linger`` after its last (see ``Link``), so
        busy traffic goes out several commits and both streams per TLS
        record run, and a commit at light load goes in the next loop turn;
        a catch-up reads the next batch while the last one is being sent.
        """
        unlisten = [state.log.listen(self._rounds.wake) for state in states]
        for state in states:
            state.cursor.seek(link.sender.next_sequence(state.sid))
        live = list(states)  # not stopped by retention

        async def one_round() -> bool:
            sent = False
            for state in list(live):
                wrote = await self._write_ready(link, state)
                if wrote is None:
                    live.remove(state)
                sent = sent or bool(wrote)
            if sent:  # the whole round is queued: send it here, not from a woken flusher
                await link.flush()
            return sent and Cursor.any_behind(state.cursor for state in live)

        try:
            await self._rounds.run(one_round)
        finally:
            for stop in unlisten:
                stop()

    async def _write_ready(self, link: Link, state: _TlsStream) -> bool | None:
        """Queue what the stream's log holds for it now, if the window has room.

        Returns:
            True: queued some; False: nothing now; None: the stream cannot
            go on (its unacknowledged records were removed by retention).
        """
        sender, sid, cursor = link.sender, state.sid, state.cursor
        room = sender.window_room(sid)
        if room < min(max(1, sender.window // 4), self.config.batch) and room < sender.window:
            self._want_room.add(sid)  # its next ack wakes the writer
            return False
        if cursor.position != sender.next_sequence(sid):
            cursor.seek(sender.next_sequence(sid))  # an ack moved us on
        limit = min(room, self.config.batch)
        try:
            records = cursor.read_nowait(limit)
            if records is None:  # behind the log's memory: from disk (waits)
                records = await cursor.read(limit)
        except RecordsUnavailable:
            # The agency's position is past retention: nothing can bring it back.
            self.last_error = "unacknowledged records removed by retention"
            log.error("%s: %s for %s", self.ref.label, self.last_error, sid)
            return None
        if not records:
            return False
        data = self._envelopes(sender, sid, records)
        state.sent_high = max(state.sent_high, sender.next_sequence(sid))
        await link.write(data, flush_after=True)  # the round's end flushes
        return True

    @staticmethod
    def _envelopes(sender: StreamSender, sid: StreamId, items: list) -> list[bytes]:
        """The messages of a batch: runs of records as envelopes, checkpoints between.

        The stream's state is looked up once per run, not once per record;
        the link joins the messages once, when it sends them.
        """
        out: list[bytes] = []
        start = 0
        for i, item in enumerate(items):
            if item.__class__ is Checkpoint:
                out += sender.send_run(sid, items[start:i])
                # After the last record it covers; outside the window (not acknowledged).
                if item.last_seq < sender.next_sequence(sid):
                    out.append(sender.checkpoint(item.to_pdu()))
                start = i + 1
        out += sender.send_run(sid, items[start:])
        return out

    def deliver_from_memory(self, sid: StreamId, record: LogRecord) -> None:
        """A held notice: send it now if it is next in the stream (else the log brings it).

        A stream connection must stay in order: an endpoint that has not
        had everything before the notice gets it from the log, in order,
        once storage returns.
        """
        link = self._link
        if link is None or sid not in link.sender.streams:
            return
        sender = link.sender
        if sender.next_sequence(sid) != record.seq or sender.window_room(sid) <= 0:
            return
        data = sender.send(sid, record)
        state = self._streams[sid]
        state.sent_high = max(state.sent_high, sender.next_sequence(sid))
        link.write_soon(data)

    # Status ------------------------------------------------------------------

    def rows(self) -> list[StatusRow]:
        out = []
        link = self._link
        for sid, state in self._streams.items():
            sent = link.sender.next_sequence(sid) if link is not None else state.acked
            appended = state.log.next_seq
            out.append(
                StatusRow(
                    handle=sid.warrant_handle,
                    stream=sid.kind.value,
                    endpoint=self.ref,
                    appended=appended,
                    delivered=max(sent, state.acked),
                    acknowledged=state.acked,
                    lost=None,
                    backlog=max(0, appended - state.acked),
                    state=self.state,
                    last_error=self.last_error,
                )
            )
        return out


def _errno_name(exc: OSError) -> str:
    """``ECONNREFUSED`` and the like: what failed, never the address in the text."""
    found: list[OSError] = [exc]
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):  # trio's "all attempts to connect failed"
        found += [e for e in cause.exceptions if isinstance(e, OSError)]
    for error in reversed(found):
        if isinstance(error, socket.gaierror):
            return "name not resolved"
        if error.errno in errno.errorcode:
            return errno.errorcode[error.errno]
    return type(exc).__name__
