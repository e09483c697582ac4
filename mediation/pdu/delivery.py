"""Records of the project's delivery module (``Mediation-Delivery``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from typing import ClassVar

from mediation.pdu.cmcc import CCApdu
from mediation.pdu.cmii import CmIIMessage, cmii_from_asn1, cmii_to_asn1
from mediation.pdu.convert import asn1, check_visible, from_asn1, to_asn1, utc
from mediation.pdu.errors import PDUError

MAX_SEQUENCE = 2**64 - 1
MAX_ID = 2**32 - 1


def check_range(field: str, value: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise PDUError(f"{field}: must be an integer from 0 to {high}, got {value!r}")


class StreamKind(enum.Enum):
    CMII = "cmII"
    CMCC = "cmCC"

    # Hashed for every envelope (a StreamId is a dict key on every hot path);
    # Enum's own __hash__ is Python code. Members are singletons, compared by
    # identity, so the identity hash is consistent with equality.
    __hash__ = object.__hash__


class ClockStatus(enum.Enum):
    SYNCHRONISED = "synchronised"
    UNSYNCHRONISED = "unsynchronised"
    UNKNOWN = "unknown"


class ReplayLimit(enum.Enum):
    """Which limit of the server left part of a replay request for later."""

    REQUEST = "request"  # ask again, after a pause
    CONNECTION = "connection"  # this connection's budget is spent: ask on a new one


class CompletenessEvent(enum.Enum):
    WARRANT_ACTIVE = "warrantActive"
    WARRANT_INACTIVE = "warrantInactive"
    UPSTREAM_GAP = "upstreamGap"
    TAP_LOST = "tapLost"
    TAP_RESTORED = "tapRestored"
    STORAGE_UNAVAILABLE = "storageUnavailable"
    STORAGE_RESTORED = "storageRestored"
    CLOCK_UNSYNCHRONISED = "clockUnsynchronised"
    CLOCK_SYNCHRONISED = "clockSynchronised"


@dataclasses.dataclass(frozen=True)
class StreamId:
    """One warrant stream: the opaque warrant handle and CmII or CmCC."""

    warrant_handle: str = asn1("warrantHandle")
    kind: StreamKind = asn1("kind")

    def __post_init__(self) -> None:
        check_visible("warrantHandle", self.warrant_handle, 1, 32)
        # Hashed at every dict lookup of the hot path (senders, receivers,
        # trackers, the log): once here, not through the enum's Python-level
        # __hash__ each time. The value is the generated one's.
        object.__setattr__(self, "_hash", hash((self.warrant_handle, self.kind)))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined, no-any-return]

    def __reduce__(self) -> tuple[type[StreamId], tuple[str, StreamKind]]:
        # Rebuilt, not copied: a string's hash differs between processes.
        return (StreamId, (self.warrant_handle, self.kind))

    def __str__(self) -> str:
        return f"{self.warrant_handle}/{self.kind.value}"


@dataclasses.dataclass(frozen=True)
class SequenceRange:
    """Sequence numbers ``first`` to ``last``, both included."""

    first: int = asn1("first")
    last: int = asn1("last")

    def __post_init__(self) -> None:
        check_range("first", self.first, MAX_SEQUENCE)
        check_range("last", self.last, MAX_SEQUENCE)
        if self.last < self.first:
            raise PDUError(f"SequenceRange: last {self.last} is before first {self.first}")

    def __len__(self) -> int:
        # len() cannot exceed sys.maxsize: a range wider than 2**63 - 1 raises
        # OverflowError here. Code sizing a peer's range uses :attr:`count`.
        return self.count

    @property
    def count(self) -> int:
        """How many sequence numbers the range holds (any size, no overflow)."""
        return self.last - self.first + 1


@dataclasses.dataclass(frozen=True)
class CompletenessNotice:
    """Something that makes the intercept incomplete, or ends such a state."""

    event: CompletenessEvent = asn1("event")
    event_time: dt.datetime = asn1("eventTime")
    period_start: dt.datetime | None = asn1("periodStart", None)
    period_end: dt.datetime | None = asn1("periodEnd", None)
    lost_count: int | None = asn1("lostCount", None)
    source: str | None = asn1("source", None)
    detail: str | None = asn1("detail", None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "event_time", utc(self.event_time, "eventTime"))
        if self.lost_count is not None:
            check_range("lostCount", self.lost_count, MAX_SEQUENCE)
        for name in ("period_start", "period_end"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, utc(value, name))


EnvelopeContent = CmIIMessage | CCApdu | CompletenessNotice


@dataclasses.dataclass(frozen=True)
class Envelope:
    """One PDU (or notice) of one warrant stream, with its sequence number."""

    TAG: ClassVar[int] = 0

    stream: StreamId = asn1("stream")
    sequence_number: int = asn1("sequenceNumber")
    mediation_time: dt.datetime = asn1("mediationTime")
    content: EnvelopeContent = asn1("content")
    clock_status: ClockStatus | None = asn1("clockStatus", None)
    redelivered: bool = asn1("redelivered", False)

    def __post_init__(self) -> None:
        check_range("sequenceNumber", self.sequence_number, MAX_SEQUENCE)
        object.__setattr__(self, "mediation_time", utc(self.mediation_time, "mediationTime"))
        if not isinstance(self.content, CmIIMessage | CCApdu | CompletenessNotice):
            raise PDUError(f"content: cannot carry a {type(self.content).__name__}")
        # A CmCC stream carries content only; CmII streams carry CmII and the
        # completeness notices. A mix-up would put PDUs in the wrong sequence.
        if (self.stream.kind is StreamKind.CMCC) != isinstance(self.content, CCApdu):
            raise PDUError(
                f"content: a {type(self.content).__name__} cannot ride in a "
                f"{self.stream.kind.value} stream"
            )

    def to_asn1(self) -> dict:
        if isinstance(self.content, CmIIMessage):
            content = ("cmII", cmii_to_asn1(self.content))
        elif isinstance(self.content, CCApdu):
            content = ("cmCC", to_asn1(self.content))
        else:
            content = ("notice", to_asn1(self.content))
        out = {
            "stream": to_asn1(self.stream),
            "sequenceNumber": self.sequence_number,
            "mediationTime": to_asn1(self.mediation_time),
            "content": content,
        }
        if self.clock_status is not None:
            out["clockStatus"] = self.clock_status.value
        if self.redelivered:
            out["redelivered"] = True
        return out

    @classmethod
    def from_asn1(cls, value: dict) -> Envelope:
        alternative, inner = value["content"]
        if alternative == "cmII":
            content = cmii_from_asn1(inner)
        elif alternative == "cmCC":
            content = from_asn1(CCApdu, inner)
        elif alternative == "notice":
            content = from_asn1(CompletenessNotice, inner)
        else:
            raise PDUError("content: an alternative unknown to this version")
        clock = value.get("clockStatus")
        return cls(
            stream=from_asn1(StreamId, value["stream"]),
            sequence_number=value["sequenceNumber"],
            mediation_time=from_asn1(dt.datetime, value["mediationTime"]),
            content=content,
            clock_status=None if clock is None else from_asn1(ClockStatus, clock),
            redelivered=bool(value.get("redelivered", False)),
        )


@dataclasses.dataclass(frozen=True)
class Keepalive:
    TAG: ClassVar[int] = 1

    keepalive_id: int = asn1("keepaliveId")
    sent_time: dt.datetime = asn1("sentTime")

    def __post_init__(self) -> None:
        check_range("keepaliveId", self.keepalive_id, MAX_ID)
        object.__setattr__(self, "sent_time", utc(self.sent_time, "sentTime"))


@dataclasses.dataclass(frozen=True)
class KeepaliveAnswer(Keepalive):
    """Echoes the keepalive's identifier and sent time."""

    TAG: ClassVar[int] = 2


