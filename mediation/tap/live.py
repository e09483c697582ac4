"""A live tap: one capture on one interface serving every warrant on it.

:class:`LiveTap` owns a :class:`~mediation.tap.capture.LiveCapture` whose
kernel filter is the union of the targets of the warrants it serves, and
one :class:`~mediation.tap.replay.Tap` per warrant (each with its own case
identity, flows and sequences). Each frame is parsed once and shown to
every warrant's tap, which applies the warrant's window and matcher: a
frame outside a warrant's window, or not its target's, yields nothing for
it, whatever the kernel let through.

The tap link (later) drives it::

    live = LiveTap("eth1", warrants)
    async for items in live.run():          # lists of ReplayItem
        ...                                 # send each to the server
    live.set_warrants(new_warrants)         # from any task: filter rebuilt
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Callable, Iterable, Sequence

from mediation.pdu.schema import compiled
from mediation.pdu.taplink import encode_pdu
from mediation.tap.bpf import Insn, KernelFilter, chain, compile_expressions, kernel_filter
from mediation.tap.builder import CorrelationScheme
from mediation.tap.capture import CapturedFrame, CaptureStats, LiveCapture, RingConfig
from mediation.tap.packet import parse_frame
from mediation.tap.replay import ReplayItem, Tap
from mediation.warrants.model import Target, Warrant


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass
class LiveCounters:
    """The live tap's own numbers (the capture's are in :attr:`LiveTap.capture`)."""

    batches: int = 0
    frames: int = 0
    unmatched: int = 0  # frames the kernel passed that no warrant took
    filters_built: int = 0
    filter_fallbacks: int = 0  # filters too long for the kernel: accept-all instead


class LiveTap:
    """Captures on ``interface`` for ``warrants`` and yields their PDUs.

    Args:
        interface: the capture interface.
        warrants: warrants with loaded details, or ready-made taps.
        iap_system_id, correlation: for taps made here (see :meth:`Tap.for_warrant`).
        ring: the capture ring's shape.
        idle: seconds without a frame after which leases are checked for
            expiry (``Tap.expire``) and ended windows drop out of the filter.
        clock: the wall clock, for those idle checks (frames carry the kernel's time).
        expression: a tcpdump filter to use as the kernel filter instead of
            one built from the targets (the seed form's ``-f``).
        fanout: ``(group, steering program)``: capture as one worker of a
            fanout group (mediation/tap/workers.py); nothing is captured
            until :meth:`start` attaches the filter.

    Raises:
        OSError: the interface, CAP_NET_RAW, libpcap or the kernel said no.
        ValueError: a warrant cannot be tapped.
    """

    def __init__(
        self,
        interface: str,
        warrants: Iterable[Warrant | Tap],
        *,
        iap_system_id: str | None = None,
        correlation: CorrelationScheme | None = None,
        ring: RingConfig | None = None,
        idle: float = 1.0,
        clock: Callable[[], dt.datetime] = _utc_now,
        expression: str | None = None,
        fanout: tuple[int, Sequence[Insn]] | None = None,
    ) -> None:
        self.interface = interface
        self._expression = expression
        self.counters = LiveCounters()
        self._iap = iap_system_id
        self._correlation = correlation
        self._idle = idle
        self._clock = clock
        self.taps: list[Tap] = []
        self._targets: dict[str, tuple[Target, ...]] = {}
        self._ends: dict[str, dt.datetime | None] = {}
        self._taps_for(warrants)
        # The reference codec is compiled on first use (over a second): do it
        # before the ring opens, not while the first frames fill it.
        compiled()
        self.filter = self._build_filter(clock())
        self.capture = LiveCapture(interface, self.filter.program, ring, fanout=fanout)

    def start(self) -> None:
        """Attach the filter of a fanout worker, made with ``fanout``: capture starts now."""
        self.capture.set_filter(self.filter.program)

    def close(self) -> None:
        """Close the capture."""
        self.capture.close()

    def __enter__(self) -> LiveTap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Warrants and the filter -------------------------------------------------

    def _taps_for(self, warrants: Iterable[Warrant | Tap]) -> None:
        """Taps for ``warrants``, keeping the state of those already served."""
        old = {tap.handle: tap for tap in self.taps}
        taps: list[Tap] = []
        targets: dict[str, tuple[Target, ...]] = {}
        for item in warrants:
            if isinstance(item, Tap):
                tap = item
            else:
                tap = old.get(item.handle)  # type: ignore[assignment]
                details = item.details
                if tap is None or details is None or tap.matcher.targets != details.targets:
                    # New, or its targets changed: a fresh matcher and follower.
                    tap = Tap.for_warrant(
                        item, iap_system_id=self._iap, correlation=self._correlation
                    )
                tap.start, tap.end = item.start, item.end
            taps.append(tap)
            targets[tap.handle] = tap.matcher.targets
        self.taps = taps
        self._targets = targets

    def _build_filter(self, now: dt.datetime) -> KernelFilter:
        """The kernel filter for the warrants whose window has not ended."""
        live = [t for t in self.taps if t.end is None or t.end > now]
        if self._expression is not None:
            self._next_end = None
            self.counters.filters_built += 1
            return KernelFilter(chain(compile_expressions([self._expression], self.interface)), 1)
        targets = [target for tap in live for target in self._targets[tap.handle]]
        built = kernel_filter(targets, self.interface)
        self.counters.filters_built += 1
        self.counters.filter_fallbacks += built.fallback
        ends = [t.end for t in live if t.end is not None]
        self._next_end = min(ends) if ends else None
        return built

    def set_warrants(self, warrants: Iterable[Warrant | Tap]) -> None:
        """Serve these warrants from now on; the kernel filter is replaced in one step.

        Taps of warrants still served keep their flows, sequences and leases.
        The Python side changes first, then the filter: frames the old filter
        let in are still decided by the new taps, so a removed warrant's
        target never yields a PDU after this returns.

        Raises:
            ValueError, OSError: as for the constructor; the old warrants
                and filter then stay in force.
        """
        previous = (self.taps, self._targets)
        self._taps_for(warrants)
        try:
            built = self._build_filter(self._clock())
            self.capture.set_filter(built.program)
        except BaseException:
            self.taps, self._targets = previous
            raise
        self.filter = built

    def set_expression(self, expression: str | None, warrants: Iterable[Warrant | Tap]) -> None:
        """The seed form: a new kernel filter expression and taps, in one step.

        Raises:
            ValueError, OSError: as :meth:`set_warrants`; the old ones stay.
        """
        previous = self._expression
        self._expression = expression
        try:
            self.set_warrants(warrants)
        except BaseException:
            self._expression = previous
            raise

    # Running -----------------------------------------------------------------

    def process(self, batch: list[CapturedFrame]) -> list[ReplayItem]:
        """The PDUs of one batch of captured frames, for every warrant, in order."""
        out: list[ReplayItem] = []
        taps, interface = self.taps, self.interface
        unmatched = 0
        for frame in batch:
            parsed = parse_frame(frame.data)
            before = len(out)
            for tap in taps:
                for pdu in tap.process(
                    frame.data, frame.time, parsed, interface=interface, outgoing=frame.outgoing
                ):
                    out.append(ReplayItem(tap.handle, pdu.kind, pdu.der, pdu.time))
            unmatched += len(out) == before
        self.counters.batches += 1
        self.counters.frames += len(batch)
        self.counters.unmatched += unmatched
        return out

    def records(self, batch: list[CapturedFrame]) -> list[tuple[bytes, dt.datetime]]:
        """The PDUs of one batch as tap-link ``TapPdu`` records, with their times, in order.

        What :meth:`process` yields, already encoded for the link
        (:func:`mediation.pdu.taplink.encode_pdu`): the live hot path, with no
        object per PDU on the way.
        """
        out: list[tuple[bytes, dt.datetime]] = []
        append = out.append
        taps, interface = self.taps, self.interface
        unmatched = 0
        for data, when, outgoing, _length in batch:
            parsed = parse_frame(data)
            before = len(out)
            for tap in taps:
                tap.records(data, when, parsed, append, interface=interface, outgoing=outgoing)
            unmatched += len(out) == before
        self.counters.batches += 1
        self.counters.frames += len(batch)
        self.counters.unmatched += unmatched
        return out

    def tick(self, now: dt.datetime) -> list[ReplayItem]:
        """Idle work: session ends of leases that ran out by ``now``."""
        return [
            ReplayItem(tap.handle, pdu.kind, pdu.der, pdu.time)
            for tap in self.taps
            for pdu in tap.expire(now)
        ]

    def refilter_if_due(self, now: dt.datetime) -> bool:
        """Take warrants whose window has ended out of the kernel filter; whether it did."""
        if self._next_end is None or now < self._next_end:
            return False
        built = self._build_filter(now)
        self.capture.set_filter(built.program)
        self.filter = built
        return True

    async def run(self) -> AsyncIterator[list[ReplayItem]]:
        """Lists of PDUs as batches arrive (and lease ends when idle); runs until cancelled."""
        while True:
            batch = await self.capture.next_batch(self._idle)
            now = self._clock()
            items = self.process(batch) if batch else self.tick(now)
            self.refilter_if_due(now)
            if items:
                yield items

    async def run_records(self) -> AsyncIterator[list[tuple[bytes, dt.datetime]]]:
        """As :meth:`run`, as tap-link records (see :meth:`records`); runs until cancelled."""
        while True:
            batch = await self.capture.next_batch(self._idle)
            now = self._clock()
            if batch:
                records = self.records(batch)
            else:
                records = [(encode_pdu(i.kind, i.time, i.der), i.time) for i in self.tick(now)]
            self.refilter_if_due(now)
            if records:
                yield records

    def stats(self) -> CaptureStats:
        """The capture's counters, the kernel's drop counter read now."""
        return self.capture.read_stats()
