"""DHCP (v4) following: learn the address a target MAC leases, and forget it.

A target on a DHCP network is named by its MAC: its address is not known
when the warrant is written and may change during the intercept (seed white
paper, "Intercept Content" and "Authentication, Validation"). The follower
reads the DHCP exchanges on the segment and keeps, per target MAC, the
address the server ACKed and when its lease runs out. The tap then matches
that address too, wherever the target's traffic is routed, and reports the
lease's start and end as CmII (the mapping is in :mod:`mediation.tap.builder`).

Only what following needs is parsed: the BOOTP header and options 1
(subnet mask), 50 (requested address), 51 (lease time), 53 (message type),
54 (server id) and 61 (client identifier). Option overload (52, options in
the ``sname``/``file`` fields) is not read. DHCPv6 is not followed yet.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import ipaddress
import struct

from mediation.tap.packet import PROTO_UDP, ParsedFrame

IPv4 = ipaddress.IPv4Address

SERVER_PORT = 67
CLIENT_PORT = 68
DHCP_PORTS = frozenset((SERVER_PORT, CLIENT_PORT))
MAGIC_COOKIE = b"\x63\x82\x53\x63"
_OPTIONS_AT = 240  # 236-octet BOOTP header, then the magic cookie
_INFINITE_LEASE = 0xFFFFFFFF
_ZERO = IPv4(0)

BOOTREQUEST = 1
BOOTREPLY = 2

_HEADER = struct.Struct(">BBBBIHH4s4s4s4s16s")


class MessageType(enum.IntEnum):
    """Option 53, DHCP message type (RFC 2132 section 9.6)."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


@dataclasses.dataclass(frozen=True)
class DhcpMessage:
    """The parts of one DHCP message that following needs."""

    op: int  # BOOTREQUEST (client) or BOOTREPLY (server)
    xid: int
    chaddr: bytes  # the client's hardware address (hlen octets, at most 16)
    ciaddr: IPv4  # the client's current address (renewing, releasing)
    yiaddr: IPv4  # "your" address: what the server gives
    siaddr: IPv4
    giaddr: IPv4  # relay agent
    message_type: int | None  # option 53; None for plain BOOTP
    requested_ip: IPv4 | None = None  # option 50
    lease_time: int | None = None  # option 51, seconds
    server_id: IPv4 | None = None  # option 54
    client_id: bytes | None = None  # option 61
    prefix_len: int | None = None  # from option 1, the subnet mask


def parse_dhcp(payload: bytes) -> DhcpMessage | None:
    """Parse a UDP payload as DHCP. Never raises.

    Args:
        payload: the UDP payload (after the 8-octet UDP header).

    Returns:
        The message, or ``None`` when it is too short or lacks the magic
        cookie. A truncated option ends the option list; what came before it
        is kept.
    """
    if len(payload) < _OPTIONS_AT or payload[236:240] != MAGIC_COOKIE:
        return None
    op, _htype, hlen, _hops, xid, _secs, _flags, ci, yi, si, gi, ch = _HEADER.unpack_from(payload)
    options = _options(payload)
    mask = options.get(1)
    return DhcpMessage(
        op=op,
        xid=xid,
        chaddr=ch[: min(hlen, 16)],
        ciaddr=IPv4(ci),
        yiaddr=IPv4(yi),
        siaddr=IPv4(si),
        giaddr=IPv4(gi),
        message_type=_byte(options.get(53)),
        requested_ip=_ipv4(options.get(50)),
        lease_time=int.from_bytes(options[51], "big") if len(options.get(51, b"")) == 4 else None,
        server_id=_ipv4(options.get(54)),
        client_id=options.get(61),
        prefix_len=_prefix_len(mask),
    )


def _options(payload: bytes) -> dict[int, bytes]:
    """Option code -> value; the first occurrence wins, a truncated one ends the list."""
    found: dict[int, bytes] = {}
    pos, n = _OPTIONS_AT, len(payload)
    while pos < n:
        code = payload[pos]
        if code == 0:  # pad
            pos += 1
            continue
        if code == 255 or pos + 1 >= n:  # end, or no room for a length
            break
        size = payload[pos + 1]
        value = payload[pos + 2 : pos + 2 + size]
        if len(value) < size:
            break
        found.setdefault(code, value)
        pos += 2 + size
    return found


def _byte(value: bytes | None) -> int | None:
    return value[0] if value is not None and len(value) == 1 else None


def _ipv4(value: bytes | None) -> IPv4 | None:
    return IPv4(value) if value is not None and len(value) == 4 else None


def _prefix_len(mask: bytes | None) -> int | None:
    """Prefix length of a contiguous subnet mask; None for none or a strange one."""
    if mask is None or len(mask) != 4:
        return None
    bits = int.from_bytes(mask, "big")
    ones = bin(bits).count("1")
    return ones if bits == (0xFFFFFFFF << (32 - ones)) & 0xFFFFFFFF else None


def dhcp_payload(frame: bytes, parsed: ParsedFrame) -> bytes | None:
    """The UDP payload of a frame sent to or from a DHCP port, else ``None``."""
    if parsed.protocol != PROTO_UDP or parsed.src_port is None or parsed.ip_version != 4:
        return None
    if parsed.src_port not in DHCP_PORTS and parsed.dst_port not in DHCP_PORTS:
        return None
    return frame[parsed.transport_offset + 8 : parsed.ip_offset + parsed.ip_length]


# Following -----------------------------------------------------------------------


class LeaseChange(enum.Enum):
    """What happened to a target's lease."""

    STARTED = "started"  # a new lease: the target has this address from now on
    ALREADY_ESTABLISHED = "already-established"  # first seen renewing: held before
    ENDED = "ended"


