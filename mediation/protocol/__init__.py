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

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for readers and type checkers; at run time each name loads on first use
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

# Each name's module, imported on first use (PEP 562): a process that needs
# one machine (the tap: the sealed datagram and the tap link) does not load
# the delivery machines, retrieval and the gap tracker (~0.06 s of a start).
_WHERE = {
    "StreamConnection": "mediation.protocol.connection",
    "DatagramReceiver": "mediation.protocol.datagram",
    "DatagramSender": "mediation.protocol.datagram",
    "parse_datagram": "mediation.protocol.datagram",
    "ContentKind": "mediation.protocol.envelope",
    "LogRecord": "mediation.protocol.envelope",
    "StoredRecord": "mediation.protocol.envelope",
    "envelope_bytes": "mediation.protocol.envelope",
    "ProtocolError": "mediation.protocol.errors",
    "AckReceived": "mediation.protocol.events",
    "CheckpointReceived": "mediation.protocol.events",
    "EndpointResponsive": "mediation.protocol.events",
    "EndpointSilent": "mediation.protocol.events",
    "EnvelopeReceived": "mediation.protocol.events",
    "Event": "mediation.protocol.events",
    "GapDetected": "mediation.protocol.events",
    "KeepaliveAnswered": "mediation.protocol.events",
    "LossCount": "mediation.protocol.events",
    "PeerTimedOut": "mediation.protocol.events",
    "Range": "mediation.protocol.events",
    "ReplayFinished": "mediation.protocol.events",
    "ReplayWanted": "mediation.protocol.events",
    "ReportReceived": "mediation.protocol.events",
    "UnknownMessage": "mediation.protocol.events",
    "MessageBuffer": "mediation.protocol.framing",
    "SequenceTracker": "mediation.protocol.gaps",
    "RetrievalClient": "mediation.protocol.retrieval",
    "RetrievalLimits": "mediation.protocol.retrieval",
    "RetrievalServer": "mediation.protocol.retrieval",
    "StreamReceiver": "mediation.protocol.stream",
    "StreamSender": "mediation.protocol.stream",
}


def __getattr__(name: str) -> Any:
    """A public name, its module imported now (once: it is then an attribute).

    Raises:
        AttributeError: not a public name of the package (nor a submodule imported yet).
    """
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
