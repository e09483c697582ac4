"""Records as JSON-able dicts, for people reading PDUs (``mediate decode``).

Keys are the ASN.1 component names; each PDU (and each record an envelope
carries) says its ASN.1 name under ``"type"``. Times are ISO 8601 UTC with
microseconds and ``Z``, octets are hex, addresses are text, enumerations are
their ASN.1 names, and a CHOICE is ``{"alternative": value}``. Optional
components that are absent are left out. A CC payload that is an IPv4 or
IPv6 packet also gets a short ``"packet"`` summary.

No I/O, and no dependency beyond the records: the output is the content
itself, so nothing here is ever logged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import ipaddress
from typing import Any

from mediation.pdu import delivery as dlv
from mediation.pdu.cmcc import CCApdu
from mediation.pdu.cmii import CmIIMessage
from mediation.pdu.convert import Choice

# Record fields that carry no ``asn1`` metadata, and their ASN.1 names.
_ASN1_NAMES = {
    "allocation": "allocationMethod",
    "ipv6_flow_label": "iPv6FlowLabel",
    "prefix_len": "prefixLen",
    "part_of_multiple_login": "partOfMultipleLogin",
}

# JSON readers commonly hold numbers as doubles; past 64 bits even Python's
# json may refuse one (int-to-text digit limit), so bigger ones become hex.
_INT_LIMIT = 2**64

_PROTOCOL_NAMES = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 58: "icmpv6"}
_PORTED = (6, 17, 132)  # TCP, UDP, SCTP: ports are the first four bytes
_IPV6_EXTENSIONS = (0, 43, 60)  # hop-by-hop, routing, destination options


def type_name(record: Any) -> str:
    """The ASN.1 name of a record's PDU type or alternative."""
    if isinstance(record, CmIIMessage):
        return record.ALTERNATIVE or "IasProtocol"
    if isinstance(record, CCApdu):
        return "IAS-CC-APDU"
    if isinstance(record, dlv.UnknownDeliveryMessage):
        return "unknownDeliveryMessage"
    if isinstance(record, dlv.CompletenessNotice):
        return "CompletenessNotice"
    name = dlv.ALTERNATIVE_OF.get(type(record))
    if name is None:
        raise TypeError(f"not a PDU record: {type(record).__name__}")
    return name


def to_json(record: Any) -> dict[str, Any]:
    """A PDU record as a dict that ``json.dumps`` takes as it is."""
    out: dict[str, Any] = {"type": type_name(record)}
    out.update(_fields(record))
    if isinstance(record, CCApdu):
        out["payload"] = out.pop("payload")  # the long one last, as in the ASN.1
        summary = packet_summary(record.payload)
        if summary is not None:
            out["packet"] = summary
    return out