class EndReason(enum.Enum):
    """Why a followed lease ended (the text goes into SessionEnd)."""

    RELEASE = "dhcp-release"  # the client gave it back
    NAK = "dhcp-nak"  # the server refused the client's address
    DECLINE = "dhcp-decline"  # the client found the address in use
    EXPIRED = "lease-expired"  # not renewed in time
    CHANGED = "address-changed"  # the target was ACKed another address
    REASSIGNED = "address-reassigned"  # another client was ACKed this address


@dataclasses.dataclass(frozen=True)
class Lease:
    """A target MAC's current lease, as the server ACKed it."""

    mac: bytes
    address: IPv4
    session: int  # numbers this follower's leases from 1: ties start to end
    granted: dt.datetime  # capture time of the ACK that started it
    expires: dt.datetime | None  # None for an infinite or unstated lease
    lease_time: int | None
    server_id: IPv4 | None
    prefix_len: int | None
    client_id: bytes | None


@dataclasses.dataclass(frozen=True)
class AccessEvent:
    """A change to a target's lease, to report as CmII and to follow."""

    change: LeaseChange
    lease: Lease
    when: dt.datetime  # the capture time of the message, or the expiry time
    reason: EndReason | None = None


class DhcpFollower:
    """Follows the leases of a warrant's target MACs.

    Feed it every DHCP message seen (:meth:`observe`) and call
    :meth:`expire` as time passes; both return the :class:`AccessEvent`
    records to report and to apply to the matcher. No I/O, no clock: time
    is the capture time passed in.

    Args:
        macs: the target MACs, six octets each.
    """

    def __init__(self, macs: frozenset[bytes]) -> None:
        self.macs = macs
        self.leases: dict[bytes, Lease] = {}
        self.next_expiry: dt.datetime | None = None
        self._sessions = 0

    def observe(self, message: DhcpMessage, when: dt.datetime) -> list[AccessEvent]:
        """Apply one DHCP message seen at ``when``; the lease changes it causes."""
        kind = message.message_type
        mac = message.chaddr
        if kind == MessageType.ACK:
            if mac in self.macs:
                events = self._acked(mac, message, when)
            else:
                events = self._taken(message.yiaddr, when)
        elif mac not in self.macs:
            return []
        elif kind == MessageType.RELEASE:
            events = self._end_if(mac, message.ciaddr, when, EndReason.RELEASE)
        elif kind == MessageType.DECLINE:
            events = self._end_if(mac, message.requested_ip, when, EndReason.DECLINE)
        elif kind == MessageType.NAK:
            events = self._end_if(mac, None, when, EndReason.NAK)
        else:
            return []
        self._update_expiry()
        return events

    def expire(self, now: dt.datetime) -> list[AccessEvent]:
        """End every lease that ran out at or before ``now``, oldest first."""
        if self.next_expiry is None or now < self.next_expiry:
            return []
        due = sorted(
            (lease for lease in self.leases.values() if lease.expires and lease.expires <= now),
            key=lambda lease: lease.expires or now,
        )
        events = []
        for lease in due:
            del self.leases[lease.mac]
            assert lease.expires is not None
            events.append(AccessEvent(LeaseChange.ENDED, lease, lease.expires, EndReason.EXPIRED))
        self._update_expiry()
        return events

    def _acked(self, mac: bytes, message: DhcpMessage, when: dt.datetime) -> list[AccessEvent]:
        address = message.yiaddr
        if address == _ZERO:
            return []  # the answer to an INFORM: configuration, no lease
        current = self.leases.get(mac)
        expires = None
        if message.lease_time is not None and message.lease_time != _INFINITE_LEASE:
            expires = when + dt.timedelta(seconds=message.lease_time)
        if current is not None and current.address == address:
            # A renewal: the same session, a later expiry; nothing to report.
            renewed = dataclasses.replace(current, expires=expires, lease_time=message.lease_time)
            self.leases[mac] = renewed
            return []
        events = self._taken(address, when)
        if current is not None:
            del self.leases[mac]
            events.append(AccessEvent(LeaseChange.ENDED, current, when, EndReason.CHANGED))
        self._sessions += 1
        lease = Lease(
            mac,
            address,
            self._sessions,
            when,
            expires,
            message.lease_time,
            message.server_id,
            message.prefix_len,
            message.client_id,
        )
        self.leases[mac] = lease
        # ciaddr is set only by a client already using its address (RENEWING or
        # REBINDING, RFC 2131 4.3.2): a lease that began before we were watching.
        renewing = current is None and message.ciaddr != _ZERO
        change = LeaseChange.ALREADY_ESTABLISHED if renewing else LeaseChange.STARTED
        events.append(AccessEvent(change, lease, when))
        return events

    def _taken(self, address: IPv4, when: dt.datetime) -> list[AccessEvent]:
        """End any target lease on ``address``: the server gave it to someone else."""
        events = []
        for mac, lease in list(self.leases.items()):
            if lease.address == address:
                del self.leases[mac]
                events.append(AccessEvent(LeaseChange.ENDED, lease, when, EndReason.REASSIGNED))
        return events

    def _end_if(
        self, mac: bytes, address: IPv4 | None, when: dt.datetime, reason: EndReason
    ) -> list[AccessEvent]:
        """End ``mac``'s lease if it holds ``address`` (any address for ``None``)."""
        lease = self.leases.get(mac)
        if lease is None or (address is not None and address not in (lease.address, _ZERO)):
            return []
        del self.leases[mac]
        return [AccessEvent(LeaseChange.ENDED, lease, when, reason)]

    def _update_expiry(self) -> None:
        times = [lease.expires for lease in self.leases.values() if lease.expires is not None]
        self.next_expiry = min(times) if times else None
