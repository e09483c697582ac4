"""Encode and decode every PDU through asn1tools (the reference codec).

The hot path (:mod:`mediation.pdu.fast`) is proven byte-identical to this
one; everything else uses it directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from mediation.pdu import delivery as dlv
from mediation.pdu.cmcc import CCApdu
from mediation.pdu.cmii import CmIIMessage, cmii_from_asn1, cmii_to_asn1
from mediation.pdu.convert import from_asn1, to_asn1
from mediation.pdu.errors import PDUError
from mediation.pdu.schema import compiled
from mediation.pdu.tlv import read_header

CMII = "IasProtocol"
CMCC = "IAS-CC-APDU"
DELIVERY = "DeliveryMessage"

Record = CmIIMessage | CCApdu | dlv.DeliveryMessage


def _asn1_encode(type_name: str, value: Any) -> bytes:
    try:
        return compiled().encode(type_name, value)
    except PDUError:
        raise
    except Exception as exc:  # asn1tools raises several unrelated types
        raise PDUError(f"{type_name}: cannot encode: {exc}") from None


def encode(record: Record) -> bytes:
    """DER (valid BER) encoding of a CmII message, a CC APDU or a delivery message.

    Raises:
        PDUError: the record breaks a constraint of the schema.
    """
    if isinstance(record, CmIIMessage):
        return _asn1_encode(CMII, cmii_to_asn1(record))
    if isinstance(record, CCApdu):
        return _asn1_encode(CMCC, to_asn1(record))
    if isinstance(record, dlv.UnknownDeliveryMessage):
        return record.raw
    alternative = dlv.ALTERNATIVE_OF.get(type(record))
    if alternative is None:
        raise PDUError(f"cannot encode a {type(record).__name__}")
    return _asn1_encode(DELIVERY, (alternative, to_asn1(record)))


def _asn1_decode(type_name: str, data: bytes) -> Any:
    try:
        value, length = compiled().decode_with_length(type_name, data)
    except PDUError:
        raise
    except Exception as exc:
        raise PDUError(_describe(type_name, exc), getattr(exc, "offset", None)) from None
    if length != len(data):
        raise PDUError(f"{type_name}: {len(data) - length} bytes after the PDU", length)
    return value


def _without_brackets(text: str) -> str:
    """Drop bracketed parts: asn1tools puts whole schema reprs in some messages."""
    out, depth = [], 0
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(depth - 1, 0)
        elif depth == 0:
            out.append(char)
    return "".join(out)


def _describe(type_name: str, exc: Exception) -> str:
    """One short line: the type, the path of fields asn1tools was in, and what was wrong."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    message = re.sub(r"\w+\((\S*?), \) ", r"\1 ", _without_brackets(message))
    location = getattr(exc, "location", None) or []  # innermost first
    names = [getattr(item, "name", "") for item in reversed(location)]
    path = ".".join(n for n in names if n and n != type_name)
    return f"{type_name}: {path}: {message}" if path else f"{type_name}: {message}"


def _typed(convert: Any, *args: Any) -> Any:
    try:
        return convert(*args)
    except PDUError:
        raise
    except Exception as exc:  # a value the schema admits but a record does not
        raise PDUError(f"invalid value: {exc}") from None


def decode_cmii(data: bytes) -> CmIIMessage:
    """Decode one ``IasProtocol`` PDU (exactly, no trailing bytes)."""
    return _typed(cmii_from_asn1, _asn1_decode(CMII, data))


def decode_cc(data: bytes) -> CCApdu:
    """Decode one ``IAS-CC-APDU``."""
    return _typed(from_asn1, CCApdu, _asn1_decode(CMCC, data))


def decode_delivery(data: bytes) -> dlv.DeliveryMessage:
    """Decode one ``DeliveryMessage``; a later version's message comes back unknown."""
    value = _asn1_decode(DELIVERY, data)
    alternative, inner = value
    if alternative is None:
        return dlv.UnknownDeliveryMessage(tag=data[0] & 0x1F, raw=bytes(data))
    return _typed(from_asn1, dlv.DELIVERY_ALTERNATIVES[alternative], inner)


def kind_of(data: bytes) -> str:
    """Which top-level type a PDU is, from its first tags.

    ``IasProtocol`` and ``IAS-CC-APDU`` are both universal SEQUENCEs: the
    first is followed by an OBJECT IDENTIFIER, the second by ``[0]`` or
    ``[1]``. A ``DeliveryMessage`` starts with a context tag.

    Returns:
        ``CMII``, ``CMCC`` or ``DELIVERY``.
    """
    tag, content, length = read_header(data, 0)
    if tag == 0x30:
        if length == 0:
            raise PDUError("empty SEQUENCE is not a PDU", 0)
        inner = data[content]
        if inner == 0x06:
            return CMII
        if inner in (0xA0, 0x81):
            return CMCC
        raise PDUError(f"SEQUENCE starting with tag 0x{inner:02x} is not a known PDU", content)
    if tag & 0xC0 == 0x80 and tag & 0x20:
        return DELIVERY
    raise PDUError(f"tag 0x{tag:02x} does not start a known PDU", 0)


_DECODERS = {CMII: decode_cmii, CMCC: decode_cc, DELIVERY: decode_delivery}


def decode(data: bytes) -> Record:
    """Decode one PDU of any of the three kinds, told apart by :func:`kind_of`."""
    return _DECODERS[kind_of(data)](data)


def iter_pdus(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Split PDUs that stand back to back: yields ``(offset, pdu_bytes)``.

    Raises:
        PDUError: at the first place the framing is broken, with its offset.
    """
    offset = 0
    view = memoryview(data)
    while offset < len(data):
        _tag, content, length = read_header(view, offset)
        end = content + length
        yield offset, bytes(view[offset:end])
        offset = end


def decode_all(data: bytes) -> Iterator[tuple[int, Record]]:
    """Decode PDUs standing back to back; errors carry the absolute offset."""
    for offset, pdu in iter_pdus(data):
        try:
            yield offset, decode(pdu)
        except PDUError as exc:
            at = offset + (exc.offset or 0)
            raise PDUError(exc.message, at) from None
