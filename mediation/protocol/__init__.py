"""Delivery to agencies as sans-I/O state machines (no sockets, no clocks).

Each machine is fed octets and the owner's monotonic time (``now``) and
answers with octets to send and events; timers run when the owner calls
``tick(now)`` at ``next_deadline()``. The same machines serve the trio
server and ``mediate receive``. Wire protocol: docs/delivery-protocol.md.

Public surface::

    DatagramSender, DatagramReceiver          UDP: one envelope per datagram, reports
    StreamSender, StreamReceiver              TLS/TCP: window, acks, keepalives, resume
    StreamConnection                          what the two share (receive_data, tick, ...)
    RetrievalServer, RetrievalClient          replay of missed ranges from the log (and its limits)
    MessageBuffer                             BER framing of a byte stream
    SequenceTracker                           what a receiver holds and misses
    envelope_bytes, StoredRecord, LogRecord   a log record as envelope octets
    ProtocolError                             the peer broke the protocol
    events: EnvelopeReceived, GapDetected, ...
"""

from mediation.protocol.connection import StreamConnection
from mediation.protocol.datagram import DatagramReceiver, DatagramSender, parse_datagram
from mediation.protocol.envelope import ContentKind, LogRecord, StoredRecord, envelope_bytes
from mediation.protocol.errors import ProtocolError
from mediation.protocol.events import (
    AckReceived,
    CheckpointReceived,
    EndpointResponsive,
    EndpointSilent,
    EnvelopeReceived,
    Event,
    GapDetected,
    KeepaliveAnswered,
    LossCount,
    PeerTimedOut,
    Range,
    ReplayFinished,
    ReplayWanted,
    ReportReceived,
    UnknownMessage,
)
from mediation.protocol.framing import MessageBuffer
from mediation.protocol.gaps import SequenceTracker
from mediation.protocol.retrieval import RetrievalClient, RetrievalLimits, RetrievalServer
from mediation.protocol.stream import StreamReceiver, StreamSender

__all__ = [
    "AckReceived",
    "CheckpointReceived",
    "ContentKind",
    "DatagramReceiver",
    "DatagramSender",
    "EndpointResponsive",
    "EndpointSilent",
    "EnvelopeReceived",
    "Event",
    "GapDetected",
    "KeepaliveAnswered",
    "LogRecord",
    "LossCount",
    "MessageBuffer",
    "PeerTimedOut",
    "ProtocolError",
    "Range",
    "ReplayFinished",
    "ReplayWanted",
    "ReportReceived",
    "RetrievalClient",
    "RetrievalLimits",
    "RetrievalServer",
    "SequenceTracker",
    "StoredRecord",
    "StreamConnection",
    "StreamReceiver",
    "StreamSender",
    "UnknownMessage",
    "envelope_bytes",
    "parse_datagram",
]
