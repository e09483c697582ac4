"""Hypothesis strategies for every record type in :mod:`mediation.pdu`.

Every value drawn is valid: strings keep to their ASN.1 constraints, times
are aware UTC datetimes with microseconds (zero seconds, zero microseconds
and fractions with trailing zeros all come up often), numbers keep to
their ranges, addresses are in the documentation ranges. Optional parts
are drawn present or absent independently.

Entry points: :func:`cmii_messages` (all twelve), :func:`cc_apdus`,
:func:`completeness_notices`, :func:`envelopes` (optionally of one content
kind), :func:`delivery_messages` (every control message and envelopes),
:func:`records` (anything :func:`mediation.pdu.encode` takes).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import types
import typing

from hypothesis import strategies as st

from mediation import pdu as P
from mediation.pdu.delivery import MAX_ID, MAX_SEQUENCE

UTC = dt.UTC

# Sizes are kept small: these strategies run inside many property tests.
MAX_TEXT = 24
MAX_ITEMS = 3
PAYLOAD_SIZES = st.one_of(st.integers(0, 64), st.sampled_from([127, 128, 255, 256, 1500]))

# Primitive values --------------------------------------------------------------


def visible(min_size: int = 0, max_size: int = MAX_TEXT) -> st.SearchStrategy[str]:
    """VisibleString: printable ASCII and space."""
    alphabet = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
    return st.text(alphabet, min_size=min_size, max_size=max_size)


def utf8(max_size: int = MAX_TEXT) -> st.SearchStrategy[str]:
    """UTF8String: any text without surrogates (which UTF-8 cannot carry)."""
    return st.text(st.characters(exclude_categories=("Cs",)), max_size=max_size)


def numeric(max_size: int = MAX_TEXT) -> st.SearchStrategy[str]:
    """NumericString: digits and space."""
    return st.text("0123456789 ", max_size=max_size)


def octets(max_size: int = 32) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_size)


# INTEGER without bounds: small, negative and multi-octet values, and the
# two's-complement edges where a leading 0x00 or 0xFF octet is needed.
_EDGES = [0, -1, 127, 128, -128, -129, 255, 256, 2**31, 2**63, 2**64 - 1, 2**64, -(2**63)]
integers = st.one_of(st.sampled_from(_EDGES), st.integers(-(2**70), 2**70))

sequence_numbers = st.one_of(
    st.sampled_from([0, 1, 127, 128, 255, 256, 2**32, 2**63, MAX_SEQUENCE]),
    st.integers(0, MAX_SEQUENCE),
)
identifiers = st.integers(0, MAX_ID)

_MICROSECONDS = st.one_of(
    st.just(0),
    st.integers(0, 999_999),
    st.integers(1, 9).map(lambda digit: digit * 100_000),  # .5 and the like
    st.integers(1, 999).map(lambda millis: millis * 1000),
)


def utc_times(min_year: int = 1000, max_year: int = 9999) -> st.SearchStrategy[dt.datetime]:
    """Aware UTC datetimes with microseconds, often with zero seconds or microseconds.

    Years start at 1000: asn1tools writes earlier years unpadded, which no
    decoder (its own included) reads back.
    """
    days = st.datetimes(
        min_value=dt.datetime(min_year, 1, 1),
        max_value=dt.datetime(max_year, 12, 31, 23, 59),
        timezones=st.just(UTC),
    )
    seconds = st.one_of(st.just(0), st.integers(0, 59))
    return st.builds(
        lambda day, second, micro: day.replace(second=second, microsecond=micro),
        days,
        seconds,
        _MICROSECONDS,
    )


times = utc_times()


def _optional(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.none() | strategy


def _tuples(strategy: st.SearchStrategy, min_size: int = 0) -> st.SearchStrategy[tuple]:
    return st.lists(strategy, min_size=min_size, max_size=MAX_ITEMS).map(tuple)


def _choice(cls: type, alternatives: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """A CHOICE record, every alternative (``st.none()`` for NULL ones) included."""
    assert set(alternatives) == set(cls.ALTERNATIVES), f"{cls.__name__}: an alternative is missing"
    return st.one_of(*(st.builds(cls, st.just(name), v) for name, v in alternatives.items()))


def _nulls(*names: str) -> dict[str, st.SearchStrategy]:
    return dict.fromkeys(names, st.none())


# Documentation ranges only (RFC 5737, RFC 3849).
_V4_NETWORKS = [
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
]
_V6_BASE = int(ipaddress.IPv6Address("2001:db8::"))

ipv4 = st.builds(
    lambda network, host: network[host], st.sampled_from(_V4_NETWORKS), st.integers(0, 255)
)
ipv6 = st.integers(0, 2**96 - 1).map(lambda low: ipaddress.IPv6Address(_V6_BASE + low))
ip_addresses = ipv4 | ipv6

# CmII parts --------------------------------------------------------------------

values = _choice(
    P.Value,
    {
        "stringVS": visible(),
        "stringUTF8": utf8(),
        "integer": integers,
        "octets": octets(),
        "numeric": numeric(),
    },
)

ip_address_records = st.builds(
    P.IPAddress,
    address=ip_addresses,
    allocation=st.sampled_from(P.Allocation),
    ipv6_flow_label=_optional(utf8(8)),
    prefix_len=_optional(st.integers(0, 128)),
)

access_types = _choice(
    P.AccessType,
    {**_nulls("dialUp", "dsl", "lan", "cable", "wiFi", "wiMax"), "other": utf8()},
)

access_methods = st.builds(
    P.AccessMethod,
    access_type=_optional(access_types),
    access_equipment_id=_optional(utf8()),
    part_of_multiple_login=st.booleans(),
)

locations = st.builds(P.Location, location_type=utf8(), location=utf8())

protocol_signals = st.builds(
    P.ProtocolSignal,
    protocol=_choice(P.SignalProtocol, {**_nulls("radius"), "other": utf8()}),
    signal=_tuples(values),
)

signaling_messages = st.builds(
    P.InterceptedSignalingMessage,
    message_type=st.sampled_from(P.SignalingMessageType),
    message=utf8(),
)

content_identifiers = _choice(
    P.ContentIdentifier,
    {
        "correlationID": octets(16),
        "callID": st.builds(P.CallID, main=utf8(), leg=_optional(utf8())),
    },
)

header_sets = st.builds(
    P.HeaderSet,
    stream_id=values,
    source_ip=ip_address_records,
    destination_ip=ip_address_records,
    source_port=_optional(numeric(5)),
    destination_port=_optional(numeric(5)),
)

stream_sets = st.builds(
    P.StreamSet,
    stream_id=values,
    source_ip=ip_address_records,
    destination_ip=ip_address_records,
    packet_count=integers,
    source_port=_optional(numeric(5)),
    destination_port=_optional(numeric(5)),
)

_ccc = visible(1, 20)
ccc_identities = _choice(
    P.CCCIdentity,
    {
        **dict.fromkeys(["combCCC", "indXmitCCC", "indRecvCCC", "indCCC"], _ccc),
        "sepCCCpair": st.builds(P.SepCCCPair, _ccc, _ccc),
    },
)

delivery_identifiers = _choice(
    P.DeliveryIdentifier,
    {
        "cccId": ccc_identities,
        "ccAddress": st.builds(P.CCAddress, lea_ip=ip_addresses, lea_port=numeric(5)),
    },
)

# OBJECT IDENTIFIER values as dotted text: first arc 0..2, second 0..39 under
# 0 and 1 (X.690's rule), then a few arcs of any size.
object_identifiers = st.builds(
    lambda first, second, rest: ".".join(map(str, [first, second, *rest])),
    st.integers(0, 2),
    st.integers(0, 39),
    st.lists(st.integers(0, 2**40), max_size=6),
)

cc_delivery_formats = _choice(
    P.CCDeliveryFormat,
    {**_nulls("scteDatagram", "iasDatagram"), "atis-678-ASN1": object_identifiers},
)

lea_cmc_deliveries = st.builds(
    P.LEACmCDelivery,
    content_identifier=content_identifiers,
    delivery_identifier=delivery_identifiers,
    cc_delivery_format=cc_delivery_formats,
)

# The twelve CmII messages -------------------------------------------------------

_COMMON = {"case_id": visible(1, 25), "iap_system_id": visible(1, 15), "timestamp": times}

# Every other field of a CmII message, by its type. A field of a new type
# fails here at import (KeyError) instead of going untested.
_BY_TYPE: dict[object, st.SearchStrategy] = {
    P.Value: values,
    P.AccessMethod: access_methods,
    P.ProtocolSignal: protocol_signals,
    P.IPAddress: ip_address_records,
    P.Location: locations,
    P.LEACmCDelivery: lea_cmc_deliveries,
    P.ContentIdentifier: content_identifiers,
    P.HeaderSet: header_sets,
    P.StreamSet: stream_sets,
    tuple[P.InterceptedSignalingMessage, ...]: _tuples(signaling_messages),
}


def _message(cls: type) -> st.SearchStrategy:
    """A CmII message with each optional field drawn present or absent."""
    hints = typing.get_type_hints(cls)
    fields = {}
    for field in dataclasses.fields(cls):
        if field.name in _COMMON:
            fields[field.name] = _COMMON[field.name]
            continue
        hint = hints[field.name]
        kinds = [t for t in typing.get_args(hint) if t is not type(None)]
        if isinstance(hint, types.UnionType) and len(kinds) == 1:
            fields[field.name] = _optional(_BY_TYPE[kinds[0]])
        else:
            fields[field.name] = _BY_TYPE[hint]
    return st.builds(cls, **fields)


CMII_STRATEGIES: dict[type, st.SearchStrategy] = {cls: _message(cls) for cls in P.CMII_MESSAGES}


def cmii_messages() -> st.SearchStrategy[P.CmIIMessage]:
    """Any of the twelve CmII messages, with any combination of optional parts."""
    return st.one_of(*(CMII_STRATEGIES[cls] for cls in P.CMII_MESSAGES))


# CmCC -------------------------------------------------------------------------------

correlation_infos = st.builds(
    P.CorrelationInfo,
    content_identifier=content_identifiers,
    case_id=_optional(visible(1, 25)),
    iap_id=_optional(visible(1, 15)),
)

cc_delivery_headers = st.builds(
    P.CCDeliveryHeader,
    correlation_info=correlation_infos,
    time_stamp=_optional(times),
    packet_direction=_optional(st.sampled_from(P.PacketDirection)),
    sequence_number=_optional(integers),
)


def cc_apdus(payloads: st.SearchStrategy[bytes] | None = None) -> st.SearchStrategy[P.CCApdu]:
    """``IAS-CC-APDU`` with or without its header; payloads across the length forms."""
    if payloads is None:
        payloads = PAYLOAD_SIZES.flatmap(lambda n: st.binary(min_size=n, max_size=n))
    return st.builds(P.CCApdu, payload=payloads, header=_optional(cc_delivery_headers))


# Delivery ---------------------------------------------------------------------------

stream_ids = st.builds(
    P.StreamId, warrant_handle=visible(1, 32), kind=st.sampled_from(P.StreamKind)
)


@st.composite
def sequence_ranges(draw: st.DrawFn) -> P.SequenceRange:
    first = draw(sequence_numbers)
    last = draw(st.one_of(st.just(first), st.integers(first, MAX_SEQUENCE)))
    return P.SequenceRange(first, last)


def completeness_notices() -> st.SearchStrategy[P.CompletenessNotice]:
    return st.builds(
        P.CompletenessNotice,
        event=st.sampled_from(P.CompletenessEvent),
        event_time=times,
        period_start=_optional(times),
        period_end=_optional(times),
        lost_count=_optional(sequence_numbers),
        source=_optional(utf8()),
        detail=_optional(utf8()),
    )


CONTENT_STRATEGIES = {
    "cmII": cmii_messages(),
    "cmCC": cc_apdus(),
    "notice": completeness_notices(),
}


def envelopes(content_kind: str | None = None) -> st.SearchStrategy[P.Envelope]:
    """Envelopes of one content kind (``"cmII"``, ``"cmCC"``, ``"notice"``) or any."""
    if content_kind is None:
        return st.one_of(*(envelopes(kind) for kind in CONTENT_STRATEGIES))
    # CmCC streams carry content; CmII streams carry CmII and notices.
    stream_kind = P.StreamKind.CMCC if content_kind == "cmCC" else P.StreamKind.CMII
    return st.builds(
        P.Envelope,
        stream=st.builds(P.StreamId, warrant_handle=visible(1, 32), kind=st.just(stream_kind)),
        sequence_number=sequence_numbers,
        mediation_time=times,
        content=CONTENT_STRATEGIES[content_kind],
        clock_status=_optional(st.sampled_from(P.ClockStatus)),
        redelivered=st.booleans(),
    )


CONTROL_STRATEGIES: dict[type, st.SearchStrategy] = {
    P.Keepalive: st.builds(P.Keepalive, identifiers, times),
    P.KeepaliveAnswer: st.builds(P.KeepaliveAnswer, identifiers, times),
    P.Acknowledgement: st.builds(P.Acknowledgement, stream_ids, sequence_numbers),
    P.ReplayRequest: st.builds(
        P.ReplayRequest, identifiers, stream_ids, _tuples(sequence_ranges())
    ),
    P.ReplayResult: st.builds(
        P.ReplayResult,
        request_id=identifiers,
        stream=stream_ids,
        delivered=sequence_numbers,
        unavailable=_tuples(sequence_ranges()),
        reason=_optional(utf8()),
    ),
    P.ReceiverReport: st.builds(
        P.ReceiverReport,
        stream=stream_ids,
        report_time=times,
        received_count=sequence_numbers,
        missing=_tuples(sequence_ranges()),
        highest_sequence=_optional(sequence_numbers),
        missing_omitted=_optional(sequence_numbers),
    ),
    P.ChainCheckpoint: st.builds(
        P.ChainCheckpoint,
        stream=stream_ids,
        last_sequence=sequence_numbers,
        chain_hash=st.binary(min_size=32, max_size=32),
        checkpoint_time=times,
        signature=st.binary(min_size=64, max_size=64),
        key_id=st.binary(min_size=32, max_size=32),
    ),
}


@st.composite
def unknown_delivery_messages(draw: st.DrawFn) -> P.UnknownDeliveryMessage:
    """A later version's message: one constructed TLV with a context tag from 8 to 30."""
    tag = draw(st.integers(8, 30))
    contents = draw(st.binary(max_size=40))
    raw = bytes((0xA0 | tag, len(contents))) + contents
    return P.UnknownDeliveryMessage(tag=tag, raw=raw)


def control_messages() -> st.SearchStrategy:
    """Every delivery message other than an envelope."""
    return st.one_of(*CONTROL_STRATEGIES.values())


def delivery_messages() -> st.SearchStrategy[P.DeliveryMessage]:
    """Every known DeliveryMessage alternative, envelopes of every content kind included."""
    return st.one_of(envelopes(), control_messages())


def records() -> st.SearchStrategy:
    """Anything :func:`mediation.pdu.encode` takes, later-version messages included."""
    return st.one_of(cmii_messages(), cc_apdus(), delivery_messages(), unknown_delivery_messages())