@dataclasses.dataclass(frozen=True)
class Acknowledgement:
    """Cumulative: everything of ``stream`` below ``next_expected`` is stored."""

    TAG: ClassVar[int] = 3

    stream: StreamId = asn1("stream")
    next_expected: int = asn1("nextExpected")

    def __post_init__(self) -> None:
        check_range("nextExpected", self.next_expected, MAX_SEQUENCE)


@dataclasses.dataclass(frozen=True)
class ReplayRequest:
    TAG: ClassVar[int] = 4

    request_id: int = asn1("requestId")
    stream: StreamId = asn1("stream")
    ranges: tuple[SequenceRange, ...] = asn1("ranges")

    def __post_init__(self) -> None:
        check_range("requestId", self.request_id, MAX_ID)
        object.__setattr__(self, "ranges", tuple(self.ranges))


@dataclasses.dataclass(frozen=True)
class ReplayResult:
    TAG: ClassVar[int] = 5

    request_id: int = asn1("requestId")
    stream: StreamId = asn1("stream")
    delivered: int = asn1("delivered")
    unavailable: tuple[SequenceRange, ...] = asn1("unavailable", ())
    reason: str | None = asn1("reason", None)
    not_yet: tuple[SequenceRange, ...] | None = asn1("notYet", None)
    limited: ReplayLimit | None = asn1("limited", None)

    def __post_init__(self) -> None:
        check_range("requestId", self.request_id, MAX_ID)
        check_range("delivered", self.delivered, MAX_SEQUENCE)
        object.__setattr__(self, "unavailable", tuple(self.unavailable))
        # Empty and absent are one value: absent on the wire, as before notYet existed.
        object.__setattr__(self, "not_yet", tuple(self.not_yet or ()) or None)


