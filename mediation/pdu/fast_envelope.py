"""Framing of the DeliveryMessage ``pduEnvelope`` for the hot path.

Internals of :mod:`mediation.pdu.fast`: the envelope's header fields are
written and read here; the content TLV is handed over as bytes (or as the
offsets of its contents). The encoding of a stream's identifier never
changes, so it is cached both ways, like the CC correlation information.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from mediation.pdu.delivery import MAX_SEQUENCE, ClockStatus, StreamId, StreamKind
from mediation.pdu.errors import PDUError
from mediation.pdu.fast_cc import CACHE_LIMIT
from mediation.pdu.fast_der import (
    _LENGTHS,
    expect,
    generalized_time,
    integer,
    length,
    read_boolean,
    read_integer,
    read_time,
    skip,
    tlv,
)

CMII = "cmII"
CMCC = "cmCC"
NOTICE = "notice"
CONTENT_KINDS = (CMII, CMCC, NOTICE)

# EnvelopeContent alternatives: implicit tags on SEQUENCEs, so constructed.
KIND_TAG = {CMII: 0xA0, CMCC: 0xA1, NOTICE: 0xA2}
TAG_KIND = {tag: kind for kind, tag in KIND_TAG.items()}
# The first tag inside each kind's SEQUENCE: IasProtocol starts with its
# OBJECT IDENTIFIER, IAS-CC-APDU with [0] or [1], CompletenessNotice with
# event [0]. Checked so that a swapped kind is refused, not stored.
FIRST_TAGS = {CMII: (0x06,), CMCC: (0xA0, 0x81), NOTICE: (0x80,)}

# ENUMERATED values from Mediation-Delivery.asn, as whole TLVs.
_KIND_TLV = {StreamKind.CMII: b"\x81\x01\x00", StreamKind.CMCC: b"\x81\x01\x01"}
_KIND_OF = {0: StreamKind.CMII, 1: StreamKind.CMCC}
_CLOCK_TLV = {
    None: b"",
    ClockStatus.SYNCHRONISED: b"\x83\x01\x00",
    ClockStatus.UNSYNCHRONISED: b"\x83\x01\x01",
    ClockStatus.UNKNOWN: b"\x83\x01\x02",
}
_CLOCK_OF = {0: ClockStatus.SYNCHRONISED, 1: ClockStatus.UNSYNCHRONISED, 2: ClockStatus.UNKNOWN}
_REDELIVERED_TLV = b"\x84\x01\xff"  # DER TRUE; FALSE is left out, as the reference does


# What read_envelope returns (a plain tuple: this is the hot path).
EnvelopeFields = tuple[StreamId, int, dt.datetime, ClockStatus | None, bool, str, int, int, int]

_STREAM_BYTES: dict[StreamId, bytes] = {}
_STREAM_RECORDS: dict[bytes, StreamId] = {}


# The last stream encoded, checked by identity first: a sender encodes one
# stream's envelopes in a row, and hashing a StreamId costs 0.15 us.
_LAST_STREAM: list = [None, b""]


def _stream_tlv(stream: StreamId) -> bytes:
    last = _LAST_STREAM
    if stream is last[0]:
        return last[1]
    cached = _STREAM_BYTES.get(stream)
    if cached is None:
        body = tlv(b"\x80", stream.warrant_handle.encode("ascii")) + _KIND_TLV[stream.kind]
        cached = tlv(b"\xa0", body)
        if len(_STREAM_BYTES) >= CACHE_LIMIT:
            _STREAM_BYTES.clear()
        _STREAM_BYTES[stream] = cached
    last[0], last[1] = stream, cached
    return cached


def frame(
    stream: StreamId,
    sequence_number: int,
    mediation_time: dt.datetime,
    clock_status: ClockStatus | None,
    redelivered: bool,
    content_head: bytes,
    content_rest: bytes | memoryview,
) -> bytes:
    """The DeliveryMessage pduEnvelope around one content TLV.

    Args:
        stream: the warrant stream.
        sequence_number: its sequence number (range checked by the caller).
        mediation_time: an aware datetime.
        clock_status: the server clock's state, or None.
        redelivered: written as TRUE, or left out.
        content_head: the content TLV's tag and length octets.
        content_rest: its contents (kept apart so a large payload is copied once).

    Returns:
        The encoding, starting with ``0xA0``.

    Raises:
        Unsupported: a value of an unexpected Python type.
        KeyError, AttributeError: likewise (the caller falls back on any).
    """
    sequence = integer(sequence_number)
    time = generalized_time(mediation_time)
    content_length = len(content_head) + len(content_rest)
    head = b"".join(
        (
            _stream_tlv(stream),
            b"\x81",
            _LENGTHS[len(sequence)],  # both short: no length() call
            sequence,
            b"\x82",
            _LENGTHS[len(time)],
            time,
            _CLOCK_TLV[clock_status],
            _REDELIVERED_TLV if redelivered else b"",
            b"\xa5",
            length(content_length),
            content_head,
        )
    )
    # One copy of the (possibly large) content, at the very end.
    return b"\xa0" + length(len(head) + len(content_rest)) + head + content_rest


# Stored records ------------------------------------------------------------------

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# Receive times the framer writes itself: from 1970 to the end of year 9999
# (four-digit years, as generalized_time writes them); others go the long way.
_LAST_US = 253402300800 * 1_000_000


class RecordFramer:
    """Envelopes of one stream's stored records, with the constant parts encoded once.

    The delivery hot path: the stream identifier is encoded once; the
    octets between the sequence number and the content (mediation time,
    clock status, redelivered flag, the content's tag) once per receive
    time, which every record of a log commit shares; the date and seconds
    once per second. The content is checked by its first octets (a
    SEQUENCE whose length covers exactly the rest, starting like its kind)
    and spliced. Anything outside that common case (an unusual length
    form, a time before 1970, a kind seen for the first time) returns
    None, and the caller uses the general splice (``encode_envelope_raw``),
    so the bytes are always those of the reference codec
    (tests/test_protocol_envelopes_shared.py).
    """

    def __init__(self, stream: StreamId) -> None:
        self.stream = stream
        self._stream_tlv = _stream_tlv(stream)
        self._cmcc = stream.kind is StreamKind.CMCC
        self._second = -1
        # The middle octets (time to the content's [5] tag) and what they were built for.
        self._us = -1
        self._clock: object = _UNSET
        self._flag: object = _UNSET
        self._date = b""
        self._tail = b""  # the clock status, the redelivered flag, the content's tag
        self._middle = b""
        self._fixed = 0  # inner length but the sequence TLV's, content length's and payload's
        # id(kind enum member) -> (content tag octet, first tags); members are singletons.
        self._kinds: dict[int, tuple[bytes, tuple[int, ...]]] = {}

    def learn_kind(self, kind: object, name: str) -> None:
        """Remember an enum member's content kind (``cmII``, ``cmCC``, ``notice``)."""
        if (name == CMCC) == self._cmcc:  # a kind this stream carries
            self._kinds[id(kind)] = (bytes((KIND_TAG[name],)), FIRST_TAGS[name])

    def frame_run(self, records: Sequence, redelivered_below: int = 0) -> list[bytes | None]:
        """The envelope of each record of a run (log records: their five fields).

        The delivery hot path: one loop with the framer's state in locals, no
        call a record but the payload's slice (and :meth:`_new_middle` when
        the receive time, clock or flag changes: once a log commit). Each
        envelope is ``head + payload[1:]``: the payload's first octet becomes
        the content kind's tag, a slice and a concatenation, cheaper than
        one join with a memoryview of the payload.

        Args:
            records: in any order; each is framed on its own. Tuples of the
                five fields, unpacked (the log's ``LogRecord`` and
                ``protocol.StoredRecord`` are NamedTuples).
            redelivered_below: records numbered below this are marked redelivered.

        Returns:
            Per record its envelope, or None: not the common case, use the
            general splice (``encode_envelope_raw``) for that one.
        """
        out: list[bytes | None] = []
        append, kinds, stream_tlv, join = out.append, self._kinds, self._stream_tlv, b"".join
        us, clock_now, flag = self._us, self._clock, self._flag
        middle, fixed = self._middle, self._fixed
        # The kind's entry and the sequence number's size are looked up again only
        # when they change: a run is of one kind, its numbers of one size.
        last_kind, found = _UNSET, None
        low, high, octets, tl = 0, -1, 0, 0  # numbers low..high take `octets`; tag and length
        for seq, received_us, kind, clock, payload in records:
            again = seq < redelivered_below
            if received_us != us or clock is not clock_now or again != flag:
                if not self._new_middle(received_us, clock, again):
                    append(None)
                    continue
                us, clock_now, flag, middle, fixed = (
                    received_us, clock, again, self._middle, self._fixed
                )  # fmt: skip
            if kind is not last_kind:
                found, last_kind = kinds.get(id(kind)), kind
            if found is None or not 0 <= seq <= MAX_SEQUENCE:
                append(None)
                continue
            size = len(payload)
            if size < 3 or payload[0] != 0x30:
                append(None)
                continue
            n = payload[1]
            if n < 0x80:
                start, body = 2, n
            elif n == 0x81 and payload[2] >= 0x80:
                start, body = 3, payload[2]
            elif n == 0x82 and payload[2] and size > 4:
                start, body = 4, payload[2] << 8 | payload[3]
            else:
                append(None)
                continue
            if start + body != size or payload[start] not in found[1]:
                append(None)
                continue
            # The sequence number's whole TLV from one int: tag, length, minimal octets.
            if not low <= seq <= high:
                octets = (seq.bit_length() >> 3) + 1
                low = 1 << (8 * octets - 9) if octets > 1 else 0
                high, tl = (1 << (8 * octets - 1)) - 1, _SEQUENCE_TL[octets]
            sequence = (tl | seq).to_bytes(octets + 2, "big")
            content = _LENGTHS[size] if size < 10000 else length(size)
            inner = fixed + octets + len(content) + size
            # The content's tag replaces the payload's first octet: the sizes add up.
            head = join(
                (
                    b"\xa0",
                    _LENGTHS[inner] if inner < 10000 else length(inner),
                    stream_tlv,
                    sequence,
                    middle,
                    content,
                    found[0],
                )
            )
            append(head + payload[1:])
        return out

    def _new_middle(self, received_us: int, clock: ClockStatus | None, redelivered: bool) -> bool:
        """Build the octets from the mediation time to the content tag; False: not ours to write."""
        if received_us.__class__ is not int or not 0 <= received_us < _LAST_US:
            return False
        if clock is not self._clock or redelivered != self._flag:
            clock_tlv = _CLOCK_TLV.get(clock)  # type: ignore[arg-type]
            if clock_tlv is None or redelivered.__class__ is not bool:
                return False
            self._tail = clock_tlv + (_REDELIVERED_TLV if redelivered else b"") + b"\xa5"
            self._clock, self._flag = clock, redelivered
        second, micro = divmod(received_us, 1_000_000)
        if second != self._second:
            date = (_EPOCH + dt.timedelta(seconds=second)).strftime("%Y%m%d%H%M%S")
            self._date = date.encode("ascii")
            self._second = second
        # The fraction without trailing zeros, as generalized_time writes it.
        if micro:
            millis, micros = divmod(micro, 1000)
            fraction = _MILLIS[millis] + _MICROS[micros] if micros else _MILLIS_ONLY[millis]
        else:
            fraction = b""
        self._middle = b"".join((_TIME_HEAD[len(fraction)], self._date, fraction, b"Z", self._tail))
        self._fixed = len(self._stream_tlv) + 2 + len(self._middle)  # + the sequence tag and length
        self._us = received_us
        return True


_UNSET = object()
# Tag 0x81 and the length octet of a sequence number of n octets, above its n octets.
_SEQUENCE_TL = tuple((0x81 << 8 | n) << (8 * n) for n in range(10))
# A time's fraction from two tables of a thousand: ".mmm" then "uuu" less
# its trailing zeros, or ".mmm" less its own when there are no microseconds.
_MILLIS = tuple(b".%03d" % n for n in range(1000))
_MICROS = tuple((b"%03d" % n).rstrip(b"0") for n in range(1000))
_MILLIS_ONLY = tuple((b".%03d" % n).rstrip(b"0") for n in range(1000))
# The time's tag and length: 14 digits, the fraction, "Z".
_TIME_HEAD = tuple(b"\x82" + bytes((15 + n,)) for n in range(8))


# Decoding ----------------------------------------------------------------------


def _skip_extensions(data: bytes, pos: int, end: int, last_root_tag: int, what: str) -> None:
    """Skip the fields a later version added after the root ones (extension marker)."""
    while pos < end:
        tag = data[pos]
        if tag & 0xC0 == 0x80 and tag & 0x1F <= last_root_tag:
            raise PDUError(f"{what}: field [{tag & 0x1F}] out of order or repeated", pos)
        pos = skip(data, pos, end)


def _read_stream(data: bytes, pos: int, end: int) -> StreamId:
    start, stop = expect(data, pos, end, 0x80, "stream.warrantHandle")
    try:
        handle = data[start:stop].decode("ascii")
    except UnicodeError:
        raise PDUError("stream.warrantHandle: not a VisibleString", start) from None
    start, at = expect(data, stop, end, 0x81, "stream.kind")
    kind = _KIND_OF.get(read_integer(data, start, at, "stream.kind"))
    if kind is None:
        raise PDUError("StreamKind: value unknown to this version", start)
    _skip_extensions(data, at, end, 1, "stream")
    try:
        return StreamId(handle, kind)
    except PDUError as exc:
        raise PDUError(exc.message, pos) from None


def read_envelope(data: bytes) -> EnvelopeFields:
    """Read a pduEnvelope's header fields and find its content.

    Args:
        data: the whole DeliveryMessage.

    Returns:
        ``(stream, sequence_number, mediation_time, clock_status,
        redelivered, content_kind, content_tag_offset, contents_start,
        contents_stop)``: the last three locate the content alternative's
        TLV and its contents inside ``data``.

    Raises:
        PDUError: anything not strict DER of the envelope, with its offset.
    """
    size = len(data)
    if size < 2 or data[0] != 0xA0:
        raise PDUError("not a DeliveryMessage pduEnvelope (tag 0xa0)", 0)
    pos, end = expect(data, 0, size, 0xA0, "pduEnvelope")
    if end != size:
        raise PDUError(f"pduEnvelope: {size - end} bytes after the PDU", end)
    # Each field below is read inline when it has its expected tag and a
    # short-form length that fits (a sufficient condition for it to be
    # valid); anything else goes through expect(), which names the fault.
    # A call costs about 0.2 us here, and a decode makes thirteen.
    if end - pos > 1 and data[pos] == 0xA0 and (n := data[pos + 1]) < 0x80 and pos + 2 + n <= end:
        start = pos + 2
        pos = start + n
    else:
        start, pos = expect(data, pos, end, 0xA0, "stream")
    raw = data[start:pos]
    stream = _STREAM_RECORDS.get(raw)
    if stream is None:
        stream = _read_stream(data, start, pos)
        if len(_STREAM_RECORDS) >= CACHE_LIMIT:
            _STREAM_RECORDS.clear()
        _STREAM_RECORDS[raw] = stream
    if end - pos > 1 and data[pos] == 0x81 and (n := data[pos + 1]) < 0x80 and pos + 2 + n <= end:
        start = pos + 2
        pos = start + n
    else:
        start, pos = expect(data, pos, end, 0x81, "sequenceNumber")
    sequence = read_integer(data, start, pos, "sequenceNumber")
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise PDUError(f"sequenceNumber: {sequence} is out of range", start)
    if end - pos > 1 and data[pos] == 0x82 and (n := data[pos + 1]) < 0x80 and pos + 2 + n <= end:
        start = pos + 2
        pos = start + n
    else:
        start, pos = expect(data, pos, end, 0x82, "mediationTime")
    time = read_time(data, start, pos, "mediationTime")
    clock = None
    if pos < end and data[pos] == 0x83:
        if end - pos > 2 and data[pos + 1] == 1 and data[pos + 2] < 0x80:
            value = data[pos + 2]
            pos += 3
        else:
            start, pos = expect(data, pos, end, 0x83, "clockStatus")
            value = read_integer(data, start, pos, "clockStatus")
        # Extensible: a later version's status reads as "not given", as in the reference.
        clock = _CLOCK_OF.get(value)
    redelivered = False
    if pos < end and data[pos] == 0x84:
        start, pos = expect(data, pos, end, 0x84, "redelivered")
        redelivered = read_boolean(data, start, pos, "redelivered")
    content, stop = expect(data, pos, end, 0xA5, "content")
    if stop != end:
        _skip_extensions(data, stop, end, 5, "pduEnvelope")
    kind = TAG_KIND.get(data[content]) if content < stop else None
    if kind is None:
        raise PDUError("content: an alternative unknown to this version", content)
    start, inner_stop = expect(data, content, stop, data[content], kind)
    if inner_stop != stop:
        raise PDUError("content: more than one value in an explicit tag", inner_stop)
    return stream, sequence, time, clock, redelivered, kind, content, start, stop
