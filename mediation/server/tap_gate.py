"""The per-PDU checks of a tap's batches: which warrant a PDU is for, and is it the target's.

:class:`TapGate` holds the warrants one tap may feed now. For each PDU it
finds the one warrant with the PDU's case identity, and then checks what
the PDU itself carries against that warrant's targets (docs/tap-link.md,
"What the server checks"):

- **Content (CmCC)** carries the IP packet: for a warrant whose targets
  are all addresses or prefixes, its source or destination must be one.
- **Header reports (CmII)** carry the packet's two addresses: the same check.
- **Link-layer frame reports (CmII)** (ARP and other frames without an IP
  packet) carry the frame's MACs and VLAN ids in their text: for a warrant
  whose targets are all MACs, one of the MACs must be a target's, within
  the target's VLAN scope.

Nothing a PDU carries names the capture interface, so interface scopes
cannot be checked here; nor can MACs or VLANs in content or header reports
(they carry no link layer), nor session messages of followed leases.
Those are believed as the authenticated tap sent them.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import struct

from mediation.pdu.errors import PDUError
from mediation.pdu.fast_identity import cc_packet, first_headers, header, ip_pair
from mediation.pdu.fast_signaling import first_message
from mediation.pdu.tlv import read_header
from mediation.tap.packet import LINKTYPE_ETHERNET, LINKTYPE_RAW, parse_frame
from mediation.tap.targets import TargetMatcher, mac_octets
from mediation.warrants.model import Target, TargetKind, Warrant

_HEADER_REPORT, _SIGNALING_REPORT = 0xAA, 0xA5  # CmIIMessage alternatives (IMPLICIT tags)
_HEADER_SET, _SOURCE, _DESTINATION = 0xA4, 0xA1, 0xA2
_LINK_FRAME = "link-layer frame "
PAIRS = 4096  # address pairs whose answer a gate remembers
_LINK_TOKEN = re.compile(r"(src|dst|vlan|ethertype)=([0-9a-fx:]{1,17})(?= |$)")
# ARP and RARP: a MAC target's tap also takes those asking for the address it
# leased (sent by others' MACs), so their MACs prove nothing either way.
_ADDRESS_RESOLUTION = ("0x0806", "0x8035")


def case_identity(kind: str, der: bytes) -> str | None:
    """The case identity inside a CmII or CmCC PDU, or None if it has none or is malformed."""
    try:
        if kind == "cmII":  # SEQUENCE { OID, [n] { [0] caseId, ... } }
            _t, pos, size = read_header(der, 0)
            _t, oid, oid_size = read_header(der, pos, pos + size)
            tag, body, body_size = read_header(der, oid + oid_size, pos + size)
            tag, value, value_size = read_header(der, body, body + body_size)
            return der[value : value + value_size].decode("ascii") if tag == 0x80 else None
        # SEQUENCE { [0] header { [0] correlationInfo { [0] caseId OPTIONAL ...
        _t, pos, size = read_header(der, 0)
        tag, header, header_size = read_header(der, pos, pos + size)
        if tag != 0xA0:
            return None
        tag, info, info_size = read_header(der, header, header + header_size)
        if tag != 0xA0:
            return None
        tag, value, value_size = read_header(der, info, info + info_size)
        return der[value : value + value_size].decode("ascii") if tag == 0x80 else None
    except (PDUError, UnicodeDecodeError):
        return None


def cc_payload(der: bytes) -> bytes | None:
    """The packet inside an ``IAS-CC-APDU`` (its ``[1] payload``), or None."""
    try:
        _t, pos, size = read_header(der, 0)
        end = pos + size
        while pos < end:
            tag, start, length = read_header(der, pos, end)
            if tag == 0x81:
                return der[start : start + length]
            pos = start + length
    except PDUError:
        return None
    return None


def header_addresses(der: bytes) -> tuple[bytes, bytes] | None:
    """The source and destination address (packed) of a data-Header-Report, else None.

    None also for any other CmII message, or a malformed one.
    """
    try:
        _t, pos, size = read_header(der, 0)
        end = pos + size
        _t, oid, oid_size = read_header(der, pos, end)
        tag, body, body_size = read_header(der, oid + oid_size, end)
    except PDUError:
        return None
    return _addresses_in(der, body, body + body_size) if tag == _HEADER_REPORT else None


def _addresses_in(der: bytes, body: int, body_end: int) -> tuple[bytes, bytes] | None:
    """:func:`header_addresses` from the data-Header-Report's contents (``der[body:body_end]``)."""
    try:
        start, stop = _find(der, body, body_end, _HEADER_SET)
        found = []
        for tag in (_SOURCE, _DESTINATION):
            at, field_end = _find(der, start, stop, tag)
            _t, inner, inner_end = header(der, at, field_end)  # address [0] IpAddress
            _t, value, value_end = header(der, inner, inner_end)
            found.append(der[value:value_end])
            start = field_end
        return found[0], found[1]
    except (PDUError, KeyError):
        return None


