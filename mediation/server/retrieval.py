"""Retrieval: an agency connects over TLS and fetches the ranges it missed.

The server listens (``[retrieval] listen``, default ``127.0.0.1:37001``)
with its own identity and *requires* a client certificate: the agency
presents its receiver's certificate, which must chain to a CA registered
for one of the agency's TLS endpoints, or be pinned by fingerprint (see
``tls.AgencyTrust``). The certificate must be an agency's (never a tap's
or the server's own) and is mapped to exactly one agency; a certificate
that maps to none or to several gets nothing. Refused connections are
counted per reason (``mediate status``) and logged at most once per reason
a minute (:class:`mediation.refusals.Refusals`).

The connection is a stream connection that only replays: a
:class:`StreamSender` over that agency's streams and nothing else, so a
``replayRequest`` for any other warrant is a protocol error and the
connection is closed without a byte of the other warrant (logged by
handle). Each request is answered from the log by cursor seek, every
envelope marked ``redelivered``, then a ``replayResult`` naming the
ranges that can never be sent (past retention, lost) and those not sent
now (past the stream's end, or over the ``[retrieval]`` limits per request
and per connection): the agency asks for those again later.

One connection's failure, whatever it is, costs that connection: it is
logged (rate-limited), counted and closed; the listener carries on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from mediation.log import StreamLog
from mediation.pdu import StreamId
from mediation.pki import RoleRefused
from mediation.protocol import RetrievalLimits, StreamSender
from mediation.refusals import BUSY, ConnectionLimit, Refusals
from mediation.server.config import DeliveryConfig, RetrievalConfig
from mediation.server.link import Link, close_quietly
from mediation.server.tls import AgencyTrust

log = logging.getLogger("mediation.server.retrieval")
HANDSHAKE_TIMEOUT = 10.0
StreamsOf = Callable[[str], dict[StreamId, StreamLog]]


class RetrievalService:
    """The TLS listener for replay requests."""

    def __init__(
        self,
        address: tuple[str, int],
        trust: AgencyTrust,
        streams_of: StreamsOf,
        config: DeliveryConfig,
        limits: RetrievalConfig | None = None,
    ) -> None:
        """Args:
        address: where to listen.
        trust: the agencies' certificates.
        streams_of: an agency's open streams.
        config: keepalive timers and the log batch size.
        limits: the ``[retrieval]`` section: records and octets per
            request and per connection (default: its defaults).
        """
        self._address = address
        self._trust = trust
        self._streams_of = streams_of
        self.config = config
        section = limits or RetrievalConfig()
        self.limits = RetrievalLimits(
            request_records=section.request_records,
            request_bytes=section.request_bytes,
            connection_records=section.connection_records,
            connection_bytes=section.connection_bytes,
        )
        self.listening: tuple[str, int] | None = None
        self.error: str | None = None
        self.connections = 0
        self.refusals = Refusals(log, "retrieval: client refused", clock=trio.current_time)
        self.slots = ConnectionLimit()
        self.replays = 0
        self.limited = 0
        """Requests answered in part because a limit was reached (the rest: not yet)."""
        self.failed = 0
        """Connections ended by an unexpected error (logged, never the server's end)."""
        # Failures are logged as refusals are: first per exception type, then a summary.
        self._failures = Refusals(
            log,
            "retrieval: a connection failed; the listener carries on",
            clock=trio.current_time,
            level=logging.ERROR,
        )

    @property
    def refused(self) -> int:
        return self.refusals.total

    def status(self) -> dict[str, object]:
        """The listener's part of the ``status`` answer."""
        return {
            "listening": f"{self.listening[0]}:{self.listening[1]}" if self.listening else None,
            "error": self.error,
            "connections": self.connections,
            "refused": self.refused,
            "refused_by_reason": dict(sorted(self.refusals.counts.items())),
            "limited": self.limited,
            "failed": self.failed,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled.

        A listen address that cannot be bound is logged and reported in the
        status, and the server carries on without retrieval: live delivery
        does not depend on it.
        """
        host, port = self._address
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            self.error = exc.strerror or type(exc).__name__
            log.error(
                "retrieval: cannot listen on %s:%d: %s; retrieval is off", host, port, self.error
            )
            task_status.started()
            return
        sockname = listeners[0].socket.getsockname()
        self.listening = (sockname[0], sockname[1])
        log.info(
            "retrieval: listening on %s:%d (TLS, client certificate required)", *self.listening
        )
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._summaries)
            await trio.serve_listeners(self._serve, listeners)

    async def _summaries(self) -> None:
        """Log the refusal summaries of each minute that had more than one."""
        while True:
            await trio.sleep(1.0)
            self.refusals.tick()
            self._failures.tick()

    async def _serve(self, tcp: trio.SocketStream) -> None:
        if not self.slots.try_enter():  # before TLS: a refused connection costs no buffers
            self.refusals.refuse(BUSY, _peer_of(tcp))
            await trio.aclose_forcefully(tcp)
            return
        stream = trio.SSLStream(tcp, self._trust.context(), server_side=True)
        try:
            agency = await self._identify(stream)
            if agency is not None:
                await self._replay_for(agency, stream, _peer(stream))
        except Exception as exc:  # one connection's bug must not end the server
            self._failed(exc)
        finally:
            self.slots.leave()
            await close_quietly(stream)

    def _failed(self, exc: BaseException) -> None:
        """Count one connection that failed unexpectedly (called while handling ``exc``)."""
        self.failed += 1
        self._failures.refuse(type(exc).__name__, exc_info=True)

    async def _identify(self, stream: trio.SSLStream) -> str | None:
        """The agency whose certificate the client presented, or None (refused)."""
        peer = _peer(stream)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await stream.do_handshake()
        except trio.TooSlowError:
            self.refusals.refuse("no handshake in time", peer)
            return None
        except trio.BrokenResourceError:
            self.refusals.refuse("no acceptable certificate", peer)
            return None
        try:
            return self._trust.identify(stream.getpeercert(binary_form=True))
        except RoleRefused as exc:
            self.refusals.refuse(str(exc), peer)
            return None

    async def _replay_for(self, agency: str, stream: trio.SSLStream, peer: str) -> None:
        streams = self._streams_of(agency)
        self.connections += 1
        # Positions at the end of what is stored: nothing is sent live here,
        # and an agency's acks up to there are accepted (and ignored).
        positions = {sid: s.durable_seq + 1 for sid, s in streams.items()}
        sender = StreamSender(
            positions,
            sent_before=positions,
            keepalive_interval=self.config.keepalive_interval,
            keepalive_timeout=self.config.keepalive_timeout,
            retrieval_limits=self.limits,
        )
        sender.resume(trio.current_time())
        label = f"retrieval for agency {agency}"
        log.info("%s: connected (%d streams)", label, len(streams))
        link = Link(stream, sender, streams, label, batch=self.config.batch)
        try:
            reason = await link.run()
        finally:
            self.replays += link.replays
            self.limited += sender.retrieval.limited
        if reason.startswith("protocol error"):
            # An agency's certificate, then a message the server refuses (another
            # agency's stream, an oversize frame): a refusal like any other.
            self.refusals.refuse("protocol error", peer)
        log.info(
            "%s: %d requests answered (%d records, %d limited); ended (%s)",
            label,
            link.replays,
            sender.retrieval.records,
            sender.retrieval.limited,
            reason,
        )


def _peer(stream: trio.SSLStream) -> str:
    return _peer_of(stream.transport_stream)


def _peer_of(tcp: trio.SocketStream) -> str:
    try:
        host, port = tcp.socket.getpeername()[:2]
    except (OSError, AttributeError):
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
