"""DER primitives for the hot path (:mod:`mediation.pdu.fast`).

Each encoder here writes exactly the bytes asn1tools' ``der`` codec writes
for the same value; each reader is strict DER (definite, minimal lengths;
minimal integers; canonical GeneralizedTime), so whatever it accepts the
reference codec accepts too and decodes to the same value.

Readers take ``(data, pos, end)``: ``end`` is the end of the enclosing
contents, so no TLV can reach outside its parent. Every failure is a
:class:`PDUError` with the byte offset where it was found.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TypeVar

from asn1tools.codecs import restricted_generalized_time_from_datetime

from mediation.pdu.errors import PDUError
from mediation.pdu.tlv import read_header

UTC = dt.UTC
Buffer = bytes | bytearray | memoryview
_T = TypeVar("_T")

# Times seen lately, to the second: packets come many to a second.
_SECONDS: dict[bytes, tuple[int, int, int, int, int, int]] = {}

# Whole time contents read lately -> their value. A server stamps one
# mediationTime on a whole batch of PDUs, and a frame's header report and CC
# packet carry the same capture time, so most times a receiver reads it has
# read just before: a hit is a slice and a lookup instead of a parse and a
# datetime (about a microsecond). Only valid contents are ever stored, and
# datetimes are immutable, so a hit returns what a parse would (an equal value).
_TIMES: dict[bytes, dt.datetime] = {}
TIMES_KEPT = 1024  # then the cache starts afresh: bounded whatever a peer sends

# Multiplier turning 1..6 fraction digits into microseconds.
_FRACTION_SCALE = (0, 100000, 10000, 1000, 100, 10, 1)


class Unsupported(Exception):
    """The fast encoder does not handle this value: use the reference codec.

    Raised for values of an unexpected Python type; the reference codec then
    either encodes them or raises the :class:`PDUError` it always raises.
    """


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


# Length octets built once for every length a packet of up to a jumbo
# frame's size needs (about 300 KB of small bytes objects).
_LENGTHS = tuple(_length(n) for n in range(10000))


def length(n: int) -> bytes:
    """DER length octets for ``n`` content bytes (short form below 128).

    Args:
        n: the content length, not negative.

    Returns:
        The length octets, as asn1tools writes them.
    """
    return _LENGTHS[n] if n < 10000 else _length(n)


def integer(n: int) -> bytes:
    """Contents of an INTEGER or ENUMERATED: minimal two's complement.

    Args:
        n: any Python int.

    Returns:
        The contents octets (at least one).

    Raises:
        Unsupported: ``n`` is not an int.
    """
    if not isinstance(n, int):
        raise Unsupported
    # Same width rule as asn1tools' encode_signed_integer.
    return n.to_bytes((n + (n < 0)).bit_length() // 8 + 1, "big", signed=True)


def tlv(tag: bytes, contents: bytes) -> bytes:
    """One TLV: ``tag``, the DER length of ``contents``, ``contents``.

    Args:
        tag: the tag octets.
        contents: the contents octets.

    Returns:
        The encoded TLV.
    """
    n = len(contents)
    return tag + (_LENGTHS[n] if n < 10000 else _length(n)) + contents


# The last time encoded and its octets: a frame's header report, its CC
# APDU and their tap-link records all encode the same datetime object, so
# three of every four calls on the tap's hot path are answered here. An
# identity test is enough (datetimes are immutable) and the held object
# keeps its id from being reused. One tuple: a thread switch between
# reading and writing it can only cause a miss, never a wrong answer.
_LAST_TIME: tuple[object, bytes] = (None, b"")


def generalized_time(value: dt.datetime) -> bytes:
    """Contents of a GeneralizedTime: ``YYYYMMDDHHMMSS[.f]Z`` in UTC.

    Seconds are always written; the fraction loses its trailing zeros and
    is left out when the microseconds are zero (what asn1tools' ``der``
    codec does).

    Args:
        value: an aware datetime; records hold them in UTC already.

    Returns:
        The ASCII contents octets.

    Raises:
        Unsupported: not an aware datetime.
    """
    global _LAST_TIME
    last = _LAST_TIME
    if value is last[0]:
        return last[1]
    octets = _generalized_time(value)
    _LAST_TIME = (value, octets)
    return octets


def _generalized_time(value: dt.datetime) -> bytes:
    if value.tzinfo is not UTC:
        if not isinstance(value, dt.datetime) or value.tzinfo is None:
            raise Unsupported
        value = value.astimezone(UTC)
    if value.year < 1000:
        # asn1tools writes such years unpadded (via strftime); copy it exactly.
        text = restricted_generalized_time_from_datetime(value.replace(tzinfo=None))
        return text.encode("ascii")
    micro = value.microsecond
    # %-formatting: about twice as fast as an f-string with format specs here.
    if micro:
        text = "%04d%02d%02d%02d%02d%02d.%06d" % (  # noqa: UP031
            value.year,
            value.month,
            value.day,
            value.hour,
            value.minute,
            value.second,
            micro,
        )
        return (text.rstrip("0") + "Z").encode("ascii")
    text = "%04d%02d%02d%02d%02d%02dZ" % (  # noqa: UP031
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
    )
    return text.encode("ascii")


# Readers ---------------------------------------------------------------------


def as_bytes(data: Buffer) -> bytes:
    """``data`` as bytes (decoders index and slice it; payloads must come out as bytes).

    Raises:
        PDUError: not a bytes-like object.
    """
    if data.__class__ is bytes:
        return data
    try:
        return bytes(data)
    except TypeError:
        raise PDUError(f"cannot decode a {type(data).__name__}", 0) from None


def guarded(what: str, function: Callable[[bytes], _T], data: Buffer) -> _T:
    """Run a decoder on ``data``; anything but a PDUError with an offset becomes one.

    Args:
        what: the type being decoded, for the message.
        function: the decoder.
        data: its input.

    Returns:
        What the decoder returns.

    Raises:
        PDUError: always with an offset (0 when nothing better is known).
    """
    try:
        return function(as_bytes(data))
    except PDUError as exc:
        if exc.offset is None:
            raise PDUError(exc.message, 0) from None
        raise
    except Exception as exc:  # a safety net: the readers check before they index
        raise PDUError(f"{what}: undecodable ({type(exc).__name__})", 0) from None


def _refuse_or_read(data: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    """:func:`expect` for every TLV its inline path does not accept: the one reader decides."""
    if pos < end and data[pos] != tag:
        raise PDUError(f"{what}: expected tag 0x{tag:02x}, found 0x{data[pos]:02x}", pos)
    try:
        _tag, start, size = read_header(data, pos, end)
    except PDUError as exc:
        raise PDUError(f"{what}: {exc.message}", exc.offset) from None
    return start, start + size


def expect(data: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    """Read the TLV at ``pos``, which must have the one-octet ``tag``.

    The short form and the one- and two-octet long forms (every TLV up to
    64 KiB) are read inline, and only when they are valid DER that fits;
    everything else, and every refusal, goes through :func:`mediation.pdu.tlv.read_header`
    (tests/test_pdu_tlv.py proves the two agree on every input).

    Args:
        data: the whole PDU.
        pos: where the TLV starts.
        end: the end of the enclosing contents.
        tag: the expected tag octet (one octet: a tag number below 31).
        what: the field's name, for the error.

    Returns:
        ``(start, stop)`` of its contents.

    Raises:
        PDUError: missing, another tag, bad or non-minimal length, or
        contents running past ``end``; with the byte offset.
    """
    if pos + 2 <= end and data[pos] == tag:
        size = data[pos + 1]
        if size < 0x80:
            stop = pos + 2 + size
            if stop <= end:
                return pos + 2, stop
        elif size == 0x81:
            if pos + 3 <= end:
                size = data[pos + 2]
                stop = pos + 3 + size
                if size >= 0x80 and stop <= end:
                    return pos + 3, stop
        elif size == 0x82 and pos + 4 <= end:
            size = data[pos + 2] << 8 | data[pos + 3]
            stop = pos + 4 + size
            if size >= 0x100 and stop <= end:
                return pos + 4, stop
    return _refuse_or_read(data, pos, end, tag, what)


def skip(data: bytes, pos: int, end: int) -> int:
    """The offset just after the TLV at ``pos`` (any tag), checked like :func:`expect`.

    Args:
        data: the whole PDU (bytes or a memoryview).
        pos: where the TLV starts.
        end: the end of the enclosing contents.

    Returns:
        The offset of whatever follows the TLV.

    Raises:
        PDUError: bad framing, or the TLV runs past ``end``.
    """
    _tag, start, size = read_header(data, pos, end)
    return start + size


def read_integer(data: bytes, start: int, stop: int, what: str) -> int:
    """An INTEGER's or ENUMERATED's value from its contents; minimal form only.

    Args:
        data: the whole PDU.
        start: where the contents start.
        stop: where they end.
        what: the field's name, for the error.

    Returns:
        The value (two's complement).

    Raises:
        PDUError: empty contents or a redundant leading octet.
    """
    n = stop - start
    if n == 1:
        value = data[start]
        return value - 256 if value & 0x80 else value
    if n == 0:
        raise PDUError(f"{what}: empty integer", start)
    first, second = data[start], data[start + 1]
    if (first == 0 and second < 0x80) or (first == 0xFF and second >= 0x80):
        raise PDUError(f"{what}: integer is not in its shortest form (not DER)", start)
    return int.from_bytes(data[start:stop], "big", signed=True)


def _seconds(digits: bytes, at: int, what: str) -> tuple[int, int, int, int, int, int]:
    """Year to second of ``YYYYMMDDHHMMSS``, checked to exist; cached per second."""
    parts = _SECONDS.get(digits)
    if parts is None:
        if not digits.isdigit():
            raise PDUError(f"{what}: not a DER GeneralizedTime", at)
        v = int(digits)
        parts = (
            v // 10**10,
            v // 10**8 % 100,
            v // 10**6 % 100,
            v // 10**4 % 100,
            v // 100 % 100,
            v % 100,
        )
        try:
            dt.datetime(*parts)
        except ValueError:
            raise PDUError(f"{what}: no such date or time", at) from None
        if parts[0] < 1000:  # as the reference refuses it (pdu/convert.utc): no 4-digit form
            raise PDUError(f"{what}: year {parts[0]} cannot be encoded (1000 to 9999)", at)
        if len(_SECONDS) >= 1024:
            _SECONDS.clear()
        _SECONDS[digits] = parts
    return parts


def read_time(data: bytes, start: int, stop: int, what: str) -> dt.datetime:
    """A GeneralizedTime in the one form DER (and asn1tools' der) accepts.

    ``YYYYMMDDHHMMSS`` then optionally ``.`` and 1 to 6 digits not ending in
    ``0``, then ``Z``.

    Args:
        data: the whole PDU.
        start: where the contents start.
        stop: where they end.
        what: the field's name, for the error.

    Returns:
        An aware UTC datetime.

    Raises:
        PDUError: any other form, or a date or time that does not exist.
    """
    key = data[start:stop]
    value = _TIMES.get(key)
    if value is None:
        value = _parse_time(data, start, stop, what)
        if len(_TIMES) >= TIMES_KEPT:
            _TIMES.clear()
        _TIMES[key] = value
    return value


def _parse_time(data: bytes, start: int, stop: int, what: str) -> dt.datetime:
    """:func:`read_time` without its cache (the same Args, Returns and Raises)."""
    n = stop - start
    if n < 15 or n > 22 or data[stop - 1] != 0x5A:
        raise PDUError(f"{what}: not a DER GeneralizedTime", start)
    digits = data[start : start + 14]
    parts = _SECONDS.get(digits)  # _seconds()'s cache, looked up inline (hot path)
    if parts is None:
        parts = _seconds(digits, start, what)
    year, month, day, hour, minute, second = parts
    if n == 15:
        return dt.datetime(year, month, day, hour, minute, second, 0, UTC)
    fraction = data[start + 15 : stop - 1]
    # isdigit() is False for b"", so a "." with no digits is refused too.
    if data[start + 14] != 0x2E or not fraction.isdigit() or fraction[-1] == 0x30:
        raise PDUError(f"{what}: not a DER GeneralizedTime", start)
    micro = int(fraction) * _FRACTION_SCALE[len(fraction)]
    return dt.datetime(year, month, day, hour, minute, second, micro, UTC)


def read_boolean(data: bytes, start: int, stop: int, what: str) -> bool:
    """A BOOLEAN: one octet, 0x00 or 0xFF (DER).

    Args:
        data: the whole PDU.
        start: where the contents start.
        stop: where they end.
        what: the field's name, for the error.

    Returns:
        The value.

    Raises:
        PDUError: any other contents.
    """
    if stop - start != 1 or data[start] not in (0x00, 0xFF):
        raise PDUError(f"{what}: not a DER BOOLEAN", start)
    return data[start] == 0xFF
