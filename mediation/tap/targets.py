"""Which frames are the target's, and which way they go.

A warrant names its target by IPv4/IPv6 addresses and prefixes, MAC
addresses and interface names (:class:`mediation.warrants.model.Target`).
:class:`TargetMatcher` turns those into sets of packed octets once, so the
decision per frame, made for every frame on the wire, is a few set lookups.

Matching by MAC address catches everything the target's equipment sends
or receives on the segment, including out-of-band traffic that has no
address of the target yet (DHCP, ARP); matching by IP address catches its
traffic wherever it is routed, but only once the address is known. The
tap's DHCP follower adds and removes the addresses a target MAC leases
(:meth:`TargetMatcher.follow` / :meth:`TargetMatcher.unfollow`), so a
MAC warrant keeps up with the target when its address changes. A ``user:``
target matches nothing by itself: the RADIUS follower adds the addresses
and IPv6 prefixes the user's accounting sessions hold
(:meth:`TargetMatcher.follow_prefix` for a prefix).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable

from mediation.tap.link_layer import ETH_ARP, arp_addresses
from mediation.tap.packet import ParsedFrame
from mediation.warrants.model import Target, TargetKind, Warrant

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


class Direction(enum.Enum):
    """How a matched frame relates to the subject.

    ``UNKNOWN`` is for a frame matched only by its interface with no
    capture direction to tell (the CC header then leaves packetDirection out).
    """

    FROM_SUBJECT = "fromSubject"
    TO_SUBJECT = "toSubject"
    UNKNOWN = "unknown"


FROM_SUBJECT = Direction.FROM_SUBJECT
TO_SUBJECT = Direction.TO_SUBJECT
UNKNOWN = Direction.UNKNOWN

# Linux PACKET_OUTGOING: the capturing host sent the frame. On an
# interface that faces the target, that is toward the subject.
_SLL_OUTGOING = 4


def mac_octets(text: str) -> bytes:
    """Six octets of a MAC written ``02:00:5e:00:53:01`` (``-`` or ``.`` also)."""
    digits = text.replace(":", "").replace("-", "").replace(".", "")
    raw = bytes.fromhex(digits)
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {len(raw)} octets")
    return raw


Scope = tuple[int | None, str | None]  # (outermost VLAN id, capture interface)


class _Targets:
    """One scope's targets as sets of packed octets; the per-frame decision."""

    def __init__(self) -> None:
        self.macs: set[bytes] = set()
        self.static: set[bytes] = set()
        self.learned: set[bytes] = set()
        self.addresses: frozenset[bytes] = frozenset()
        self.prefixes4: list[tuple[int, int]] = []
        self.prefixes6: list[tuple[int, int]] = []
        self.interfaces: set[str] = set()

    def add(self, target: Target) -> None:
        if target.kind is TargetKind.MAC:
            self.macs.add(mac_octets(target.value))
        elif target.kind is TargetKind.ADDRESS:
            self.static.add(ipaddress.ip_address(target.value).packed)
        elif target.kind is TargetKind.PREFIX:
            net = ipaddress.ip_network(target.value)
            entry = (int(net.network_address), int(net.netmask))
            (self.prefixes4 if net.version == 4 else self.prefixes6).append(entry)
        elif target.kind is TargetKind.INTERFACE:
            self.interfaces.add(target.value)
        self.addresses = frozenset(self.static | self.learned)

    def relearn(self) -> None:
        self.addresses = frozenset(self.static | self.learned)

    def match(
        self, frame: ParsedFrame, interface: str | None, outgoing: bool | None
    ) -> Direction | None:
        macs = self.macs
        if macs:
            if frame.src_mac in macs:
                return FROM_SUBJECT
            if frame.dst_mac in macs:
                return TO_SUBJECT
        src = frame.src_raw
        if src is not None:
            addresses = self.addresses
            if src in addresses:
                return FROM_SUBJECT
            if frame.dst_raw in addresses:
                return TO_SUBJECT
            prefixes = self.prefixes4 if len(src) == 4 else self.prefixes6
            if prefixes:
                found = _in_prefixes(src, frame.dst_raw, prefixes)
                if found is not None:
                    return found
        if interface is not None and interface in self.interfaces:
            return _interface_direction(frame, outgoing)
        return None


