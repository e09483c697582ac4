"""RADIUS accounting (RFC 2866): read Accounting-Requests, check their authenticator.

A subscriber on a PPPoE, hotspot or VPN network is known by the user name it
logs in with; the address comes from the access server (the NAS) and is
reported to the carrier's RADIUS server in Accounting-Request packets:
``Start`` when the session begins, ``Interim-Update`` while it lasts (with
the address it now holds), ``Stop`` when it ends. The tap reads those
packets on the wire (UDP to port 1813, or the old 1646) and follows the
addresses a target user holds (:mod:`mediation.tap.radius_follow`), as
:mod:`mediation.tap.dhcp` does for a MAC.

Only what following needs is read: attributes 1 (User-Name), 4
(NAS-IP-Address), 8 (Framed-IP-Address), 31 (Calling-Station-Id), 32
(NAS-Identifier), 40 (Acct-Status-Type), 44 (Acct-Session-Id), 49
(Acct-Terminate-Cause) and 97 (Framed-IPv6-Prefix, RFC 3162). The first of
a repeated attribute counts. Every length is checked before it is believed:
a packet whose lengths do not add up is refused whole, never half-read.

With the carrier's shared secret, the Request Authenticator is checked
(RFC 2866 section 3): ``MD5(Code + Identifier + Length + 16 zero octets +
Attributes + Secret)``. A packet that fails is refused: anyone on the
segment could otherwise send accounting that moves a target's address.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import ipaddress
import struct

from mediation.tap.packet import PROTO_UDP, ParsedFrame

IPv4 = ipaddress.IPv4Address
IPv6Network = ipaddress.IPv6Network

ACCOUNTING_PORTS = frozenset((1813, 1646))  # IANA, and the port before RFC 2866
CODE_ACCOUNTING_REQUEST = 4
HEADER_OCTETS = 20
MAX_PACKET = 4096  # RFC 2865 section 3: Length is 20 to 4096
_HEADER = struct.Struct(">BBH16s")

USER_NAME = 1
NAS_IP_ADDRESS = 4
FRAMED_IP_ADDRESS = 8
CALLING_STATION_ID = 31
NAS_IDENTIFIER = 32
ACCT_STATUS_TYPE = 40
ACCT_SESSION_ID = 44
ACCT_TERMINATE_CAUSE = 49
FRAMED_IPV6_PREFIX = 97
_READ = frozenset(
    {USER_NAME, NAS_IP_ADDRESS, FRAMED_IP_ADDRESS, CALLING_STATION_ID, NAS_IDENTIFIER}
    | {ACCT_STATUS_TYPE, ACCT_SESSION_ID, ACCT_TERMINATE_CAUSE, FRAMED_IPV6_PREFIX}
)
# 255.255.255.255 and .254 in Framed-IP-Address ask the NAS to choose
# (RFC 2865 5.8): they are not addresses anyone holds.
_NOT_ADDRESSES = frozenset((IPv4("255.255.255.255"), IPv4("255.255.255.254"), IPv4(0)))


class StatusType(enum.IntEnum):
    """Acct-Status-Type (RFC 2866 section 5.1)."""

    START = 1
    STOP = 2
    INTERIM_UPDATE = 3
    ACCOUNTING_ON = 7  # the NAS (re)started: every session it had is gone
    ACCOUNTING_OFF = 8  # the NAS is going down: likewise


# Acct-Terminate-Cause (RFC 2866 section 5.10) as reasonForTermination text.
TERMINATE_CAUSES = {
    1: "user-request",
    2: "lost-carrier",
    3: "lost-service",
    4: "idle-timeout",
    5: "session-timeout",
    6: "admin-reset",
    7: "admin-reboot",
    8: "port-error",
    9: "nas-error",
    10: "nas-request",
    11: "nas-reboot",
}


class RadiusRefusal(enum.Enum):
    """Why an accounting packet was not believed; the value names its counter."""

    TRUNCATED = "truncated"  # fewer octets than the header or its Length
    BAD_LENGTH = "bad-length"  # Length outside 20..4096
    NOT_ACCOUNTING_REQUEST = "not-accounting-request"  # code is not 4
    BAD_ATTRIBUTE = "bad-attribute"  # an attribute's length or value is impossible
    NO_STATUS_TYPE = "no-status-type"
    NO_SESSION_ID = "no-session-id"
    BAD_AUTHENTICATOR = "bad-authenticator"


class RadiusError(ValueError):
    """One refused packet; ``reason`` is the :class:`RadiusRefusal` to count."""

    def __init__(self, reason: RadiusRefusal, detail: str) -> None:
        super().__init__(f"RADIUS {reason.value}: {detail}")
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class AccountingRequest:
    """The parts of one Accounting-Request that following needs."""

    identifier: int
    status: int  # Acct-Status-Type; see StatusType
    session_id: str  # Acct-Session-Id
    user_name: bytes | None = None  # as sent: compared octet for octet
    framed_ip: IPv4 | None = None
    framed_prefix: IPv6Network | None = None
    calling_station_id: str | None = None
    nas: str | None = None  # NAS-Identifier, else NAS-IP-Address as text
    terminate_cause: int | None = None
    verified: bool = False  # the authenticator was checked against a secret


def accounting_payload(frame: bytes, parsed: ParsedFrame) -> bytes | None:
    """The UDP payload of a frame sent to a RADIUS accounting port, else ``None``.

    Only packets *to* the accounting port: the server's responses carry
    nothing about the session.
    """
    if parsed.protocol != PROTO_UDP or parsed.dst_port not in ACCOUNTING_PORTS:
        return None
    return frame[parsed.transport_offset + 8 : parsed.ip_offset + parsed.ip_length]


def request_authenticator(packet: bytes, secret: bytes) -> bytes:
    """The Request Authenticator RFC 2866 section 3 defines for ``packet``.

    Args:
        packet: the whole packet, Length octets (its own authenticator is
            replaced by 16 zero octets in the hash).
        secret: the shared secret.
    """
    return hashlib.md5(packet[:4] + bytes(16) + packet[20:] + secret).digest()


def parse_accounting(payload: bytes, secret: bytes | None = None) -> AccountingRequest:
    """Read one Accounting-Request.

    Args:
        payload: the UDP payload; octets past the packet's Length are padding.
        secret: the shared secret, to check the authenticator; ``None``: not checked.

    Returns:
        The request (``verified`` is set when a secret was given).

    Raises:
        RadiusError: the packet is refused; ``reason`` says why. Nothing else.
    """
    if len(payload) < HEADER_OCTETS:
        raise RadiusError(RadiusRefusal.TRUNCATED, f"{len(payload)} octets, the header is 20")
    code, identifier, length, authenticator = _HEADER.unpack_from(payload)
    if not HEADER_OCTETS <= length <= MAX_PACKET:
        raise RadiusError(RadiusRefusal.BAD_LENGTH, f"Length {length}, must be 20 to 4096")
    if len(payload) < length:
        raise RadiusError(RadiusRefusal.TRUNCATED, f"Length {length}, {len(payload)} octets")
    if code != CODE_ACCOUNTING_REQUEST:
        raise RadiusError(RadiusRefusal.NOT_ACCOUNTING_REQUEST, f"code {code}, not 4")
    packet = bytes(payload[:length])
    attributes = _attributes(packet)
    if secret is not None and request_authenticator(packet, secret) != authenticator:
        raise RadiusError(RadiusRefusal.BAD_AUTHENTICATOR, "Request Authenticator does not match")
    return _request(identifier, attributes, verified=secret is not None)


def _attributes(packet: bytes) -> dict[int, bytes]:
    """Type -> value of the attributes following needs; the first of each wins."""
    found: dict[int, bytes] = {}
    pos, n = HEADER_OCTETS, len(packet)
    while pos < n:
        if pos + 2 > n:
            raise RadiusError(RadiusRefusal.BAD_ATTRIBUTE, f"attribute at {pos} has no length")
        kind, size = packet[pos], packet[pos + 1]
        if size < 2 or pos + size > n:
            raise RadiusError(
                RadiusRefusal.BAD_ATTRIBUTE, f"attribute {kind} at {pos} has length {size}"
            )
        if kind in _READ:
            found.setdefault(kind, packet[pos + 2 : pos + size])
        pos += size
    return found


def _request(identifier: int, attrs: dict[int, bytes], *, verified: bool) -> AccountingRequest:
    status = _integer(attrs, ACCT_STATUS_TYPE)
    if status is None:
        raise RadiusError(RadiusRefusal.NO_STATUS_TYPE, "no Acct-Status-Type (40)")
    session = attrs.get(ACCT_SESSION_ID)
    if not session:
        raise RadiusError(RadiusRefusal.NO_SESSION_ID, "no Acct-Session-Id (44)")
    framed = attrs.get(FRAMED_IP_ADDRESS)
    if framed is not None and len(framed) != 4:
        raise RadiusError(RadiusRefusal.BAD_ATTRIBUTE, "Framed-IP-Address (8) is not 4 octets")
    address = IPv4(framed) if framed is not None else None
    nas = _text(attrs.get(NAS_IDENTIFIER))
    nas_ip = attrs.get(NAS_IP_ADDRESS)
    if nas is None and nas_ip is not None and len(nas_ip) == 4:
        nas = str(IPv4(nas_ip))
    return AccountingRequest(
        identifier=identifier,
        status=status,
        session_id=_text(session) or "",
        user_name=attrs.get(USER_NAME),
        framed_ip=None if address in _NOT_ADDRESSES else address,
        framed_prefix=_prefix(attrs.get(FRAMED_IPV6_PREFIX)),
        calling_station_id=_text(attrs.get(CALLING_STATION_ID)),
        nas=nas,
        terminate_cause=_integer(attrs, ACCT_TERMINATE_CAUSE),
        verified=verified,
    )


def _integer(attrs: dict[int, bytes], kind: int) -> int | None:
    value = attrs.get(kind)
    if value is None:
        return None
    if len(value) != 4:
        raise RadiusError(RadiusRefusal.BAD_ATTRIBUTE, f"attribute {kind} is not 4 octets")
    return int.from_bytes(value, "big")


def _text(value: bytes | None) -> str | None:
    """A text attribute as text; octets that are not UTF-8 become U+FFFD."""
    return None if value is None else value.decode("utf-8", "replace")


def _prefix(value: bytes | None) -> IPv6Network | None:
    """Framed-IPv6-Prefix: reserved, prefix length, then the prefix's significant octets."""
    if value is None:
        return None
    if len(value) < 2 or value[1] > 128 or len(value) - 2 > 16:
        raise RadiusError(RadiusRefusal.BAD_ATTRIBUTE, "Framed-IPv6-Prefix (97) is malformed")
    length = value[1]
    if len(value) - 2 < (length + 7) // 8:
        raise RadiusError(RadiusRefusal.BAD_ATTRIBUTE, "Framed-IPv6-Prefix (97) is cut short")
    raw = value[2:].ljust(16, b"\x00")
    return IPv6Network((int.from_bytes(raw, "big"), length), strict=False)


