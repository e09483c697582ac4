"""The seed form's one tap: what its ``-f`` filter passes, and DHCP following as in ``tap run``.

A seed tap (``mediate tap -i IF -x -y -z -d [-f FILTER]``, or a tap file)
names its traffic by a tcpdump filter, not by targets. Every frame the
filter passes is the intercept's. Its direction comes from whether the
router sent it (``PACKET_OUTGOING``), or is unknown in a file.

DHCP following needs the subscriber's MAC. The seed has none of its own,
but the server registers the seed's case under a warrant with targets,
and sends that warrant in the tap's warrant set. When that warrant names
MACs, the tap follows their leases as ``tap run`` does (session messages
for each lease change, the leased address marked ``dynamic``). To do so
the kernel filter also passes DHCP (UDP 67 and 68, tagged or not). In
Python the ``-f`` filter (libpcap's offline filter on the same frame)
still decides what is intercepted. A DHCP message about the MAC is that
subscriber's traffic as in ``tap run``, and nobody else's DHCP is taken.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from mediation.errors import UsageError
from mediation.pdu import taplink as T
from mediation.tap.bpf import OfflineFilter
from mediation.tap.builder import FixedCorrelation, PDUBuilder
from mediation.tap.packet import LINKTYPE_ETHERNET, ParsedFrame
from mediation.tap.replay import Tap
from mediation.tap.tapconfig import TapConfig
from mediation.tap.targets import Direction, TargetMatcher
from mediation.warrants.model import Target, TargetKind
from mediation.warrants.target_text import parse_target

SEED_HANDLE = "seed"  # the seed tap's only tap; never leaves the process
_DHCP = "udp port 67 or udp port 68"


class SeedMatcher(TargetMatcher):
    """Matches what the seed's filter passes; follows the leases of ``macs``.

    Args:
        interface: the seed's interface (its ``iface:`` target).
        expression: the ``-f`` filter, or None (everything).
        macs: the MAC targets of the server's warrant for this case (may be none).

    Raises:
        OSError, ValueError: libpcap is missing or refused the filter.
    """

    def __init__(self, interface: str, expression: str | None, macs: Iterable[Target] = ()) -> None:
        own = Target(TargetKind.INTERFACE, interface)
        # The interface target too: a capture built from these targets (no -f)
        # then takes everything, as the seed's capture without -f does.
        super().__init__([own, *(t for t in macs if t.kind is TargetKind.MAC)])
        self._interface = TargetMatcher([own])
        self.expression = expression
        self._filter = None
        if expression is not None and self.follows_macs:
            # Only when DHCP widens the kernel filter: otherwise the kernel's
            # filter is exactly -f and nothing else reaches Python.
            self._filter = OfflineFilter(expression, LINKTYPE_ETHERNET)

    def match(
        self,
        frame: ParsedFrame,
        interface: str | None = None,
        *,
        raw: bytes | None = None,
        outgoing: bool | None = None,
    ) -> Direction | None:
        """The frame's direction if the seed's filter passes it (see the module docstring)."""
        wanted = self._filter
        if wanted is not None and (raw is None or not wanted.matches(raw)):
            return None
        return self._interface.match(frame, interface, raw=raw, outgoing=outgoing)

    def kernel_expression(self) -> str | None:
        """The kernel filter: ``-f``, widened by DHCP when following (None: everything)."""
        if self.expression is None or not self.follows_macs:
            return self.expression
        return f"({self.expression}) or {_DHCP} or (vlan and ({_DHCP}))"


def seed_tap(config: TapConfig, macs: Iterable[Target] = ()) -> Tap:
    """The one tap of a seed configuration, following the leases of ``macs``.

    The PDUs carry ``-y``/``-z`` and the agency's content identifier ``-x``
    where T1.IAS carries one. The server still checks each PDU against the
    warrant registered with that case identity for this tap.

    Raises:
        OSError, ValueError: libpcap is missing or refused the filter.
    """
    builder = PDUBuilder(
        config.case_id,
        config.iap_id,
        config.content,
        FixedCorrelation(config.content_id.encode("ascii")),
    )
    matcher = SeedMatcher(config.interface, config.filter, macs)
    return Tap(SEED_HANDLE, matcher, builder)


def followed_macs(tap: Tap) -> tuple[Target, ...]:
    """The MAC targets a seed tap follows."""
    return tuple(t for t in tap.matcher.targets if t.kind is TargetKind.MAC)


def refit(
    tap: Tap, warrants: T.WarrantSet, rebuild: Callable[[tuple[Target, ...]], Tap] | None
) -> tuple[bool, Tap | None]:
    """Whether the server serves the seed's case, and its tap rebuilt if the MACs changed.

    Args:
        tap: the seed's tap now.
        warrants: the tap's warrant set from the server.
        rebuild: makes the seed's tap for some MACs (None: never rebuilt).

    Returns:
        ``(served, new tap or None)``: a new tap only when the MACs of the
        warrant with the seed's case identity differ from those followed, so
        flows and sequences go on otherwise.
    """
    mine = [w for w in warrants.warrants if w.case_id == tap.builder.case_id]
    if not mine or rebuild is None:
        return bool(mine), None
    macs = []
    for index, text in enumerate(mine[0].targets):
        try:
            target = parse_target(text, index, "targets")
        except (UsageError, ValueError):
            continue  # never the case data in a message
        if target.kind is TargetKind.MAC:
            macs.append(target)
    if tuple(macs) == followed_macs(tap):
        return True, None
    return True, rebuild(tuple(macs))
