"""The one place delivery messages become octets and octets become messages.

Everything the machines send or receive passes through :func:`envelope_bytes`,
:func:`encode_message` and :func:`decode_message`, so the hot-path codec
(``mediation.pdu.fast``) replaces the reference codec here alone; envelopes
already use it.
"""

from __future__ import annotations

import datetime as dt
import enum
import operator
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from mediation import pdu
from mediation.pdu import fast
from mediation.pdu.errors import PDUError
from mediation.pdu.fast_control import encode_acknowledgement, encode_checkpoint
from mediation.pdu.fast_envelope import RecordFramer
from mediation.protocol.errors import ProtocolError

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_CONTROL_TAGS = (0xA3, 0xA6)  # acknowledgement, receiverReport


class ContentKind(enum.Enum):
    """What a log record carries: the EnvelopeContent alternative."""

    CMII = "cmII"
    CMCC = "cmCC"
    NOTICE = "notice"


def content_kind(kind: object) -> ContentKind:
    """A content kind from any of its spellings.

    Accepts this enum, its ASN.1 name (``"cmII"``, ``"cmCC"``, ``"notice"``),
    or any enum member named ``CMII``/``CMCC``/``NOTICE`` (the evidence
    log's one-byte ``mediation.log.format.ContentKind``), so log records
    need no conversion on the hot path.

    Raises:
        ValueError: none of those.
    """
    if isinstance(kind, ContentKind):
        return kind
    if isinstance(kind, str):
        return ContentKind(kind)
    name = getattr(kind, "name", None)
    if isinstance(kind, enum.Enum) and name in ContentKind.__members__:
        return ContentKind[name]
    raise ValueError(f"{kind!r} is not a content kind")


class LogRecord(Protocol):
    """What the evidence log stores per record, and all an envelope is built from.

    The field names are those of ``mediation.log.format.LogRecord``, so the
    log's records are passed as they are.
    """

    @property
    def seq(self) -> int: ...
    @property
    def received_us(self) -> int: ...
    @property
    def kind(self) -> object: ...
    @property
    def clock(self) -> pdu.ClockStatus | None: ...
    @property
    def payload(self) -> bytes: ...


class StoredRecord(NamedTuple):
    """A plain :class:`LogRecord`, for tests and for owners without the log's type.

    A NamedTuple, as the log's record is: the framer unpacks records as
    tuples of these five fields (``RecordFramer.frame_run``).

    Attributes:
        seq: the record's sequence number in its stream.
        received_us: when the server stored it, microseconds since 1970 UTC.
        kind: the content alternative (see :func:`content_kind`).
        clock: whether the server's clock was synchronised, None if not known.
        payload: the DER of the content on its own (an ``IasProtocol``, an
            ``IAS-CC-APDU`` or a ``CompletenessNotice``).
    """

    seq: int
    received_us: int
    kind: ContentKind
    clock: pdu.ClockStatus | None
    payload: bytes


def envelope_bytes(
    stream: pdu.StreamId,
    seq: int,
    received: int,
    kind: object,
    clock: pdu.ClockStatus | None,
    content_der: bytes,
    redelivered: bool,
) -> bytes:
    """The DeliveryMessage (pduEnvelope) octets for one log record.

    Splices the stored DER behind the envelope header with
    :func:`mediation.pdu.fast.encode_envelope_raw` (proven byte-identical
    to the reference codec): the content is framed and checked, not decoded.

    Args:
        stream: the warrant stream.
        seq: the sequence number.
        received: the log's receive time, microseconds since 1970 UTC.
        kind: ``cmII``, ``cmCC`` or ``notice``, in any spelling :func:`content_kind` takes.
        clock: the clock status recorded with it, None to leave it out.
        content_der: the content's own DER.
        redelivered: True when this envelope was sent before.

    Raises:
        ValueError: the record is not a valid envelope (a broken log, not a peer).
    """
    kind_name = _KIND_NAMES.get(id(kind))
    if kind_name is None:
        kind_name = _kind_name(kind, seq, stream)
    try:
        mediation_time = _EPOCH + _timedelta(0, 0, received)
        data = fast.encode_envelope_raw(
            stream, seq, mediation_time, kind_name, content_der, clock, redelivered
        )
    except PDUError as exc:
        raise ValueError(f"record {seq} of {stream}: content is not {kind_name}: {exc}") from None
    except (TypeError, OverflowError) as exc:  # a time outside datetime's range
        raise ValueError(f"record {seq} of {stream}: cannot build an envelope: {exc}") from None
    # A CmCC stream carries content only; CmII streams carry CmII and the
    # notices (what pdu.Envelope checks; the splice cannot see it).
    if (stream.kind is _CMCC_STREAM) != (kind_name == "cmCC"):
        raise ValueError(f"record {seq} of {stream}: {kind_name} cannot ride in this stream")
    return data


# Per envelope, content_kind() costs more than the splice's header: enum
# members are singletons, so their names are looked up by identity.
_KIND_NAMES: dict[int, str] = {}
_CMCC_STREAM = pdu.StreamKind.CMCC
_timedelta = dt.timedelta


