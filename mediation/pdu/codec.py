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
from mediation.pdu.tlv import check_framing, read_header

CMII = "IasProtocol"
CMCC = "IAS-CC-APDU"
DELIVERY = "DeliveryMessage"

Record = CmIIMessage | CCApdu | dlv.DeliveryMessage


# No OBJECT IDENTIFIER this schema carries comes near this many octets.
MAX_OID_LENGTH = 64


def _guard_asn1tools() -> None:
    """Close the ways asn1tools 0.169 hangs on hostile input (found by tests/test_fuzz.py).

    Its DER SEQUENCE OF / SET OF loop (``der.ArrayType.decode_content``)
    ignores the element decoder's tag-mismatch result, which leaves the
    offset where it was: one wrong tag inside, say, ``signalingMsg`` or
    ``ranges`` spins forever appending to a list until the machine runs out
    of memory (upstream eerimoq/asn1tools PR #200). The replacement is the
    same loop with the check the BER codec already makes; an element that
    runs past the end of its SEQUENCE OF is refused rather than read across.
    """
    from asn1tools.codecs import ber, der

    if getattr(der.ArrayType.decode_content, "_mediation_guarded", False):
        return

    def decode_content(self: Any, data: Any, offset: int, length: int) -> tuple[list, int]:
        decoded = []
        end = offset + length
        while offset < end:
            element, after = self.element_type.decode(data, offset)
            ber.check_decode_error(self.element_type, element, data, offset)
            if after <= offset or after > end:
                raise ber.DecodeError("element does not fit its SEQUENCE OF", offset)
            decoded.append(element)
            offset = after
        return decoded, offset

    decode_content._mediation_guarded = True  # type: ignore[attr-defined]
    der.ArrayType.decode_content = decode_content

    # Its OBJECT IDENTIFIER decoder shifts one growing integer per content
    # byte: quadratic, so a 1 MB run of continuation bytes takes minutes. It
    # also reads on past the content while the continuation bit is set, so
    # the last content octet must end a subidentifier.
    oid_decode = ber.ObjectIdentifier.decode_content

    def decode_oid(self: Any, data: Any, offset: int, length: int) -> tuple[str, int]:
        if length > MAX_OID_LENGTH:
            raise ber.DecodeError(f"OBJECT IDENTIFIER of {length} octets is too long", offset)
        if length == 0 or data[offset + length - 1] & 0x80:
            raise ber.DecodeError("OBJECT IDENTIFIER ends inside a subidentifier", offset)
        return oid_decode(self, data, offset, length)

    ber.ObjectIdentifier.decode_content = decode_oid


_guard_asn1tools()


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


def _check_framing(type_name: str, data: bytes) -> None:
    try:
        check_framing(data)
    except PDUError as exc:
        raise PDUError(f"{type_name}: {exc.message}", exc.offset) from None


def _asn1_decode(type_name: str, data: bytes, framing: bool = True) -> Any:
    """asn1tools' decode of ``data`` as ``type_name``, every failure a PDUError.

    With ``framing``, every header at every depth is first read by
    :func:`mediation.pdu.tlv.check_framing`: asn1tools accepts lengths that
    are not in their shortest form, which DER (and the hot path) refuse.
    """
    if framing:
        _check_framing(type_name, data)
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


_MESSAGE_LIMIT = 200


def _describe(type_name: str, exc: Exception) -> str:
    """One short line: the type, the path of fields asn1tools was in, and what was wrong."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    # asn1tools quotes whole offending values: a 100 kB one made the regex
    # below (quadratic on a long run of word characters) take half a minute.
    if len(message) > _MESSAGE_LIMIT:
        message = message[:_MESSAGE_LIMIT] + "..."
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
    # A later version's message is skipped whole by its length: only its
    # own header is checked; a known one is checked at every depth.
    value = _asn1_decode(DELIVERY, data, framing=False)
    alternative, inner = value
    if alternative is None:
        return dlv.UnknownDeliveryMessage(tag=data[0] & 0x1F, raw=bytes(data))
    _check_framing(DELIVERY, data)
    return _typed(from_asn1, dlv.DELIVERY_ALTERNATIVES[alternative], inner)


NOTICE = "CompletenessNotice"


def encode_notice(notice: dlv.CompletenessNotice) -> bytes:
    """DER of a standalone ``CompletenessNotice``, as the evidence log stores it.

    Raises:
        PDUError: the record breaks a constraint of the schema.
    """
    return _asn1_encode(NOTICE, to_asn1(notice))


def decode_notice(data: bytes) -> dlv.CompletenessNotice:
    """Decode one standalone ``CompletenessNotice`` (exactly, no trailing bytes)."""
    return _typed(from_asn1, dlv.CompletenessNotice, _asn1_decode(NOTICE, data))


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
