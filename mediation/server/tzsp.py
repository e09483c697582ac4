"""TZSP ingest: frames mirrored by routers, tapped by the server itself (docs/tzsp.md).

A warrant whose source is ``tzsp:ADDR`` takes the frames the router at
ADDR sends over UDP (``[tzsp] listen``, port 37008 by default). Only the
addresses of active warrants' ``tzsp:`` sources are registered; a datagram
from any other address is counted and dropped before it is read.

Per registered source, the server runs the tap core (:class:`~mediation.tap.replay.Tap`,
one per warrant the source feeds: matching, DHCP and RADIUS following, PDU
building at the warrant's content level) on each receive step's decoded
frames, and hands each tap's PDUs of the step to
:class:`~mediation.server.tap_ingest.TapIngest` as one batch. The server
built them for the warrant it matched, so they skip the per-PDU gate of
remote taps (:class:`~mediation.server.tap_gate.BuiltGate`); the warrant
is still checked (active, content level). When every warrant a source
feeds names only exact addresses, a prefilter drops other subscribers'
IPv4 frames before they are parsed.

TZSP has no sequence numbers: loss between the router and the server
cannot be counted. What can be known is told to the agency: a
``tapRestored`` notice (source ``tzsp:ADDR``) when a source starts feeding
a warrant, and ``tapLost`` when it has been silent for ``[tzsp] idle_after``
seconds. Everything is counted for ``mediate status`` (the ``tzsp`` section).
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import socket
import time
from typing import Any, Protocol

import trio

from mediation.log import Appended
from mediation.pdu import CompletenessEvent
from mediation.pdu import taplink as T
from mediation.protocol.tzsp import TzspReceiver
from mediation.refusals import Refusals
from mediation.server.config import TzspConfig
from mediation.server.tap_gate import BuiltGate
from mediation.server.tap_ingest import BatchResult, TapIngest
from mediation.server.tzsp_socket import BatchReceiver, kernel_drops
from mediation.server.tzsp_sources import TzspSource, build_sources, tzsp_warrants
from mediation.server.udp_listen import bind_udp
from mediation.server.warrant_table import WarrantTable
from mediation.tap.builder import FlowCorrelation
from mediation.tap.packet import ParsedFrame, ipv4_addresses, parse_frame

log = logging.getLogger("mediation.server")
STARTED = (
    "TZSP source started feeding; TZSP has no sequence numbers, so frames lost "
    "between the router and the server cannot be counted"
)
IDLE_CHECK = 1.0  # seconds between checks for silent sources and expired leases
# recvmmsg calls gathered into one receive step when the socket stays full: each
# step has fixed costs (an ingest batch and log append per warrant, the wake-up:
# ~0.4 ms), shared by 4 x [tzsp] batch frames instead of one batch's (13% less
# CPU a frame).
STEP_CALLS = 4


class Hooks(Protocol):
    """What the listener needs of the server (:class:`MediationServer`)."""

    def notice(self, handle: str, event: str, **fields: Any) -> int | None: ...


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TzspService:
    """The TZSP listener, its sources and its counters.

    Args:
        config: ``[tzsp]``.
        table: the warrants.
        ingest: a :class:`TapIngest` of its own (its refusal counters are this listener's).
        hooks: where notices go.
        radius_secret: the RADIUS shared secret, for following ``user:`` targets
            from accounting seen in the mirrored frames; None believes it unchecked.
    """

    def __init__(
        self,
        config: TzspConfig,
        table: WarrantTable,
        ingest: TapIngest,
        hooks: Hooks,
        *,
        radius_secret: bytes | None = None,
        clock: Any = _utc_now,
    ) -> None:
        self.config = config
        self.table = table
        self.ingest = ingest
        self.hooks = hooks
        self.radius_secret = radius_secret
        self.clock = clock
        self.sources: dict[str, TzspSource] = {}
        self.receiver = TzspReceiver(self.sources)
        self.refusals = Refusals(log, "tzsp: refused", clock=trio.current_time)
        self.listening: tuple[str, int] | None = None
        self.counters: collections.Counter[str] = collections.Counter()
        self._sock: socket.socket | None = None
        self._batch_id = 0
        self._drops = 0  # the socket's kernel drop count at the last check
        self._drops_checked: dt.datetime | None = None
        # Content identifiers stay unique across restarts (builder.FlowCorrelation).
        self._correlation = FlowCorrelation(int(time.time()) & 0xFFFFFFFF)

    # -- warrants ----------------------------------------------------------------

    def on_change(self) -> None:
        """Take the active warrants' ``tzsp:`` sources; taps of unchanged warrants keep state."""
        sources = build_sources(
            tzsp_warrants(self.table), self.sources, self._correlation, self.radius_secret
        )
        self.sources.clear()
        self.sources.update(sources)  # the receiver holds this dict as its registered senders

    # -- status ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        counters = collections.Counter[str]()
        for source in self.sources.values():
            for tap in source.taps:
                counters["matched"] += tap.counters.matched
                counters["cmii"] += tap.counters.cmii
                counters["cmcc"] += tap.counters.cmcc
        drops = kernel_drops(self._sock) if self._sock is not None else None
        return {
            "listening": shown(self.listening),
            "sources": len(self.sources),
            "feeding": sum(s.feeding for s in self.sources.values()),
            "datagrams": self.counters["datagrams"],
            "frames": self.receiver.accepted,
            "octets": self.receiver.octets,
            "malformed": self.counters["malformed"],
            "passed_over": self.counters["passed_over"],
            "oversize": self.counters["oversize"],
            "refused_datagrams": {k: n for k, n in sorted(self.receiver.refused.items()) if n},
            "socket_drops": drops,
            "matched": counters["matched"],
            "pdus": {"cmII": counters["cmii"], "cmCC": counters["cmcc"]},
            "refused_pdus": dict(sorted(self.ingest.refused.items())),
        }

    # -- the listener ------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Receive TZSP until cancelled (a bind failure is logged; the server carries on)."""
        sock = bind_udp(self.config.listen, "tzsp", log, self.config.receive_buffer)
        if sock is None:
            task_status.started()
            return
        self._sock = sock
        self.listening = sock.getsockname()[:2]
        receiver = BatchReceiver(sock, self.config.batch, self.config.max_datagram)
        log.info("tzsp: listening on udp %s", shown(self.listening))
        task_status.started()
        with sock:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_idle)
                await self._receive_loop(sock, receiver)

    async def _receive_loop(self, sock: socket.socket, receiver: BatchReceiver) -> None:
        while True:
            await trio.lowlevel.wait_readable(sock)
            while True:
                step, error = receiver.receive_step(STEP_CALLS)
                if error is not None:  # e.g. ECONNREFUSED queued on the socket: not fatal
                    self.refusals.refuse(f"socket error: {error.strerror}")
                if not step:
                    break
                await self.datagrams(step)
                await trio.lowlevel.checkpoint()  # other tasks run between steps

    async def datagrams(self, datagrams: list[tuple[bytes | None, str]]) -> None:
        """Decode, tap and ingest one receive step's datagrams ``(octets or None, sender)``.

        One capture time and one trio time for the step; every frame decoded
        and parsed first, then each source's through its taps together
        (:meth:`Tap.process_many`), one ingest batch per warrant fed: no
        await per frame.
        """
        now = self.clock()
        seen = trio.current_time()
        taken: dict[str, list[tuple[bytes, ParsedFrame]]] = {}
        receiver, sources, counters = self.receiver, self.sources, self.counters
        counters["datagrams"] += len(datagrams)
        for data, sender in datagrams:
            if data is None and sender in sources:
                counters["oversize"] += 1
                self.refusals.refuse("oversize", sender)
                continue
            decoded = receiver.receive(data or b"", sender)
            if decoded is None:
                reason = receiver.last_refusal
                self.refusals.refuse(reason.value if reason else "refused", sender)
                continue
            frames = taken.get(sender)
            if frames is None:
                frames = taken[sender] = []
            frame, linktype = decoded.frame, decoded.linktype
            plain = sources[sender].plain
            if plain is not None:  # the prefilter: another subscriber's frame costs no parse
                pair = ipv4_addresses(frame, linktype)
                if pair is not None and pair[0] not in plain and pair[1] not in plain:
                    counters["passed_over"] += 1
                    continue
            parsed = parse_frame(frame, linktype)
            counters["malformed"] += parsed.malformed
            frames.append((frame, parsed))
        for sender, frames in taken.items():
            await self._tap(sources[sender], frames, now, seen)

    async def _tap(
        self, source: TzspSource, frames: list[tuple[bytes, ParsedFrame]], now: dt.datetime,
        seen: float,
    ) -> None:  # fmt: skip
        """One source's frames of a receive step through its taps; one ingest batch per tap."""
        source.last_seen = seen
        if not source.feeding or len(source.announced) < len(source.taps):
            self._started(source, now)
        tap_pdu = T.TapPdu
        batches = []
        for tap, gate in zip(source.taps, source.gates, strict=True):
            built = tap.process_many(frames, now)
            if built:
                batches.append((gate, [tap_pdu(p.kind, p.time, p.der) for p in built]))
        for gate, pdus in batches:  # every frame tapped before the first await
            await self._ingest(gate, pdus)

    async def _ingest(self, gate: BuiltGate, pdus: list[T.TapPdu]) -> BatchResult:
        self._batch_id = self._batch_id + 1 if self._batch_id < T.MAX_BATCH_ID else 1
        batch = T.PduBatch(self._batch_id, tuple(pdus))
        return await self.ingest.batch(gate, batch, durable=False)

    def _started(self, source: TzspSource, now: dt.datetime) -> None:
        """Tell each warrant the source feeds (and was not told) that it feeds now."""
        if not source.feeding:
            log.info("tzsp: %s started feeding", source.name)
        source.feeding = True
        for tap in source.taps:
            if tap.handle not in source.announced:
                source.announced.add(tap.handle)
                self._notice(tap.handle, CompletenessEvent.TAP_RESTORED, source, now, STARTED)

    def _notice(
        self, handle: str, event: CompletenessEvent, source: TzspSource, now: dt.datetime,
        detail: str,
    ) -> None:  # fmt: skip
        try:
            self.hooks.notice(handle, event.value, source=source.name, event_time=now,
                              detail=detail)  # fmt: skip
        except Exception:  # a notice that cannot be built must not stop the listener
            log.exception("tzsp: %s: cannot append the %s notice", handle, event.value)

    async def _watch_idle(self) -> None:
        """Each second: sources silent for ``idle_after`` stopped feeding; leases that expired."""
        while True:
            await trio.sleep(IDLE_CHECK)
            now = self.clock()
            self.drops_check(now)  # before idle_check: a warrant just fed is still told
            self.idle_check(trio.current_time())
            for source in list(self.sources.values()):
                for tap, gate in zip(source.taps, source.gates, strict=True):
                    pdus = [T.TapPdu(p.kind, p.time, p.der) for p in tap.expire(now)]
                    if pdus:
                        await self._ingest(gate, pdus)
            self.refusals.tick()

    def drops_check(self, now: dt.datetime) -> None:
        """Datagrams the socket dropped since the last check: an upstream gap for each warrant fed.

        The kernel cannot say whose they were, so every warrant being fed
        is told the whole number (an upper bound on its own loss).
        """
        drops = kernel_drops(self._sock) if self._sock is not None else None
        if drops is None:
            return
        lost, self._drops = drops - self._drops, drops
        since, self._drops_checked = self._drops_checked or now, now
        if lost <= 0:
            return
        for source in self.sources.values():
            for handle in source.announced:
                try:
                    self.hooks.notice(
                        handle, CompletenessEvent.UPSTREAM_GAP.value, lost_count=lost,
                        period_start=since, period_end=now, source="tzsp",
                        detail="dropped by the server's socket, all sources together",
                    )  # fmt: skip
                except Exception:
                    log.exception("tzsp: %s: cannot append the upstreamGap notice", handle)

    def idle_check(self, at: float) -> None:
        """Mark sources silent since ``at - idle_after`` as stopped, with a ``tapLost`` each."""
        now = self.clock()
        for source in self.sources.values():
            if source.feeding and at - source.last_seen >= self.config.idle_after:
                source.feeding = False
                log.info("tzsp: %s stopped feeding", source.name)
                detail = (
                    f"no TZSP datagram for {self.config.idle_after:g} s; what the router "
                    "matched and did not deliver is not known"
                )
                for handle in source.announced:
                    self._notice(handle, CompletenessEvent.TAP_LOST, source, now, detail)
                source.announced.clear()

    def accounting(self, payload: bytes, when: dt.datetime) -> dict[BuiltGate, list[T.TapPdu]]:
        """One Accounting-Request from the RADIUS listener, shown to every source's taps.

        Returns:
            The PDUs it caused, by the gate of the tap that built them (to
            ingest with :meth:`ingest_pdus`).
        """
        out: dict[BuiltGate, list[T.TapPdu]] = {}
        for source in self.sources.values():
            for tap, gate in zip(source.taps, source.gates, strict=True):
                pdus = [T.TapPdu(p.kind, p.time, p.der) for p in tap.accounting(payload, when)]
                if pdus:
                    out[gate] = pdus
        return out

    async def ingest_pdus(self, by_gate: dict[BuiltGate, list[T.TapPdu]]) -> list[Appended] | None:
        """Ingest PDUs built outside the receive loop (RADIUS accounting), by their tap's gate.

        Returns:
            The receipts of the last records appended (await them for durability);
            None if storing stopped part-way (or a PDU was refused).
        """
        receipts: list[Appended] = []
        for gate, pdus in by_gate.items():
            result = await self._ingest(gate, pdus)
            if not result.complete or result.ack.accepted != len(pdus) or result.ack.refused:
                return None
            receipts += result.receipts
        return receipts


def shown(address: tuple[str, int] | None) -> str | None:
    if address is None:
        return None
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