def _kind_name(kind: object, seq: int, stream: pdu.StreamId) -> str:
    """The ASN.1 name of a content kind (remembered for enum members)."""
    try:
        name = content_kind(kind).value
    except ValueError as exc:
        raise ValueError(f"record {seq} of {stream}: {exc}") from None
    if isinstance(kind, enum.Enum):  # never a str: its id may be reused once it is freed
        _KIND_NAMES[id(kind)] = name
    return name


def record_envelope(stream: pdu.StreamId, record: LogRecord, redelivered: bool) -> bytes:
    """:func:`envelope_bytes` for a :class:`LogRecord`."""
    return envelope_bytes(
        stream,
        record.seq,
        record.received_us,
        record.kind,
        record.clock,
        record.payload,
        redelivered,
    )


# Generations' worth of envelopes a cache that nobody takes from lets go by unkept.
PAUSE_GENERATIONS = 4
_SEQ = operator.attrgetter("seq")


class StreamEnvelopes:
    """The envelopes of one stream, encoded once for every endpoint that delivers it.

    Each endpoint worker of the stream asks for the envelope of the same
    log record (the ring hands every reader the same record object); the
    first one encodes it (:class:`mediation.pdu.fast_envelope.RecordFramer`,
    else :func:`envelope_bytes`: byte-identical either way), the others
    take the bytes. Workers :meth:`join` while they deliver (a TLS worker
    while connected) and :meth:`leave` after; with fewer than two nothing
    is kept. An entry is dropped once every endpoint has taken it; one
    that a lagging endpoint never takes is dropped when the cache turns
    over (at most two generations of ``generation_bytes`` each, plus the
    last run kept: a generation turns over between runs, never inside one),
    so the cache costs memory only while endpoints are apart, and a
    bounded amount.
    When a generation turns over with none of its entries taken and older
    ones dropped untaken, the others are further behind than the cache
    reaches (a TLS endpoint at saturation, seconds behind a UDP one): it
    is emptied and keeps nothing for :data:`PAUSE_GENERATIONS`
    generations' worth of envelopes, then tries again, so the leading
    endpoint does not pay to keep what nobody takes.
    """

    def __init__(
        self, stream: pdu.StreamId, consumers: int = 0, generation_bytes: int = 256 * 1024
    ) -> None:
        """Args:
        stream: the warrant stream.
        consumers: how many endpoints deliver it now (fewer than 2: nothing is kept).
        generation_bytes: envelope octets kept per generation.
        """
        self.stream = stream
        self.consumers = consumers
        self.generation_bytes = generation_bytes
        self._framer = RecordFramer(stream)
        self._current: dict[int, list] = {}
        self._previous: dict[int, list] = {}
        self._current_bytes = 0
        self._hits = 0  # entries taken since the last turnover
        self._paused = 0  # envelope octets still to go by without keeping them
        self._high = -1  # no entry kept has a higher sequence number
        self.encoded = 0  # envelopes encoded here (the rest came from the cache)

    def join(self) -> None:
        """An endpoint starts delivering the stream."""
        self.consumers += 1
        self._paused = 0

    def leave(self) -> None:
        """An endpoint stops delivering it (what it has not taken is not kept for it)."""
        self.consumers -= 1
        self._current, self._previous, self._current_bytes = {}, {}, 0
        self._paused = 0

    def envelope(self, record: LogRecord, redelivered: bool = False) -> bytes:
        """The envelope of ``record`` (see :func:`envelope_bytes`).

        Raises:
            ValueError: the record is not a valid envelope (a broken log).
        """
        return self.envelopes((record,), record.seq + 1 if redelivered else 0)[0]

    def envelopes(self, records: Sequence[LogRecord], redelivered_below: int = 0) -> list[bytes]:
        """The envelopes of a run of records, in order (:meth:`envelope` of each).

        The framer frames the run in one call, no call a record (the
        delivery hot path; a batch of 256 records is typical at saturation);
        with other endpoints' envelopes in the cache, those are taken first.

        Args:
            records: log records (no checkpoints).
            redelivered_below: records numbered below this are marked
                redelivered (never taken from, nor kept in, the cache).

        Raises:
            ValueError: a record is not a valid envelope (a broken log).
        """
        shared = self.consumers > 1
        keep = shared and self._paused <= 0
        # Only other endpoints' entries can be taken here, and they are in
        # the cache now or never: an empty cache (paused) is not looked in,
        # nor is it for a run entirely above every number it holds (the
        # leading endpoint's, while a lagging one's entries wait there).
        if (
            shared
            and (self._current or self._previous)
            and records
            and min(map(_SEQ, records)) <= self._high
        ):
            out = self._taken(records, redelivered_below, keep)
        else:  # nothing to take: the framer's run, one call (the usual case)
            out = self._framed(records, redelivered_below)
            if keep:
                self._keep_run(records, out, redelivered_below)
        if shared and not keep:
            self._paused -= sum(map(len, out))
        return out

    def _taken(self, records: Sequence[LogRecord], redelivered_below: int, keep: bool) -> list:
        """:meth:`envelopes` while the cache holds entries: each taken from it, or framed."""
        out: list = []
        append, missed = out.append, []  # missed: the records to frame here, by index
        current, previous, hits = self._current, self._previous, 0
        for i, record in enumerate(records):
            seq = record.seq
            if seq >= redelivered_below:
                entry = current.get(seq) or previous.get(seq)
                if entry is not None and entry[1] is record:
                    hits += 1
                    entry[2] -= 1
                    # Every endpoint has it: drop it from whichever generation holds it.
                    if entry[2] <= 0 and current.pop(seq, None) is None:
                        del previous[seq]
                    append(entry[0])
                    continue
            missed.append(i)
            append(None)
        self._hits += hits
        if missed:
            run = records if len(missed) == len(records) else [records[i] for i in missed]
            framed = self._framed(run, redelivered_below)
            for i, data in zip(missed, framed, strict=True):
                out[i] = data
            if keep:
                self._keep_run(run, framed, redelivered_below)
        return out

    def _framed(self, records: Sequence[LogRecord], redelivered_below: int) -> list[bytes]:
        """Each record's envelope: the framer's run, the general splice where it says None."""
        out = self._framer.frame_run(records, redelivered_below)
        general = 0
        if None in out:
            for i, data in enumerate(out):
                if data is None:
                    record = records[i]
                    out[i] = self._encode(record, record.seq < redelivered_below)
                    general += 1
        self.encoded += len(out) - general  # _encode counts its own
        return out  # type: ignore[return-value]  # no None left

    def _keep_run(
        self, records: Sequence[LogRecord], envelopes: list[bytes], redelivered_below: int
    ) -> None:
        """Keep each envelope for the other endpoints (not a redelivered one).

        The generation turns over before a run, never inside one: a run (up
        to a log read's 256 records) longer than a generation is kept whole,
        so the endpoint that takes it next finds all of it, and only a
        generation the others had a turn to take from can tell that they are
        out of reach.
        """
        if self._current_bytes >= self.generation_bytes and self._turn_over():
            return
        others, current, size, high = self.consumers - 1, self._current, 0, self._high
        for record, data in zip(records, envelopes, strict=True):
            seq = record.seq
            if seq >= redelivered_below:
                current[seq] = [data, record, others]
                size += len(data)
                if seq > high:
                    high = seq
        self._current_bytes += size
        self._high = high

    def _turn_over(self) -> bool:
        """A full generation becomes the previous one; True: paused (see the class)."""
        if not self._hits and self._previous:  # out of reach: pause
            self._paused = PAUSE_GENERATIONS * self.generation_bytes
            self._previous, self._current = {}, {}
        self._hits = 0
        self._previous, self._current, self._current_bytes = self._current, {}, 0
        return self._paused > 0

    def _encode(self, record: LogRecord, redelivered: bool) -> bytes:
        """The general splice, for what the framer does not write (it learns enum kinds here)."""
        self.encoded += 1
        kind = record.kind
        data = record_envelope(self.stream, record, redelivered)
        if isinstance(kind, enum.Enum):  # valid: next time the framer knows this kind
            self._framer.learn_kind(kind, content_kind(kind).value)
        return data

    @property
    def held(self) -> int:
        """Envelopes kept for endpoints that have not taken them yet."""
        return len(self._current) + len(self._previous)


