"""``mediate receive`` as one trio nursery: listeners, retrieval, housekeeping.

Tasks, all children of :meth:`Receiver.run`:

- the UDP listener feeds a :class:`DatagramReceiver` and stores envelopes;
  its reporter sends each stream's receiver report every interval to the
  address that stream's envelopes come from;
- the TLS acceptor takes the mediation server's connections (mutual TLS)
  and drives a :class:`StreamReceiver` on each;
- the :class:`Retriever` fetches the gaps from the server's log
  (``--retrieve-from``), or :func:`fetch` asks for explicit ranges once;
- housekeeping flushes the files, fsyncs them, and rewrites each
  ``gaps.json``; the view redraws; the stop conditions end the run.

Whatever ends the run (signal, ``--duration``, ``--until-idle``, a fetch
done), the files are closed, hashed and the gap reports written.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket as stdlib_socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from mediation import heap
from mediation.errors import UsageError
from mediation.lea import udp
from mediation.lea.driver import StreamDriver
from mediation.lea.files import SYNC_OCTETS
from mediation.lea.retrieve import ConnectError, FetchRange, Retriever, fetch
from mediation.lea.scte import ScteDelivery
from mediation.lea.state import ReceiverState
from mediation.lea.tls import PeerRefused, ServerCheck, failure_reason
from mediation.lea.udp import DEFAULT_BUFFER as DEFAULT_UDP_BUFFER
from mediation.lea.udp import UdpDelivery
from mediation.pdu import schema
from mediation.pki import CLIENT_AUTH
from mediation.protocol import StreamReceiver
from mediation.protocol.datagram import REPORT_INTERVAL
from mediation.protocol.sealed import SealKey
from mediation.refusals import BUSY, ConnectionLimit, Refusals

log = logging.getLogger("mediation.lea")

Address = tuple[str, int]


@dataclasses.dataclass(frozen=True)
class ReceiverConfig:
    """Everything one run needs; the CLI builds it from the options."""

    out_dir: Path
    udp: Address | None = None
    udp_keys: tuple[SealKey, ...] = ()  # every UDP datagram is sealed under one of these
    udp_buffer: int = DEFAULT_UDP_BUFFER  # receive buffer to ask for, bytes
    udp_format: str = "envelope"  # or "scte": CC as SCTE datagrams (needs handles)
    tls: Address | None = None
    tls_context: ssl.SSLContext | None = None  # live listener (TLS server)
    retrieve_from: Address | None = None
    retrieval_context: ssl.SSLContext | None = None  # retrieval (TLS client)
    server_check: ServerCheck | None = None  # who the server is (CA, pin, role)
    handles: frozenset[str] | None = None
    fetch: tuple[FetchRange, ...] = ()
    duration: float | None = None
    until_idle: float | None = None
    sort: bool = False
    report_interval: float = REPORT_INTERVAL
    retrieval_interval: float = 1.0
    settle: float = 2.0
    flush_interval: float = 0.5
    sync_interval: float = 5.0  # fsync at least this often while written to
    sync_octets: int = SYNC_OCTETS  # and at the flush after this much was written
    gaps_interval: float = 10.0
    handshake_timeout: float = 10.0


@dataclasses.dataclass(frozen=True)
class Bound:
    """The addresses actually listened on (port 0 picks a free one)."""

    udp: Address | None = None
    tls: Address | None = None


@dataclasses.dataclass(frozen=True)
class RunResult:
    """How a run ended, and the SHA-256 of every file it closed, per handle.

    ``failed`` says why the run could not do its job (a fetch that could
    not connect); None when it did.
    """

    reason: str
    digests: dict[str, dict[str, str]]
    failed: str | None = None


class Receiver:
    """One run of the agency's receiver over one output directory."""

    def __init__(
        self,
        config: ReceiverConfig,
        state: ReceiverState | None = None,
        *,
        settle_heap: bool = False,
    ) -> None:
        """``settle_heap``: the process is the receiver's own (``mediate receive``): once
        listening, freeze what start-up built and collect less often (mediation/heap.py)."""
        self.config = config
        self._settle_heap = settle_heap
        self.state = state or ReceiverState(config.out_dir, handles=config.handles)
        self.retriever: Retriever | None = None
        self.started_at: float | None = None
        self._scope = trio.CancelScope()
        self._reason = "stopped"
        self.failed: str | None = None  # why the run could not do its job
        self.refusals = Refusals(
            log, "tls: refused", clock=trio.current_time, counts=self.state.counters.refused_reasons
        )
        self.udp: UdpDelivery | None = None
        self.scte: ScteDelivery | None = None
        self.slots = ConnectionLimit()

    def stop(self, reason: str = "stopped") -> None:
        """End the run (from any task); the files are closed on the way out."""
        self._reason = reason
        self._scope.cancel()

    async def run(
        self,
        *,
        extra: tuple[Callable[[Receiver], Awaitable[None]], ...] = (),
        signals: bool = False,
        task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED,
    ) -> RunResult:
        """Listen, store and fetch until stopped; then close every file.

        Args:
            extra: further tasks (the live view), each given the receiver.
            signals: stop cleanly on SIGINT and SIGTERM.
            task_status: reports the bound addresses once listening.

        Raises:
            UsageError: an address cannot be listened on.
        """
        resumed = self.state.resume()
        if resumed:
            log.info("resumed: %d envelopes already stored in %s", resumed, self.config.out_dir)
        # The first header report of each flow goes through the reference codec
        # (pdu/fast_cmii.py). Compiled here, not at the first PDU: that took a
        # third of a second of CPU while the traffic queued behind it.
        schema.compiled()
        udp_sock, tls_listeners, bound = await self._bind()
        self.started_at = trio.current_time()
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._start_tasks(nursery, udp_sock, tls_listeners, extra, signals)
                    task_status.started(bound)
                    if self._settle_heap:
                        heap.settle()
        finally:
            if udp_sock is not None:
                udp_sock.close()
            self.refusals.flush()
            if self.udp is not None:  # the last summary of forged datagrams, if any
                self.udp.refusals.flush()
            if self.scte is not None:
                self.scte.refusals.flush()
            try:
                self._save_udp()
                digests = self.state.close(sort=self.config.sort)  # first: the evidence
            finally:
                for listener in tls_listeners:
                    await trio.aclose_forcefully(listener)
        return RunResult(self._reason, digests, self.failed)

    def _start_tasks(
        self,
        nursery: trio.Nursery,
        udp_sock: stdlib_socket.socket | None,
        tls_listeners: list[trio.SSLListener[trio.SocketStream]],
        extra: tuple[Callable[[Receiver], Awaitable[None]], ...],
        signals: bool,
    ) -> None:
        config = self.config
        if udp_sock is not None and config.udp_format == "scte":
            assert config.handles, "SCTE datagrams are told apart by the handles expected"
            self.scte = ScteDelivery(udp_sock, self.state, list(config.udp_keys), config.handles)
            nursery.start_soon(self.scte.reader)
        elif udp_sock is not None:
            self.udp = UdpDelivery(
                udp_sock, self.state, config.report_interval, list(config.udp_keys)
            )
            nursery.start_soon(self.udp.reader)
            nursery.start_soon(self.udp.reporter)
        if tls_listeners:
            nursery.start_soon(trio.serve_listeners, self._live_connection, tls_listeners)
        if config.retrieve_from and config.retrieval_context and not config.fetch:
            self.retriever = Retriever(
                self.state,
                config.retrieve_from,
                config.retrieval_context,
                config.server_check,
                interval=config.retrieval_interval,
                settle=config.settle,
                handshake_timeout=config.handshake_timeout,
            )
            nursery.start_soon(self.retriever.run)
        if config.fetch:
            nursery.start_soon(self._fetch)
        nursery.start_soon(self._housekeeping)
        if config.duration is not None:
            nursery.start_soon(self._stop_after, config.duration)
        if config.until_idle is not None:
            nursery.start_soon(self._stop_when_idle, config.until_idle)
        if signals:
            nursery.start_soon(self._watch_signals)
        for task in extra:
            nursery.start_soon(task, self)

    async def _bind(
        self,
    ) -> tuple[stdlib_socket.socket | None, list[trio.SSLListener[trio.SocketStream]], Bound]:
        udp_sock, udp_bound, listeners, tls_bound = None, None, [], None
        config = self.config
        if config.udp is not None:
            if not config.udp_keys:
                raise UsageError("--udp-key", "UDP delivery is sealed: give the carrier's key file")
            udp_sock, udp_bound, granted = await udp.bind(*config.udp, config.udp_buffer)
            self.state.counters.udp_buffer = granted
            log.info("listening: udp %s", _text(udp_bound))
        if config.tls is not None:
            assert config.tls_context is not None, "--tls needs its TLS context"
            host, port = config.tls
            try:
                tcp = await trio.open_tcp_listeners(port, host=host)
            except OSError as exc:
                if udp_sock is not None:
                    udp_sock.close()
                reason = f"cannot listen on {host}:{port}: {exc.strerror}"
                raise UsageError("--tls", reason) from None
            tls_bound = tcp[0].socket.getsockname()[:2]
            listeners = [
                trio.SSLListener(t, config.tls_context, https_compatible=False) for t in tcp
            ]
            log.info("listening: tls %s", _text(tls_bound))
        return udp_sock, listeners, Bound(udp_bound, tls_bound)

    # TLS -------------------------------------------------------------------

    async def _live_connection(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        peer = _peer(stream)
        if not self.slots.try_enter():  # before the handshake allocates OpenSSL's buffers
            self.state.counters.refused_connections += 1
            self.refusals.refuse(BUSY, peer)
            await trio.aclose_forcefully(stream)
            return
        try:
            await self._serve_live(stream, peer)
        finally:
            self.slots.leave()

    async def _serve_live(self, stream: trio.SSLStream[trio.SocketStream], peer: str) -> None:
        try:
            with trio.fail_after(self.config.handshake_timeout):
                await stream.do_handshake()
            server = self.config.server_check or ServerCheck()  # none: refuse everyone
            server.check(stream.getpeercert(binary_form=True), CLIENT_AUTH)
        except (trio.BrokenResourceError, trio.TooSlowError, PeerRefused) as exc:
            self.state.counters.refused_connections += 1
            if isinstance(exc, trio.TooSlowError):
                why = "no handshake in time"
            else:
                why = str(exc) if isinstance(exc, PeerRefused) else failure_reason(exc)
            self.refusals.refuse(why, peer)
            await trio.aclose_forcefully(stream)
            return
        log.info("tls: connection from %s", peer)
        # No positions: opening acks would name streams this connection
        # may not carry. The server resumes from its first unacknowledged;
        # what we hold already is flagged duplicate by the shared trackers.
        machine = StreamReceiver(trackers=self.state.trackers, streams=self.state.accepted)
        machine.connection_made(trio.current_time())
        driver = StreamDriver(machine, stream, self.state, "tls")
        await driver.run()
        ended = driver.ended_by or "closed"
        level = logging.INFO if ended.startswith(("closed", "connection lost")) else logging.WARNING
        log.log(level, "tls: connection from %s ended: %s", peer, ended)

    # Retrieval, housekeeping, stopping ---------------------------------------

    async def _fetch(self) -> None:
        config = self.config
        assert config.retrieve_from and config.retrieval_context
        try:
            results = await fetch(
                self.state,
                config.retrieve_from,
                config.retrieval_context,
                config.server_check,
                list(config.fetch),
                handshake_timeout=config.handshake_timeout,
            )
        except ConnectError as exc:
            self.failed = f"--retrieve-from: {_text(config.retrieve_from)}: {exc}"
            self.stop("fetch failed")
            return
        never = sum(last - first + 1 for r in results for first, last in r.unavailable)
        not_yet = sum(last - first + 1 for r in results for first, last in r.not_yet)
        notes = [f"{not_yet} not yet (ask again later)"] if not_yet else []
        notes += [f"{never} never available"] if never else []
        self.stop("; ".join(["fetch complete", *notes]))

    async def _housekeeping(self) -> None:
        """Flush often (a crash loses nothing written), fsync and report less often.

        The fsync comes every ``sync_interval``, or at the first flush after
        ``sync_octets`` were written, whichever is first: a busy receiver
        syncs at every flush, so the disk takes its files as a steady stream
        and never a burst of five seconds' writes at once (that burst
        stalled every other writer of the disk, this receiver's own acks
        included, for tens of milliseconds: docs/architecture.md).
        """
        config = self.config
        now = trio.current_time()
        next_sync, next_gaps = now + config.sync_interval, now + config.gaps_interval
        while True:
            await trio.sleep(config.flush_interval)
            self.state.flush()
            self.refusals.tick()
            now = trio.current_time()
            if now >= next_sync or self.state.unsynced() >= config.sync_octets:
                await self.state.make_durable()
            if now >= next_sync:
                self._save_udp()
                next_sync = now + config.sync_interval
            if now >= next_gaps:
                self.state.write_gap_reports()
                next_gaps = now + config.gaps_interval

    def _save_udp(self) -> None:
        """Keep the UDP replay state; failing to is a warning, never the end of the run."""
        if self.udp is None:
            return
        try:
            self.udp.save()
        except OSError as exc:
            log.warning("udp: replay state not saved: %s", exc.strerror or exc)

    async def _stop_after(self, seconds: float) -> None:
        await trio.sleep(seconds)
        self.stop(f"--duration {seconds:g} s reached")

    async def _stop_when_idle(self, seconds: float) -> None:
        """Stop once, after the first envelope, nothing has arrived for ``seconds``.

        Waiting for the first one has no limit (``--duration`` gives one),
        and an open retrieval request keeps the run going.
        """
        while True:
            last = self.state.last_arrival
            if last is None:
                await trio.sleep(min(seconds, 0.1))
                continue
            await trio.sleep_until(last + seconds)
            if self.state.last_arrival != last:
                continue  # something arrived meanwhile
            if self.retriever and self.retriever.open_requests:
                await trio.sleep(min(seconds, 0.1))
                continue
            self.stop(f"--until-idle: nothing for {seconds:g} s")
            return

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
            async for signum in received:
                self.stop(f"{signal.Signals(signum).name} received")
                return


def _peer(stream: trio.SSLStream[trio.SocketStream]) -> str:
    try:
        host, port = stream.transport_stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return _text((host, port))


def _text(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