class TargetMatcher:
    """Decides per parsed frame whether it is the target's, and its direction.

    Exact addresses and MACs are sets of packed octets; prefixes are a short
    list of ``(network, mask)`` integers, tried only when no exact address
    matched. Learned addresses (DHCP) live in their own set so that
    forgetting one never removes an address the warrant itself lists.

    Targets scoped to a VLAN and/or an interface (``Target.vlan``,
    ``Target.interface``) are kept apart, one group per scope, and a group
    is tried only for frames inside its scope: the frame's outermost VLAN
    tag is the scope's VLAN id, and it was captured on the scope's
    interface. An IP address or prefix also matches ARP whose sender
    (fromSubject) or target (toSubject) protocol address it is, as
    libpcap's ``host`` and ``net`` do.

    Args:
        targets: the warrant's targets.

    Raises:
        ValueError: a target value that cannot be read (the registry
            validates targets, so this means a corrupt record). The message
            names the target by position, never by value.
    """

    def __init__(self, targets: Iterable[Target]) -> None:
        self._core = _Targets()
        groups: dict[Scope, _Targets] = {}
        self.targets: tuple[Target, ...] = tuple(targets)
        for index, target in enumerate(self.targets):
            group = self._core
            if target.scoped:
                group = groups.setdefault((target.vlan, target.interface), _Targets())
            try:
                group.add(target)
            except ValueError:
                # ipaddress puts the value in its message; a target must never
                # reach a log, so say which one by position only.
                raise ValueError(
                    f"target {index + 1} ({target.kind.value}) is unreadable"
                ) from None
        self._scoped: tuple[tuple[Scope, _Targets], ...] = tuple(groups.items())
        every = [self._core] + [g for _, g in self._scoped]
        self.macs: frozenset[bytes] = frozenset().union(*(g.macs for g in every))
        self.interfaces: frozenset[str] = frozenset().union(*(g.interfaces for g in every))
        self._static = frozenset().union(*(g.static for g in every))
        self.users: frozenset[bytes] = frozenset(
            t.value.encode("utf-8") for t in self.targets if t.kind is TargetKind.USER
        )
        # Prefixes learned by following (RADIUS Framed-IPv6-Prefix): (network, mask).
        self._learned6: tuple[tuple[int, int], ...] = ()
        self._learned: set[bytes] = set()
        self._arp = any(g.addresses or g.prefixes4 for g in every)

    @classmethod
    def from_warrant(cls, warrant: Warrant) -> TargetMatcher:
        """The matcher for a warrant whose case details are loaded.

        Raises:
            ValueError: the warrant's details are not loaded (no registry key).
        """
        if warrant.details is None:
            raise ValueError(f"warrant {warrant.handle}: case details are not loaded")
        return cls(warrant.details.targets)

    # Following ---------------------------------------------------------------

    def follow(self, address: IPAddr, mac: bytes | None = None) -> None:
        """Match ``address`` too, until :meth:`unfollow` (a leased address).

        Args:
            address: the leased address.
            mac: the target MAC that leased it: the address gets that MAC's
                scope(s). ``None``: unscoped.
        """
        raw = address.packed
        self._learned.add(raw)
        for group in self._groups_of(mac):
            group.learned.add(raw)
            group.relearn()
        self._arp = True

    def unfollow(self, address: IPAddr) -> None:
        """Stop matching a learned ``address``; one the warrant lists stays."""
        raw = address.packed
        self._learned.discard(raw)
        for group in (self._core, *(g for _, g in self._scoped)):
            if raw in group.learned:
                group.learned.discard(raw)
                group.relearn()

    def follow_prefix(self, network: ipaddress.IPv6Network) -> None:
        """Match every address in ``network`` too, until :meth:`unfollow_prefix`."""
        entry = (int(network.network_address), int(network.netmask))
        if entry not in self._learned6:
            self._learned6 += (entry,)

    def unfollow_prefix(self, network: ipaddress.IPv6Network) -> None:
        """Stop matching a learned prefix; prefixes the warrant lists stay."""
        entry = (int(network.network_address), int(network.netmask))
        self._learned6 = tuple(e for e in self._learned6 if e != entry)

    def is_learned(self, raw: bytes | None) -> bool:
        """Whether packed ``raw`` is an address learned by following (not listed)."""
        if raw in self._static:
            return False
        if raw in self._learned:
            return True
        return (
            bool(self._learned6)
            and raw is not None
            and len(raw) == 16
            and (_in_prefixes(raw, None, self._learned6) is not None)
        )

    def learned_state(self) -> tuple[object, ...]:
        """What following has learned, for :meth:`set_learned` on a matcher of the same targets.

        Capture workers (mediation/tap/workers.py) follow in one process and
        copy the result to the others with this.
        """
        groups = (self._core, *(g for _, g in self._scoped))
        per_group = tuple(frozenset(g.learned) for g in groups)
        return (frozenset(self._learned), self._learned6, per_group, self._arp)

    def set_learned(self, state: tuple[object, ...]) -> None:
        """Take over what another matcher of the same targets learned (:meth:`learned_state`).

        Raises:
            ValueError: the state is of a matcher with other scopes.
        """
        learned, learned6, per_group, arp = state
        groups = (self._core, *(g for _, g in self._scoped))
        if len(per_group) != len(groups):  # type: ignore[arg-type]
            raise ValueError("learned state of a matcher with other targets")
        self._learned = set(learned)  # type: ignore[call-overload]
        self._learned6 = learned6  # type: ignore[assignment]
        for group, addresses in zip(groups, per_group, strict=True):  # type: ignore[call-overload]
            group.learned = set(addresses)
            group.relearn()
        self._arp = bool(arp)

    @property
    def follows_users(self) -> bool:
        """Whether the warrant names user names, whose RADIUS sessions can be followed."""
        return bool(self.users)

    @property
    def follows_macs(self) -> bool:
        """Whether the warrant names MACs, whose leases can be followed."""
        return bool(self.macs)

    @property
    def plain_addresses(self) -> frozenset[bytes] | None:
        """The packed addresses, when the targets are nothing but unscoped exact addresses.

        Then a frame is the target's exactly when its source or destination
        address is one of these (an ARP frame aside, which names them
        elsewhere): what a prefilter may test before parsing the frame
        (:func:`mediation.tap.packet.ipv4_addresses`). ``None`` for any
        other target (MAC, prefix, interface, user, scoped), whose matching
        needs the parsed frame or follows leases.
        """
        core = self._core
        if self._scoped or core.macs or core.prefixes4 or core.prefixes6 or core.interfaces:
            return None
        if self.users or self._learned or self._learned6:
            return None
        return core.addresses

    def _groups_of(self, mac: bytes | None) -> list[_Targets]:
        if mac is None:
            return [self._core]
        found = [g for g in (self._core, *(g for _, g in self._scoped)) if mac in g.macs]
        return found or [self._core]

    # Scope -------------------------------------------------------------------

    def _in_scope(self, frame: ParsedFrame, interface: str | None) -> list[_Targets]:
        """The scoped groups whose VLAN and interface admit this frame."""
        vlan = frame.vlans[0] if frame.vlans else None
        return [
            group
            for (want_vlan, want_iface), group in self._scoped
            if (want_vlan is None or want_vlan == vlan)
            and (want_iface is None or want_iface == interface)
        ]

    def mac_in_scope(self, mac: bytes, frame: ParsedFrame, interface: str | None) -> bool:
        """Whether ``mac`` is a target MAC whose scope admits this frame (DHCP chaddr)."""
        if mac in self._core.macs:
            return True
        return any(mac in g.macs for g in self._in_scope(frame, interface))

    def dhcp_in_scope(self, frame: ParsedFrame, interface: str | None) -> bool:
        """Whether any target MAC's scope admits this frame, so its DHCP is followed."""
        if self._core.macs:
            return True
        return any(g.macs for g in self._in_scope(frame, interface))

    # Matching ----------------------------------------------------------------

    def match(
        self,
        frame: ParsedFrame,
        interface: str | None = None,
        *,
        raw: bytes | None = None,
        outgoing: bool | None = None,
    ) -> Direction | None:
        """The frame's direction if it is the target's, else ``None``.

        A frame whose source is the target is ``FROM_SUBJECT``, even when its
        destination is the target too (the subject sent it). MACs are tried
        first, then addresses, then prefixes, then the interface; unscoped
        targets before scoped ones.

        Args:
            frame: the parsed frame.
            interface: the name of the interface it was captured on, if known.
            raw: the frame's octets, to read ARP addresses from (an IP target
                then matches ARP sent by or for it). Without it ARP matches
                only by MAC.
            outgoing: the capture said the host sent the frame (Linux
                PACKET_OUTGOING), for ``iface:`` targets; ``None`` if unknown.
        """
        if raw is not None and frame.src_raw is None and frame.ethertype == ETH_ARP and self._arp:
            addresses = arp_addresses(raw, frame)
            if addresses is not None:
                frame = frame._replace(src_raw=addresses[0], dst_raw=addresses[1])
        found = self._core.match(frame, interface, outgoing)
        src = frame.src_raw
        if found is None and self._learned6 and src is not None and len(src) == 16:
            found = _in_prefixes(src, frame.dst_raw, self._learned6)
        if found is not None or not self._scoped:
            return found
        for group in self._in_scope(frame, interface):
            found = group.match(frame, interface, outgoing)
            if found is not None:
                return found
        return None


def _in_prefixes(
    src: bytes, dst: bytes | None, prefixes: list[tuple[int, int]]
) -> Direction | None:
    s = int.from_bytes(src, "big")
    d = int.from_bytes(dst, "big") if dst is not None else -1
    for net, mask in prefixes:
        if s & mask == net:
            return FROM_SUBJECT
    for net, mask in prefixes:
        if d >= 0 and d & mask == net:
            return TO_SUBJECT
    return None


def _interface_direction(frame: ParsedFrame, outgoing: bool | None = None) -> Direction:
    """Direction on an interface that faces the target: from the capture or SLL if it says."""
    if outgoing is not None:
        return TO_SUBJECT if outgoing else FROM_SUBJECT
    packet_type = frame.sll_packet_type
    if packet_type is None:
        return UNKNOWN
    return TO_SUBJECT if packet_type == _SLL_OUTGOING else FROM_SUBJECT
