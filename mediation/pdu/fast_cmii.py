"""CmII messages on the hot path: decoded once per shape, then only their time stamps.

A tap sends a data-Header-Report for every target packet (full content
and pen-register warrants), and within one flow and direction successive
reports differ only in their ``timestamp [2]`` (mediation/tap/header_report.py
builds them so). The reference codec (asn1tools) takes about 400 us to
decode one; an agency's receiver decodes every one.

So the first message of each *shape* is decoded by the reference codec and
remembered; a later message whose octets outside the time stamp are those
of a remembered shape is that record with the new time, read by the strict
DER reader of the hot path (:func:`mediation.pdu.fast_der.read_time`, which
accepts exactly what the reference accepts, with an equal value). Every
CmII alternative starts the same way (IMPLICIT TAGS, DER)::

    30 L  06 .. (module OID)  [alt] L  80 caseId  81 iAPSystemId  82 timestamp  rest..

The shape is the OID, the alternative's tag, the caseId and iAPSystemId
TLVs and ``rest`` verbatim: with every length minimal and every TLV ending
where its container ends (both checked), two encodings of one shape differ
only in the time stamp and the two lengths around it, so the reference
would decode them to the same record but for the time. Anything else goes
to the reference codec. Byte-exactness against the reference is proven by
property tests (tests/test_pdu_fast_cmii.py).
"""

from __future__ import annotations

import datetime as dt

from mediation.pdu import codec
from mediation.pdu.cmii import CmIIMessage
from mediation.pdu.errors import PDUError
from mediation.pdu.fast_der import Buffer, as_bytes, expect, read_time

MAX_SHAPES = 1024  # then the cache starts afresh: bounded whatever a peer sends
_SEQUENCE, _OID, _CASE_ID, _IAP, _TIMESTAMP = 0x30, 0x06, 0x80, 0x81, 0x82
_FIRST_ALT, _LAST_ALT = 0xA0, 0xBE  # [0]..[30], constructed: one-octet context tags

_shapes: dict[bytes, CmIIMessage] = {}
_NEW = object.__new__

# The same shapes found faster (a receiver decodes a header report per
# packet): a message's octets before its time stamp's contents (the
# *prefix*, ending in the time stamp's tag and length) and after them (the
# *tail*). A message made of a remembered prefix, a time stamp's contents of
# the length the prefix gives, and a tail remembered with that prefix is
# octet for octet a remembered message but for the time stamp's contents: it
# is of that shape (the argument above), found by a comparison and a lookup
# instead of five TLV reads. Filled only from messages of a known shape.
RECENT_PREFIXES = 4
_prefixes: list[tuple[bytes, bytes]] = []  # most recent first; each without its first octet too
_tails: dict[tuple[bytes, bytes], CmIIMessage] = {}


def _shape(data: bytes) -> tuple[bytes, int, int] | None:
    """The shape key of a CmII encoding and where its time stamp's contents are.

    Returns:
        ``(key, start, stop)``; None when the layout is not the common one,
        or anything about it is not strict DER (the reference then decides).
    """
    size = len(data)
    try:
        start, end = expect(data, 0, size, _SEQUENCE, "IasProtocol")
        _oid_at, oid_end = expect(data, start, end, _OID, "protocolIdentifier")
        if end != size or oid_end >= end:
            return None
        tag = data[oid_end]
        if not _FIRST_ALT <= tag <= _LAST_ALT:
            return None
        body, body_end = expect(data, oid_end, end, tag, "message")
        _case_at, case_end = expect(data, body, body_end, _CASE_ID, "caseId")
        _iap_at, iap_end = expect(data, case_end, body_end, _IAP, "iAPSystemId")
        time_at, time_end = expect(data, iap_end, body_end, _TIMESTAMP, "timestamp")
    except PDUError:
        return None
    if body_end != end:
        return None
    # TLVs delimit themselves: the concatenation is unambiguous.
    key = data[start:oid_end] + bytes((tag,)) + data[body:iap_end] + data[time_end:body_end]
    return key, time_at, time_end


