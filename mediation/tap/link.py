"""The tap's end of the tap link: warrants in, batches out (docs/tap-link.md, docs/tap.md).

:class:`TapClient` connects to the server over TLS with the tap's
certificate and checks the server by the bundle's server CA and role;
it gets its warrants (:class:`WarrantSet`, held in memory only) and builds
one :class:`Tap` per warrant. Captured frames (a pcap file here; live
capture drives the same :meth:`TapClient.frame`) become PDUs, cut into
batches (:mod:`mediation.tap.batching`: by count and size, sent when no
further burst is expected within the linger, or after 0.2 s while the
link is busy or down). Each batch goes into the spool
(:class:`mediation.tap.spool.TapSpool`, encrypted, bounded) before it is
sent. The server acknowledges a batch once its PDUs are
durable; only then is it dropped from the spool. A lost connection is
retried with a doubling delay; on reconnect everything not acknowledged
is sent again, oldest first, and the server stores none of it twice.

UDP mode (``udp`` given): batches go as sealed datagrams, numbered by
the session's counter, not spooled and never acknowledged; the TLS link
still brings the warrants.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
import math
import os
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Any

import trio

from mediation.errors import UsageError
from mediation.pdu import taplink as T
from mediation.protocol.sealed import DatagramSealer, Direction, SealKey
from mediation.tap.batching import (
    BATCH_PDUS,
    BATCH_SECONDS,
    BURST_GAP_MAX,
    LINGER_SECONDS,
    Batching,
)
from mediation.tap.builder import FlowCorrelation, PDUBuilder
from mediation.tap.link_session import WINDOW_BYTES, LinkCounters, LinkSession, Spool, describe
from mediation.tap.packet import LINKTYPE_ETHERNET, parse_frame
from mediation.tap.replay import Tap
from mediation.tap.targets import TargetMatcher
from mediation.warrants.authority import TapCredentials
from mediation.warrants.model import ContentLevel
from mediation.warrants.target_text import parse_target

log = logging.getLogger("mediation.tap")

def build_tap(warrant: T.TapWarrant, epoch: int = 0, flow_numbers: tuple[int, int] = (0, 1)) -> Tap:
    """A :class:`Tap` for one warrant of the set.

    Args:
        epoch: the correlation epoch (:class:`FlowCorrelation`): the tap's
            start time, so content identifiers differ across restarts.
        flow_numbers: this capture worker's share of flow numbers
            (:class:`PDUBuilder`).

    Raises:
        UsageError, ValueError: a target or identity the tap cannot use.
    """
    targets = [parse_target(text, i, "targets") for i, text in enumerate(warrant.targets)]
    builder = PDUBuilder(
        warrant.case_id,
        warrant.iap or "",
        ContentLevel(warrant.content),
        FlowCorrelation(epoch),
        flow_numbers=flow_numbers,
    )
    return Tap(
        warrant.handle, TargetMatcher(targets), builder, start=warrant.start, end=warrant.end
    )


def client_context(credentials: TapCredentials) -> ssl.SSLContext:
    """TLS client context: the tap's certificate; the server CA as the only anchor.

    ``ssl`` loads a key pair only from a path: it is handed one of an
    anonymous memory file (``memfd``), so the private key never touches a disk.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False  # servers are often addresses: the role check decides
    context.load_verify_locations(cadata=credentials.server_ca_pem)
    pem = (credentials.certificate_pem + credentials.private_key_pem).encode("ascii")
    fd = os.memfd_create("tap-credentials", os.MFD_CLOEXEC)
    try:
        os.write(fd, pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return context


class TapClient(Batching, LinkSession):
    """One tap process's link to the server (see the module docstring).

    Frames to PDUs, the capture and the warrant set are here; batching
    them is :class:`~mediation.tap.batching.Batching`; the connection
    (hello, sending within the window, acknowledgements) is
    :class:`~mediation.tap.link_session.LinkSession`.
    """

    def __init__(
        self,
        credentials: TapCredentials,
        spool: Spool | None,
        address: tuple[str, int],
        context: ssl.SSLContext,
        *,
        udp: tuple[str, int] | None = None,
        batch_pdus: int = BATCH_PDUS,
        batch_seconds: float = BATCH_SECONDS,
        linger: float = LINGER_SECONDS,
        epoch: int | None = None,
        fixed: tuple[Any, ...] | None = None,
        trace: Any = None,
    ) -> None:
        self.credentials = credentials
        # A BatchTrace (mediation/tap/trace.py) while measuring latency; else None.
        self.trace = trace
        # The seed form's one tap and kernel filter: not rebuilt from warrant sets.
        self.fixed = fixed
        self.spool = spool
        self.address = address
        self.context = context
        self.udp = udp
        self.batch_pdus = batch_pdus
        self.batch_seconds = batch_seconds
        self.linger = linger
        self.epoch = int(time.time()) & 0xFFFFFFFF if epoch is None else epoch
        self.counters = LinkCounters()
        # The seed form's tap is known before the link is up: it captures at once.
        self.taps: list[Tap] = [] if fixed is None else [fixed[0]]
        self.warrants_ready = trio.Event()
        self.connected = False
        self._generation: T.WarrantSet | None = None
        self._pending: list[bytes] = []  # encoded TapPdu records of the open batch
        self._pending_count = self._pending_bytes = 0
        self._pending_first = self._pending_last = dt.datetime.now(dt.UTC)
        self._pending_since = 0.0
        self._last_burst = -math.inf  # when the last burst of PDUs came (trio time)
        self._burst_gap = BURST_GAP_MAX  # the gap expected before the next one
        self._opened = trio.Event()  # a batch was opened: the timer's cue
        self._spool_lock = trio.Lock()
        self._new_batch = trio.Event()
        self._acked = trio.Event()
        self._recent: collections.deque[tuple[int, bytes]] = collections.deque()
        self._recent_lost = True  # read the spool from disk first
        self._backlog: collections.deque[tuple[int, bytes]] = collections.deque()
        self._last_sent = -1
        self._machine = None
        self._syncer = None  # the spool's sync thread while the timer runs
        self.window_bytes = WINDOW_BYTES
        self._sealer: DatagramSealer | None = None
        self._live: Any = None  # the LiveTap, when capturing in this process
        self._workers: Any = None  # the CaptureWorkers, when capturing with several
        self._udp_socket: trio.socket.SocketType | None = None

    # -- frames to batches -----------------------------------------------------

    async def frame(
        self,
        data: bytes,
        when: dt.datetime,
        linktype: int = LINKTYPE_ETHERNET,
        *,
        interface: str | None = None,
    ) -> None:
        """One captured frame (a file's): its PDUs for every warrant, batched.

        ``interface``: the interface it counts as captured on (the seed form's).
        """
        await self.frames([(data, when)], linktype, interface=interface)

    async def frames(
        self,
        frames: Sequence[tuple[bytes, dt.datetime]],
        linktype: int = LINKTYPE_ETHERNET,
        *,
        interface: str | None = None,
    ) -> None:
        """Captured frames ``(data, capture time)``, in order: their PDUs into the open batch.

        The PDUs of all of them go into the batch together, so a replay
        handing over what is due costs one batching step, not one a PDU.

        Args:
            frames: the frames and their capture times (aware UTC).
            linktype: their pcap link type.
            interface: the interface they count as captured on (the seed form's).
        """
        self.counters.frames += len(frames)
        records: list[tuple[bytes, dt.datetime]] = []
        taps, append = self.taps, records.append
        for data, when in frames:
            parsed = parse_frame(data, linktype)
            for tap in taps:
                tap.records(data, when, parsed, append, interface=interface)
        if records:
            await self.add_records(records)

    async def run_live(self, interface: str, workers: int = 1) -> None:
        """Capture on ``interface`` for the warrants served, until cancelled.

        One capture serves every warrant (:class:`mediation.tap.live.LiveTap`);
        its kernel filter is rebuilt whenever the warrant set changes. With
        ``workers`` above 1 the capture is spread over that many processes
        (:mod:`mediation.tap.workers`); the seed form's fixed content
        identifier keeps it to one.

        The seed form captures at once (its tap is known; what it captures
        before the link is up waits in the spool); otherwise the taps come
        with the first warrant set, so capture waits for it.

        Raises:
            OSError: the interface, CAP_NET_RAW or the kernel said no.
        """
        if self.fixed is None:
            await self.warrants_ready.wait()
        if workers > 1 and self.fixed is None:
            await self._run_workers(interface, workers)
            return
        from mediation.tap.live import LiveTap

        expression = None
        if self.fixed is not None:  # the seed's -f, with DHCP when following
            expression = self.fixed[0].matcher.kernel_expression()
        live = await trio.to_thread.run_sync(
            lambda: LiveTap(interface, self.taps, expression=expression)
        )
        self._live = live
        log.info("capturing on %s for %d warrant(s)", interface, len(self.taps))
        with live:
            async for records in live.run_records():
                self.counters.frames = live.counters.frames
                await self.add_records(records)

    async def _run_workers(self, interface: str, count: int) -> None:
        from mediation.tap.workers import CaptureWorkers

        assert self._generation is not None
        workers = CaptureWorkers(
            interface,
            count,
            self._generation.warrants,
            epoch=self.epoch,
            chunk_pdus=max(1, self.batch_pdus // 2),
            chunk_bytes=self._limit // 2,
        )
        self._workers = workers

        async def started() -> None:
            await workers.started.wait()
            log.info(
                "capturing on %s for %d warrant(s) with %d workers",
                interface,
                len(self.taps),
                count,
            )

        async def take(payload: bytes, n: int, first: dt.datetime, last: dt.datetime) -> None:
            self.counters.frames = workers.stats().frames
            await self.add_chunk(payload, n, first, last)
            await self.burst_done()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(started)
            await workers.run(take)
            nursery.cancel_scope.cancel()

    async def prepare(self) -> None:
        """Compile, in a worker thread, the reference codec the taps' rarer PDUs need.

        Header reports and CC are written by hand (mediation/tap/header_report.py);
        lease, RADIUS and confirmation reports go through the reference codec,
        whose compile (asn1tools, ~0.2 s of CPU) would otherwise stall the
        first such packet and every packet captured behind it. Only when a
        tap follows DHCP or RADIUS (those reports are routine then): a tap
        that never builds one never pays for it. A link-layer report (a MAC
        target's frame without IP, rare) still compiles it when first needed.
        """
        if any(tap.follower is not None or tap.radius is not None for tap in self.taps):
            from mediation.pdu.schema import compiled

            await trio.to_thread.run_sync(compiled)

    def capture_stats(self) -> Any:
        """The capture's counters (a :class:`CaptureStats`), or ``None`` before capturing."""
        source = self._workers or self._live
        return None if source is None else source.stats()

    async def _send_datagram(self, payload: bytes) -> None:
        if self._sealer is None or self._udp_socket is None:
            key = SealKey(int(self.credentials.fingerprint[:8], 16), self.credentials.hmac_key)
            self._sealer = DatagramSealer(key, Direction.TAP_TO_SERVER, time.time_ns() // 1000)
            family = socket.AF_INET6 if ":" in self.udp[0] else socket.AF_INET  # type: ignore[index]
            self._udp_socket = trio.socket.socket(family, socket.SOCK_DGRAM)
            await self._udp_socket.connect(self.udp)
        message = T.batch_message(self._sealer.counter + 1, payload)
        try:
            datagram = self._sealer.seal(message)
        except ValueError:  # one PDU larger than a datagram: it cannot go by UDP
            self.counters.overflow_batches += 1
            log.warning("tap: a batch of %d octets does not fit a datagram; dropped", len(message))
            return
        await self._udp_socket.send(datagram)
        self.counters.datagrams += 1

    def _apply(self, warrants: T.WarrantSet) -> None:
        """Taps for a new warrant set; a warrant unchanged keeps its tap (flows, DHCP)."""
        if self.fixed is not None:
            self._apply_fixed(warrants)
            return
        old = {}
        if self._generation is not None:
            old = {
                w.handle: (w, t) for w, t in zip(self._generation.warrants, self.taps, strict=True)
            }
        taps, usable = [], []
        for warrant in warrants.warrants:
            kept = old.get(warrant.handle)
            if kept is not None and kept[0] == warrant:
                taps.append(kept[1])
                usable.append(warrant)
                continue
            try:
                taps.append(build_tap(warrant, self.epoch))
            except (UsageError, ValueError) as exc:  # never the case data itself
                log.error("warrant %s: cannot be tapped (%s)", warrant.handle, type(exc).__name__)
                continue
            usable.append(warrant)
        self.taps = taps
        self._generation = dataclasses.replace(warrants, warrants=tuple(usable))
        if self._workers is not None:  # capture workers build their own taps
            self._workers.set_warrants(self._generation.warrants)
        if self._live is not None:
            try:
                self._live.set_warrants(taps)
            except (OSError, ValueError) as exc:
                log.error("tap: the capture filter could not be rebuilt: %s", exc)
        log.info("tap link: serving %d warrant(s)", len(taps))

    def _apply_fixed(self, warrants: T.WarrantSet) -> None:
        """The seed form: its one tap (following the warrant's MACs); warn when not served."""
        from mediation.tap.seed import refit

        tap, expression, rebuild = self.fixed  # type: ignore[misc]
        served, fitted = refit(tap, warrants, rebuild)
        if not served:
            log.warning(
                "tap: the server has no warrant with this case identity for this tap; "
                "its PDUs will be refused"
            )
        if fitted is not None:
            tap = fitted
            self.fixed = (tap, expression, rebuild)
            if self._live is not None:
                self._live.set_expression(tap.matcher.kernel_expression(), [tap])
        self.taps = [tap]
        self._generation = warrants


__all__ = ["LinkCounters", "TapClient", "build_tap", "client_context", "describe"]
