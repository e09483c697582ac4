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


class TargetMatcher:
    """Decides per parsed frame whether it is the target's, and its direction.

    Exact addresses and MACs are sets of packed octets; prefixes are a short
    list of ``(network, mask)`` integers, tried only when no exact address
    matched. Learned addresses (DHCP) live in their own set so that
    forgetting one never removes an address the warrant itself lists.

    Args:
        targets: the warrant's targets.

    Raises:
        ValueError: a target value that cannot be read (the registry
            validates targets, so this means a corrupt record). The message
            names the target by position, never by value.
    """

    def __init__(self, targets: Iterable[Target]) -> None:
        macs: set[bytes] = set()
        static: set[bytes] = set()
        prefixes4: list[tuple[int, int]] = []
        prefixes6: list[tuple[int, int]] = []
        interfaces: set[str] = set()
        users: set[bytes] = set()
        for index, target in enumerate(targets):
            try:
                if target.kind is TargetKind.MAC:
                    macs.add(mac_octets(target.value))
                elif target.kind is TargetKind.ADDRESS:
                    static.add(ipaddress.ip_address(target.value).packed)
                elif target.kind is TargetKind.PREFIX:
                    net = ipaddress.ip_network(target.value)
                    entry = (int(net.network_address), int(net.netmask))
                    (prefixes4 if net.version == 4 else prefixes6).append(entry)
                elif target.kind is TargetKind.INTERFACE:
                    interfaces.add(target.value)
                elif target.kind is TargetKind.USER:
                    users.add(target.value.encode("utf-8"))
            except ValueError:
                # ipaddress puts the value in its message; a target must never
                # reach a log, so say which one by position only.
                raise ValueError(
                    f"target {index + 1} ({target.kind.value}) is unreadable"
                ) from None
        self.macs: frozenset[bytes] = frozenset(macs)
        self.interfaces: frozenset[str] = frozenset(interfaces)
        self.users: frozenset[bytes] = frozenset(users)
        # Prefixes learned by following (RADIUS Framed-IPv6-Prefix): (network, mask).
        self._learned6: tuple[tuple[int, int], ...] = ()
        self._static = frozenset(static)
        self._learned: set[bytes] = set()
        self._addresses: frozenset[bytes] = self._static
        self._prefixes4 = tuple(prefixes4)
        self._prefixes6 = tuple(prefixes6)

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

    def follow(self, address: IPAddr) -> None:
        """Match ``address`` too, until :meth:`unfollow` (a leased address)."""
        self._learned.add(address.packed)
        self._addresses = self._static | self._learned

    def unfollow(self, address: IPAddr) -> None:
        """Stop matching a learned ``address``; one the warrant lists stays."""
        self._learned.discard(address.packed)
        self._addresses = self._static | self._learned

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

    @property
    def follows_users(self) -> bool:
        """Whether the warrant names user names, whose RADIUS sessions can be followed."""
        return bool(self.users)

    @property
    def follows_macs(self) -> bool:
        """Whether the warrant names MACs, whose leases can be followed."""
        return bool(self.macs)

    # Matching ----------------------------------------------------------------

    def match(self, frame: ParsedFrame, interface: str | None = None) -> Direction | None:
        """The frame's direction if it is the target's, else ``None``.

        A frame whose source is the target is ``FROM_SUBJECT``, even when its
        destination is the target too (the subject sent it). MACs are tried
        first, then addresses, then prefixes, then the interface.

        Args:
            frame: the parsed frame.
            interface: the name of the interface it was captured on, if known.
        """
        macs = self.macs
        if macs:
            if frame.src_mac in macs:
                return FROM_SUBJECT
            if frame.dst_mac in macs:
                return TO_SUBJECT
        src = frame.src_raw
        if src is not None:
            addresses = self._addresses
            if src in addresses:
                return FROM_SUBJECT
            if frame.dst_raw in addresses:
                return TO_SUBJECT
            prefixes = self._prefixes4 if frame.ip_version == 4 else self._prefixes6
            if prefixes:
                found = _in_prefixes(src, frame.dst_raw, prefixes)
                if found is not None:
                    return found
            if self._learned6 and frame.ip_version == 6:
                found = _in_prefixes(src, frame.dst_raw, self._learned6)
                if found is not None:
                    return found
        if interface is not None and interface in self.interfaces:
            return _interface_direction(frame)
        return None


def _in_prefixes(
    src: bytes, dst: bytes | None, prefixes: tuple[tuple[int, int], ...]
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


def _interface_direction(frame: ParsedFrame) -> Direction:
    """Direction on an interface that faces the target: from SLL if it says."""
    packet_type = frame.sll_packet_type
    if packet_type is None:
        return UNKNOWN
    return TO_SUBJECT if packet_type == _SLL_OUTGOING else FROM_SUBJECT