def _find(der: bytes, pos: int, end: int, want: int) -> tuple[int, int]:
    """(contents start, end) of the first TLV tagged ``want`` in ``der[pos:end]``.

    Raises:
        KeyError: there is none.
    """
    while pos < end:
        tag, start, stop = header(der, pos, end)
        if tag == want:
            return start, stop
        pos = stop
    raise KeyError(want)


def _ip_packet(src: bytes, dst: bytes) -> bytes | None:
    """A minimal IP header between two addresses, for the matcher to read."""
    if len(src) == len(dst) == 4:
        return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20, 0, 0, 64, 17, 0, src, dst)
    if len(src) == len(dst) == 16:
        return struct.pack(">IHBB16s16s", 6 << 28, 0, 59, 64, src, dst)
    return None


def link_frame(der: bytes) -> bytes | None:
    """The frame a link-layer frame report describes (MACs, VLAN tags, no payload), else None.

    None also for ARP and RARP (see ``_ADDRESS_RESOLUTION``).

    The report's text is the tap's (mediation/tap/builder.py): ``link-layer
    frame src=MAC dst=MAC vlan=N ... ethertype=0x0806 ...``.
    """
    text = first_message(der)  # the reference's answer, read directly (pdu/fast_signaling.py)
    if text is None or not text.startswith(_LINK_FRAME):
        return None
    fields = collections.defaultdict(list)
    for name, value in _LINK_TOKEN.findall(text):
        fields[name].append(value)
    if any(kind in _ADDRESS_RESOLUTION for kind in fields["ethertype"]):
        return None
    try:
        src = mac_octets(fields["src"][0]) if fields["src"] else bytes(6)
        dst = mac_octets(fields["dst"][0]) if fields["dst"] else bytes(6)
        tags = b"".join(struct.pack(">HH", 0x8100, int(v) & 0xFFF) for v in fields["vlan"][:8])
    except ValueError:
        return None
    return dst + src + tags + b"\x08\x06"


class TapGate:
    """The warrants one tap may feed, and the per-PDU checks against them.

    Args:
        name: the tap.
        warrants: the active warrants it serves (``WarrantTable.warrants_for_tap``).
    """

    def __init__(self, name: str, warrants: list[Warrant]) -> None:
        self.name = name
        by_case: dict[str, list[Warrant]] = collections.defaultdict(list)
        for warrant in warrants:
            if warrant.details is not None:
                by_case[warrant.details.case_id].append(warrant)
        self._by_case = dict(by_case)
        # The served case identities as the PDU carries them (ASCII octets), each
        # with its one warrant: a case of several warrants is served by none.
        self._single = {
            case.encode("ascii"): found[0].handle
            for case, found in self._by_case.items()
            if len(found) == 1 and case.isascii()
        }
        self._matchers: dict[str, TargetMatcher | None] = {}
        self._mac_matchers: dict[str, TargetMatcher | None] = {}
        self._pairs: dict[tuple[int, tuple[bytes, bytes]], bool] = {}
        for warrant in warrants:
            details = warrant.details
            if details is None:
                continue
            self._matchers[warrant.handle] = _address_matcher(details.targets)
            self._mac_matchers[warrant.handle] = _mac_matcher(details.targets)

    def warrant_for(self, kind: str, der: bytes) -> tuple[str | None, str]:
        """``(handle, "")`` for the warrant a PDU belongs to, or ``(None, reason)``.

        The PDU's first headers are read once (``first_headers``); a PDU
        not in the common forms gets the reference readers' answer
        (:meth:`_warrant_for_reference`), which this always equals.
        """
        head = first_headers(kind, der)
        if head is None:
            return self._warrant_for_reference(kind, der)
        case, tag, start, stop = head
        handle = self._single.get(case)
        if handle is None:  # none or several warrants; not ASCII: not a case identity
            return None, "not_served" if case.isascii() else "malformed"
        if kind == "cmCC":
            matcher = self._matchers.get(handle)
            if matcher is None:
                return handle, ""
            packet = cc_packet(der, start, stop)
            pair = None if packet is None else ip_pair(packet)
            if pair is None:
                return self._warrant_for_reference(kind, der)
            return (handle, "") if self._pair_matches(matcher, pair) else (None, "not_target")
        matcher = self._matchers.get(handle)
        if matcher is not None and tag == _HEADER_REPORT:
            addresses = _addresses_in(der, start, stop)
            if addresses is not None and not self._pair_matches(matcher, addresses):
                return None, "not_target"
        if tag == _SIGNALING_REPORT and self._mac_matchers.get(handle) is not None:
            return self._link_frame_check(handle, der)
        return handle, ""

    def _link_frame_check(self, handle: str, der: bytes) -> tuple[str | None, str]:
        """A signalling report of a MAC warrant: its link-layer frame's MACs, if it has one."""
        frame, macs = link_frame(der), self._mac_matchers[handle]
        if frame is None or macs is None:
            return handle, ""
        if macs.match(parse_frame(frame, LINKTYPE_ETHERNET)) is None:
            return None, "not_target"
        return handle, ""

    def _warrant_for_reference(self, kind: str, der: bytes) -> tuple[str | None, str]:
        """:meth:`warrant_for` by the reference readers, each walking the PDU from its start."""
        case = case_identity(kind, der)
        if case is None:
            return None, "malformed"
        found = self._by_case.get(case)
        if not found or len(found) != 1:
            return None, "not_served"
        handle = found[0].handle
        if kind == "cmCC":
            matcher = self._matchers.get(handle)
            if matcher is not None:
                payload = cc_payload(der)
                if payload is None:
                    return None, "malformed"
                if matcher.match(parse_frame(payload, LINKTYPE_RAW)) is None:
                    return None, "not_target"
            return handle, ""
        reason = self._check_cmii(handle, der)
        return (None, reason) if reason else (handle, "")

    def _pair_matches(self, matcher: TargetMatcher, pair: tuple[bytes, bytes]) -> bool:
        """Whether a packet between these addresses is the target's (remembered per pair).

        A flow's header reports repeat its two addresses, so the answer is
        kept (at most ``PAIRS`` per gate; a gate lives until the warrants change).
        """
        known = self._pairs.get((id(matcher), pair))
        if known is None:
            packet = _ip_packet(*pair)
            known = packet is None or matcher.match(parse_frame(packet, LINKTYPE_RAW)) is not None
            if len(self._pairs) >= PAIRS:
                self._pairs.clear()
            self._pairs[id(matcher), pair] = known
        return known

    def _check_cmii(self, handle: str, der: bytes) -> str:
        """ "" if a CmII PDU may be this warrant's as far as it shows, else the reason."""
        matcher = self._matchers.get(handle)
        if matcher is not None:
            addresses = header_addresses(der)
            if addresses is not None and not self._pair_matches(matcher, addresses):
                return "not_target"
        macs = self._mac_matchers.get(handle)
        if macs is not None and _message_tag(der) == _SIGNALING_REPORT:
            frame = link_frame(der)
            if frame is not None and macs.match(parse_frame(frame, LINKTYPE_ETHERNET)) is None:
                return "not_target"
        return ""


