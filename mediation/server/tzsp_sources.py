"""The routers registered as TZSP sources, and the taps each feeds (docs/tzsp.md).

Built from the active warrants whenever they change
(:meth:`mediation.server.tzsp.TzspService.on_change`): one
:class:`TzspSource` per ``tzsp:ADDR`` a warrant names, with one tap core
per warrant it feeds. A warrant whose targets did not change keeps its tap
(its DHCP and RADIUS following, its flow correlation) across the rebuild.
"""

from __future__ import annotations

import collections
import dataclasses
import logging

from mediation.server.tap_gate import BuiltGate
from mediation.server.warrant_table import WarrantTable
from mediation.tap.builder import FlowCorrelation
from mediation.tap.replay import Tap
from mediation.warrants.model import Warrant

log = logging.getLogger("mediation.server")


def _iap(address: str) -> str:
    """The IAP identity of a router whose warrant names none (at most 15 characters)."""
    text = f"tzsp:{address}"
    return text if len(text) <= 15 else "tzsp-router"


@dataclasses.dataclass
class TzspSource:
    """One registered router: the taps of the warrants it feeds, and whether it feeds."""

    address: str
    taps: list[Tap]
    gates: list[BuiltGate]  # per tap: its PDUs are its warrant's (tap_gate.BuiltGate)
    # Every tap's targets are exact addresses: a frame between others is dropped unparsed.
    plain: frozenset[bytes] | None = None
    feeding: bool = False
    last_seen: float = 0.0  # trio time of its last accepted datagram
    announced: set[str] = dataclasses.field(default_factory=set)  # handles told "feeding"

    @property
    def name(self) -> str:
        return f"tzsp:{self.address}"


def tzsp_warrants(table: WarrantTable) -> dict[str, list[Warrant]]:
    """Active warrants by the address of each ``tzsp:`` source they name."""
    out: dict[str, list[Warrant]] = collections.defaultdict(list)
    for warrant in table.active():
        if warrant.details is None:
            continue
        for source in warrant.details.sources:
            if source.kind == "tzsp":
                out[source.value].append(warrant)
    return dict(out)


def plain_addresses(taps: list[Tap]) -> frozenset[bytes] | None:
    """Every tap's target addresses, when all their targets are exact addresses, else None.

    A frame whose IPv4 addresses are none of these is no tap's: the
    prefilter drops it before it is parsed (a router mirroring a whole
    access network sends mostly other subscribers' frames).
    """
    out: frozenset[bytes] = frozenset()
    for tap in taps:
        addresses = tap.matcher.plain_addresses
        if addresses is None or tap.follower is not None or tap.radius is not None:
            return None
        out |= addresses
    return out


def build_sources(
    warrants: dict[str, list[Warrant]],
    previous: dict[str, TzspSource],
    correlation: FlowCorrelation,
    radius_secret: bytes | None,
) -> dict[str, TzspSource]:
    """The sources for ``warrants`` (by router address), keeping what ``previous`` knew.

    Args:
        warrants: active warrants by the address of each ``tzsp:`` source
            they name (:func:`tzsp_warrants`).
        previous: the sources until now; a warrant whose targets are
            unchanged keeps its tap, a source its feeding state.
        correlation: content identifiers, unique across restarts.
        radius_secret: for following ``user:`` targets; None believes
            accounting unchecked.

    Returns:
        The new sources by address. A warrant the tap core cannot take is
        logged (by its opaque handle) and left out.
    """
    old = {(s.address, t.handle): t for s in previous.values() for t in s.taps}
    sources: dict[str, TzspSource] = {}
    for address, fed in warrants.items():
        taps = []
        for warrant in fed:
            tap = old.get((address, warrant.handle))
            details = warrant.details
            assert details is not None
            if tap is None or tap.matcher.targets != details.targets:
                try:
                    tap = Tap.for_warrant(
                        warrant,
                        iap_system_id=_iap(address),
                        correlation=correlation,
                        radius_secret=radius_secret,
                    )
                except ValueError as exc:
                    log.error("tzsp: %s: cannot tap it: %s", warrant.handle, exc)
                    continue
            tap.start, tap.end = warrant.start, warrant.end
            taps.append(tap)
        gates = [BuiltGate(f"tzsp:{address}", tap.handle) for tap in taps]
        source = TzspSource(address, taps, gates, plain_addresses(taps))
        before = previous.get(address)
        if before is not None:
            source.feeding, source.last_seen = before.feeding, before.last_seen
            source.announced = before.announced & {t.handle for t in taps}
        sources[address] = source
    return sources