@dataclasses.dataclass(frozen=True)
class ReceiverReport:
    TAG: ClassVar[int] = 6

    stream: StreamId = asn1("stream")
    report_time: dt.datetime = asn1("reportTime")
    received_count: int = asn1("receivedCount")
    missing: tuple[SequenceRange, ...] = asn1("missing", ())
    highest_sequence: int | None = asn1("highestSequence", None)
    missing_omitted: int | None = asn1("missingOmitted", None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "report_time", utc(self.report_time, "reportTime"))
        check_range("receivedCount", self.received_count, MAX_SEQUENCE)
        object.__setattr__(self, "missing", tuple(self.missing))
        if self.highest_sequence is not None:
            check_range("highestSequence", self.highest_sequence, MAX_SEQUENCE)
        if self.missing_omitted is not None:
            check_range("missingOmitted", self.missing_omitted, MAX_SEQUENCE)


@dataclasses.dataclass(frozen=True)
class ChainCheckpoint:
    TAG: ClassVar[int] = 7

    stream: StreamId = asn1("stream")
    last_sequence: int = asn1("lastSequence")
    chain_hash: bytes = asn1("chainHash")
    checkpoint_time: dt.datetime = asn1("checkpointTime")
    signature: bytes = asn1("signature")
    key_id: bytes = asn1("keyId")

    def __post_init__(self) -> None:
        check_range("lastSequence", self.last_sequence, MAX_SEQUENCE)
        if len(self.chain_hash) != 32:
            raise PDUError(f"chainHash: must be 32 octets, got {len(self.chain_hash)}")
        object.__setattr__(self, "checkpoint_time", utc(self.checkpoint_time, "checkpointTime"))


@dataclasses.dataclass(frozen=True)
class UnknownDeliveryMessage:
    """A delivery message of a later version: skipped whole by its length."""

    tag: int
    raw: bytes


DeliveryMessage = (
    Envelope
    | Keepalive
    | KeepaliveAnswer
    | Acknowledgement
    | ReplayRequest
    | ReplayResult
    | ReceiverReport
    | ChainCheckpoint
    | UnknownDeliveryMessage
)

DELIVERY_ALTERNATIVES: dict[str, type] = {
    "pduEnvelope": Envelope,
    "keepalive": Keepalive,
    "keepaliveAnswer": KeepaliveAnswer,
    "acknowledgement": Acknowledgement,
    "replayRequest": ReplayRequest,
    "replayResult": ReplayResult,
    "receiverReport": ReceiverReport,
    "checkpoint": ChainCheckpoint,
}
ALTERNATIVE_OF: dict[type, str] = {cls: name for name, cls in DELIVERY_ALTERNATIVES.items()}