class BuiltGate(TapGate):
    """The gate of PDUs the server's own tap core built (TZSP): one warrant's, believed.

    The gate exists for remote taps, outside parties whose PDUs say which
    case they are for. PDUs the server built itself, with the tap core of
    one warrant, after matching the frame against that warrant's targets,
    are that warrant's: reading each one's case identity and addresses back
    would only repeat the matcher (it was a third of the TZSP path's time).
    What :class:`TapIngest` checks per warrant (active now, content level)
    and per PDU (size, DER framing) still applies.

    Args:
        name: the source (``tzsp:ADDR``), as refusals and logs name it.
        handle: the warrant whose tap built every PDU this gate is shown.
    """

    def __init__(self, name: str, handle: str) -> None:
        super().__init__(name, [])
        self.handle = handle

    def warrant_for(self, kind: str, der: bytes) -> tuple[str | None, str]:
        """``(handle, "")``: every PDU is the one warrant's (see the class)."""
        return self.handle, ""


def _message_tag(der: bytes) -> int | None:
    """The CmIIMessage alternative's tag (the TLV after the module OID)."""
    try:
        _t, pos, size = read_header(der, 0)
        _t, oid, oid_size = read_header(der, pos, pos + size)
        return read_header(der, oid + oid_size, pos + size)[0]
    except PDUError:
        return None


def _address_matcher(targets: tuple[Target, ...]) -> TargetMatcher | None:
    """For targets that are all addresses or prefixes: a matcher of the bare addresses.

    The PDU carries no VLAN tag or capture interface: scopes are left out.
    """
    kinds = {t.kind for t in targets}
    if not kinds or not kinds <= {TargetKind.ADDRESS, TargetKind.PREFIX}:
        return None
    return TargetMatcher([dataclasses.replace(t, vlan=None, interface=None) for t in targets])


def _mac_matcher(targets: tuple[Target, ...]) -> TargetMatcher | None:
    """For targets that are all MACs: a matcher keeping VLAN scopes (not interfaces)."""
    kinds = {t.kind for t in targets}
    if kinds != {TargetKind.MAC}:
        return None
    return TargetMatcher([dataclasses.replace(t, interface=None) for t in targets])
