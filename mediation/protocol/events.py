"""What the delivery machines tell their owner: frozen dataclasses, no behaviour."""

from __future__ import annotations

import dataclasses

from mediation.pdu import ChainCheckpoint, Envelope, ReceiverReport, ReplayLimit, StreamId

Range = tuple[int, int]
"""Sequence numbers ``first`` to ``last``, both included."""


@dataclasses.dataclass(frozen=True)
class EnvelopeReceived:
    """An envelope arrived.

    ``duplicate``: its sequence number was already held, so store it no
    second time. ``retrieved``: it answers one of our replay requests.
    ``raw``: the message's octets exactly as received, where the machine
    framed them (a stream connection); not part of the event's value.
    """

    envelope: Envelope
    duplicate: bool
    retrieved: bool = False
    raw: bytes | None = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class GapDetected:
    """A datagram jumped ahead: ``first`` to ``last`` have not (yet) arrived."""

    stream: StreamId
    first: int
    last: int


@dataclasses.dataclass(frozen=True)
class UnknownMessage:
    """A message of a later protocol version, skipped whole by its length."""

    tag: int
    raw: bytes


@dataclasses.dataclass(frozen=True)
class CheckpointReceived:
    """The server's signed hash-chain checkpoint for a stream.

    ``raw``: as for :class:`EnvelopeReceived`.
    """

    checkpoint: ChainCheckpoint
    raw: bytes | None = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class LossCount:
    """UDP loss of one stream to one endpoint, as of the latest receiver report.

    Over the sender's range ``[first_sent, last_sent]``:
    ``sent == received + lost + unreported`` always holds.

    Attributes:
        sent: envelopes sent.
        received: of those up to the reported highest, how many the receiver has.
        lost: of those up to the reported highest, how many it is missing.
        unreported: sent after the reported highest; neither counted
            received nor lost yet (in flight, or report lag).
        exact: False only when the report left ranges out and some of the
            left-out ones may lie below ``first_sent``; ``lost`` is then an
            upper bound.
    """

    sent: int = 0
    received: int = 0
    lost: int = 0
    unreported: int = 0
    exact: bool = True


@dataclasses.dataclass(frozen=True)
class ReportReceived:
    """A receiver report was applied; ``loss`` is the new figure."""

    report: ReceiverReport
    loss: LossCount


@dataclasses.dataclass(frozen=True)
class EndpointSilent:
    """No receiver report for the configured number of intervals."""

    stream: StreamId
    last_report: float | None


@dataclasses.dataclass(frozen=True)
class EndpointResponsive:
    """A report arrived from an endpoint that had been silent."""

    stream: StreamId


@dataclasses.dataclass(frozen=True)
class AckReceived:
    """The agency holds everything of ``stream`` below ``next_expected``."""

    stream: StreamId
    next_expected: int
    newly_acked: int


@dataclasses.dataclass(frozen=True)
class KeepaliveAnswered:
    """Our keepalive came back; ``round_trip`` in seconds of the owner's clock."""

    keepalive_id: int
    round_trip: float


@dataclasses.dataclass(frozen=True)
class PeerTimedOut:
    """Our keepalive went unanswered for ``waited`` seconds: drop the connection."""

    waited: float


@dataclasses.dataclass(frozen=True)
class ReplayWanted:
    """The agency asked for ``ranges`` of ``stream`` again: read them from the log.

    Feed each record found to ``RetrievalServer.envelope`` (or
    ``StreamSender.replay_envelope``), then call ``finish``.
    """

    request_id: int
    stream: StreamId
    ranges: tuple[Range, ...]


@dataclasses.dataclass(frozen=True)
class ReplayFinished:
    """The server closed one of our replay requests.

    Attributes:
        delivered: envelopes the server says it sent (and that arrived: the
            client checks).
        unavailable: ranges the server can never send (past retention,
            lost); now permanently missing.
        still_missing: sequence numbers asked for that are neither held nor
            unavailable (not yet stored, or left for later by a limit).
        not_yet: ranges the server did not send now but may later (past
            the stream's end, or a limit): asked again after a pause.
        limited: which server limit left ranges for later, if any.
    """

    request_id: int
    stream: StreamId
    delivered: int
    unavailable: tuple[Range, ...]
    reason: str | None
    still_missing: int
    not_yet: tuple[Range, ...] = ()
    limited: ReplayLimit | None = None


Event = (
    EnvelopeReceived
    | GapDetected
    | UnknownMessage
    | CheckpointReceived
    | ReportReceived
    | EndpointSilent
    | EndpointResponsive
    | AckReceived
    | KeepaliveAnswered
    | PeerTimedOut
    | ReplayWanted
    | ReplayFinished
)