def decode_cmii(data: Buffer) -> CmIIMessage:
    """Decode one standalone ``IasProtocol`` PDU, equal to :func:`codec.decode_cmii`.

    Args:
        data: the encoding, starting with ``0x30``.

    Returns:
        The record.

    Raises:
        PDUError: as the reference codec.
    """
    if data.__class__ is not bytes:
        data = as_bytes(data)
    for prefix, _rest in _prefixes:
        if data.startswith(prefix):
            time_at = len(prefix)
            time_end = time_at + data[time_at - 1]
            # Within the data (a cut message's empty tail must not match one).
            template = _tails.get((prefix, data[time_end:])) if time_end <= len(data) else None
            if template is not None:
                return _with_time(template, data, time_at, time_end)
            break
    shape = _shape(data)
    if shape is None:
        return codec.decode_cmii(data)
    key, time_at, time_end = shape
    template = _shapes.get(key)
    if template is None:
        record = codec.decode_cmii(data)  # checks everything once per shape
        if len(_shapes) >= MAX_SHAPES:
            _shapes.clear()
        _shapes[key] = record
        _remember(data, time_at, time_end, record)
        return record
    record = _with_time(template, data, time_at, time_end)
    _remember(data, time_at, time_end, template)
    return record


def decode_cmii_in(data: bytes, start: int, stop: int) -> CmIIMessage:
    """:func:`decode_cmii` of ``b"\\x30" + data[start + 1 : stop]``, made only when needed.

    An envelope's content alternative is a CmII PDU but for its tag (the
    envelope's octets from ``start`` to ``stop``). A message of a remembered
    prefix and tail is found in ``data`` itself (the prefix's first octet,
    ``0x30``, stands for the tag at ``start``): the copy of the message with
    its own tag is made only for :func:`decode_cmii`. The same record, or
    error (offsets from the copy's start), as :func:`decode_cmii` of the copy
    (tests/test_pdu_fast_reuse.py).
    """
    for prefix, rest in _prefixes:
        if data.startswith(rest, start + 1, stop):
            time_at = start + len(prefix)  # the time stamp's contents, in data
            time_end = time_at + data[time_at - 1]
            template = _tails.get((prefix, data[time_end:stop])) if time_end <= stop else None
            if template is not None:
                try:
                    when = read_time(data, time_at, time_end, "timestamp")
                except PDUError:
                    break  # the reference says what is wrong
                return _copy(template, when)
            break
    return decode_cmii(b"\x30" + data[start + 1 : stop])


def _remember(data: bytes, time_at: int, time_end: int, template: CmIIMessage) -> None:
    """Keep a message of a known shape's prefix and tail (see :data:`_tails`)."""
    prefix = data[:time_at]
    if len(_tails) >= MAX_SHAPES:
        _tails.clear()
    _tails[(prefix, data[time_end:])] = template
    entry = (prefix, prefix[1:])  # (and without its tag, for decode_cmii_in)
    if entry in _prefixes:
        _prefixes.remove(entry)
    elif len(_prefixes) >= RECENT_PREFIXES:
        _prefixes.pop()
    _prefixes.insert(0, entry)


def _with_time(template: CmIIMessage, data: bytes, time_at: int, time_end: int) -> CmIIMessage:
    """``template`` with the time stamp whose contents are ``data[time_at:time_end]``."""
    try:
        when = read_time(data, time_at, time_end, "timestamp")
    except PDUError:
        return codec.decode_cmii(data)  # the reference says what is wrong
    return _copy(template, when)


def _copy(template: CmIIMessage, when: dt.datetime) -> CmIIMessage:
    """``template`` with the time stamp ``when``."""
    # A copy of the remembered record with the new time: what __init__ would
    # build (its checks held for the shape; the time is aware UTC).
    record = _NEW(template.__class__)
    fields = record.__dict__
    fields.update(template.__dict__)
    fields["timestamp"] = when
    return record


def forget_shapes() -> None:
    """Empty the caches (tests)."""
    _shapes.clear()
    _tails.clear()
    _prefixes.clear()