def accounting_response(request: bytes, secret: bytes) -> bytes:
    """The Accounting-Response (code 5) that acknowledges ``request`` (RFC 2866 section 3).

    Its Response Authenticator is ``MD5(Code + Identifier + Length + Request
    Authenticator + Attributes + Secret)``; no attributes are sent.

    Args:
        request: the Accounting-Request as received (at least its header).
        secret: the shared secret.
    """
    header = struct.pack(">BBH", 5, request[1], HEADER_OCTETS)
    return header + hashlib.md5(header + request[4:20] + secret).digest()


def encode_accounting(
    status: int,
    session_id: str,
    *,
    user_name: str | None = None,
    framed_ip: str | None = None,
    framed_prefix: str | None = None,
    calling_station_id: str | None = None,
    nas_identifier: str | None = None,
    terminate_cause: int | None = None,
    identifier: int = 0,
    secret: bytes = b"",
) -> bytes:
    """One Accounting-Request, signed with ``secret`` (for tests and fixtures).

    Raises:
        ValueError: a value too long for one attribute.
    """
    attrs: list[tuple[int, bytes]] = [(ACCT_STATUS_TYPE, status.to_bytes(4, "big"))]
    attrs.append((ACCT_SESSION_ID, session_id.encode()))
    if user_name is not None:
        attrs.append((USER_NAME, user_name.encode()))
    if framed_ip is not None:
        attrs.append((FRAMED_IP_ADDRESS, IPv4(framed_ip).packed))
    if framed_prefix is not None:
        net = IPv6Network(framed_prefix)
        octets = net.network_address.packed[: (net.prefixlen + 7) // 8]
        attrs.append((FRAMED_IPV6_PREFIX, bytes((0, net.prefixlen)) + octets))
    if calling_station_id is not None:
        attrs.append((CALLING_STATION_ID, calling_station_id.encode()))
    if nas_identifier is not None:
        attrs.append((NAS_IDENTIFIER, nas_identifier.encode()))
    if terminate_cause is not None:
        attrs.append((ACCT_TERMINATE_CAUSE, terminate_cause.to_bytes(4, "big")))
    body = b""
    for kind, value in attrs:
        if len(value) > 253:
            raise ValueError(f"attribute {kind} is longer than 253 octets")
        body += bytes((kind, len(value) + 2)) + value
    header = struct.pack(">BBH", CODE_ACCOUNTING_REQUEST, identifier, HEADER_OCTETS + len(body))
    unsigned = header + bytes(16) + body
    return header + request_authenticator(unsigned, secret) + body