def _fields(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if value is None:
            continue  # an absent OPTIONAL component
        name = field.metadata.get("asn1") or _ASN1_NAMES.get(field.name, field.name)
        out[name] = _value(value)
    return out


def _value(value: Any) -> Any:
    """One component; records inside records (envelope content) keep their type."""
    if isinstance(value, CmIIMessage | CCApdu | dlv.CompletenessNotice):
        return to_json(value)
    if isinstance(value, Choice):
        return {value.alternative: _value(value.value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _fields(value)
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return value
    if isinstance(value, int):
        return value if -_INT_LIMIT < value < _INT_LIMIT else hex(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dt.datetime):
        return iso_time(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, tuple | list):
        return [_value(item) for item in value]
    raise TypeError(f"no JSON form for {type(value).__name__}")


_TWO = tuple(f"{n:02d}" for n in range(100))


def iso_time(value: dt.datetime) -> str:
    """``2026-11-23T00:11:00.500000Z``: UTC, always with microseconds."""
    if value.tzinfo is dt.UTC and value.year >= 1000:  # the usual case, without strftime
        # Two-digit fields from a table, not formatted: a third faster than
        # "%04d-%02d..." (a receiver makes one per header report).
        return (
            f"{value.year}-{_TWO[value.month]}-{_TWO[value.day]}T{_TWO[value.hour]}:"
            f"{_TWO[value.minute]}:{_TWO[value.second]}.{value.microsecond:06d}Z"
        )
    if value.tzinfo is None:
        raise ValueError("naive datetime: its time zone is unknown")
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def packet_summary(payload: bytes) -> dict[str, Any] | None:
    """Version, protocol, addresses, ports and length of an IP packet; ``None`` if not one.

    A summary for a person, not a dissector: it reads the fixed headers and,
    for TCP, UDP and SCTP, the two ports. IPv4 fragments after the first
    have no ports.
    """
    if not payload:
        return None
    version = payload[0] >> 4
    if version == 4:
        return _ipv4_summary(payload)
    if version == 6:
        return _ipv6_summary(payload)
    return None


def _ipv4_summary(packet: bytes) -> dict[str, Any] | None:
    header_len = (packet[0] & 0x0F) * 4
    total = int.from_bytes(packet[2:4], "big") if len(packet) >= 4 else 0
    if len(packet) < 20 or header_len < 20 or total < header_len:
        return None  # not an IPv4 header, whatever its first nibble says
    protocol = packet[9]
    out = _summary(4, protocol, packet[12:16], packet[16:20], total, len(packet))
    fragment = int.from_bytes(packet[6:8], "big")
    offset = (fragment & 0x1FFF) * 8
    if fragment & 0x2000 or offset:
        out["fragmentOffset"] = offset
    if offset == 0:
        _ports(out, packet, header_len)
    return out


def _ipv6_summary(packet: bytes) -> dict[str, Any] | None:
    if len(packet) < 40:
        return None
    protocol = packet[6]
    pos = 40
    # Step over the extension headers that say their own length in 8-octet units.
    while protocol in _IPV6_EXTENSIONS and pos + 8 <= len(packet):
        protocol, pos = packet[pos], pos + (packet[pos + 1] + 1) * 8
    total = 40 + int.from_bytes(packet[4:6], "big")
    out = _summary(6, protocol, packet[8:24], packet[24:40], total, len(packet))
    if protocol not in _IPV6_EXTENSIONS:
        _ports(out, packet, pos)
    return out


def _summary(
    version: int, protocol: int, src: bytes, dst: bytes, total: int, captured: int
) -> dict[str, Any]:
    out: dict[str, Any] = {"ipVersion": version, "protocol": protocol}
    name = _PROTOCOL_NAMES.get(protocol)
    if name is not None:
        out["protocolName"] = name
    out["src"] = str(ipaddress.ip_address(src))
    out["dst"] = str(ipaddress.ip_address(dst))
    out["length"] = total
    if captured != total:
        out["captured"] = captured
    return out


def _ports(out: dict[str, Any], packet: bytes, at: int) -> None:
    if out["protocol"] in _PORTED and len(packet) >= at + 4:
        out["srcPort"] = int.from_bytes(packet[at : at + 2], "big")
        out["dstPort"] = int.from_bytes(packet[at + 2 : at + 4], "big")


class SharedPartsView:
    """:func:`to_json` for many records in a row, each shared part's JSON made once.

    The hot-path decoders hand out records that share their unchanging
    parts (:mod:`mediation.pdu.fast_cmii` copies a remembered message and
    changes its time only). So a CmII message whose every field but the
    time stamp is the very object of one seen before reuses that message's
    JSON with the new time put in, and any other part seen before (by
    identity) reuses its JSON. The view keeps those objects alive beside
    their JSON, so an identity can never stand for another object; at most
    ``limit`` of each are kept (then it starts afresh). The dicts returned
    share the remembered JSON: read them (``json.dumps``), do not change
    them below the top level.

    Args:
        limit: messages, and parts, remembered at most.
    """

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._parts: dict[int, tuple[Any, Any]] = {}
        self._messages: dict[tuple[Any, ...], tuple[Any, dict[str, Any]]] = {}
        self._fields: dict[type, tuple[tuple[str, str], ...]] = {}

    def to_json(self, record: Any) -> dict[str, Any]:
        """What :func:`to_json` returns for ``record``, equal in every key and value."""
        if record.__class__ is dlv.Envelope:
            return self._envelope(record)
        if isinstance(record, CmIIMessage):
            return self._message(record)
        if isinstance(record, CCApdu):
            return to_json(record)
        return self._record(record)

    def _envelope(self, envelope: dlv.Envelope) -> dict[str, Any]:
        # The fields of Envelope in order, as _fields() would give them.
        stream = envelope.stream
        out: dict[str, Any] = {
            "type": "pduEnvelope",
            "stream": {"warrantHandle": stream.warrant_handle, "kind": stream.kind.value},
            "sequenceNumber": _value(envelope.sequence_number),
            "mediationTime": _iso(envelope.mediation_time),
            "content": self.to_json(envelope.content),
        }
        if envelope.clock_status is not None:
            out["clockStatus"] = envelope.clock_status.value
        if envelope.redelivered is not None:
            out["redelivered"] = envelope.redelivered
        return out

    def _message(self, message: CmIIMessage) -> dict[str, Any]:
        fields = message.__dict__
        key = (message.__class__, *[id(v) for k, v in fields.items() if k != "timestamp"])
        seen = self._messages.get(key)
        if seen is None:
            made = self._record(message)
            if len(self._messages) >= self.limit:
                self._messages.clear()
            self._messages[key] = (message, made)  # the message keeps every id in the key
            return made
        out = dict(seen[1])  # "timestamp" keeps its place among the keys
        out["timestamp"] = _iso(message.timestamp)
        return out

    def _record(self, record: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"type": type_name(record)}
        for attr, name in self._names(type(record)):
            value = getattr(record, attr)
            if value is not None:
                out[name] = self._value(value)
        return out

    def _value(self, value: Any) -> Any:
        if isinstance(value, str | int | float | enum.Enum | dlv.StreamId):
            return _value(value)  # cheap, or new for every record: nothing to share
        if isinstance(value, dt.datetime):
            return _iso(value)
        if isinstance(value, CmIIMessage | dlv.CompletenessNotice):
            return self.to_json(value)
        seen = self._parts.get(id(value))
        if seen is not None and seen[0] is value:
            return seen[1]
        made = _value(value)
        if len(self._parts) >= self.limit:
            self._parts.clear()
        self._parts[id(value)] = (value, made)
        return made

    def _names(self, cls: type) -> tuple[tuple[str, str], ...]:
        names = self._fields.get(cls)
        if names is None:
            names = tuple(
                (f.name, f.metadata.get("asn1") or _ASN1_NAMES.get(f.name, f.name))
                for f in dataclasses.fields(cls)
            )
            self._fields[cls] = names
        return names


_iso = iso_time