def encode_message(message: pdu.DeliveryMessage) -> bytes:
    """Octets of a delivery message we built (never fails for a valid record)."""
    # By hand, byte-identical: the agency's ack every few dozen envelopes,
    # and every endpoint's copy of each signed checkpoint of its streams.
    if message.__class__ is pdu.Acknowledgement:
        return encode_acknowledgement(message)  # type: ignore[arg-type]
    if message.__class__ is pdu.ChainCheckpoint:
        return encode_checkpoint(message)  # type: ignore[arg-type]
    return pdu.encode(message)


def decode_message(data: bytes) -> pdu.DeliveryMessage:
    """Decode one complete delivery message from the peer.

    Returns:
        The record; a later version's alternative comes back as
        :class:`mediation.pdu.UnknownDeliveryMessage`.

    Raises:
        ProtocolError: not a valid DeliveryMessage (the PDU error's text).
    """
    # The reference decoder passes any unknown tag off as a later version's
    # alternative; only context tags can be one.
    if not data or data[0] & 0xC0 != 0x80:
        first = f"octet 0x{data[0]:02x}" if data else "empty data"
        raise ProtocolError(f"malformed delivery message: {first} cannot start one")
    try:
        if data.__class__ is not bytes:  # (bytes() of bytes is itself, but a call per message)
            data = bytes(data)
        # The hot path for envelopes (about 7 us against 80 us for the
        # reference); everything else, later versions' messages included,
        # through the reference codec.
        if data[0] == 0xA0:
            return fast.decode_envelope(data)
        # Acknowledgements and receiver reports, the agency's side of the
        # hot path: by hand (about 3 us); anything unusual, by the reference.
        if data[0] in _CONTROL_TAGS and (control := fast.decode_control(data)) is not None:
            return control
        return pdu.decode_delivery(data)
    except PDUError as exc:
        raise ProtocolError(f"malformed delivery message: {exc}") from None
