"""What every transport of the receiver shares: trackers, counters, output files.

UDP, live TLS connections and retrieval connections all feed their
machines' events to one :class:`ReceiverState`. It owns the per-stream
:class:`SequenceTracker` dict that the machines share (so a datagram that
turns up late, a redelivered TLS envelope and a retrieved one are all
recognised as the same sequence number), stores each new envelope, and
counts everything the live view and the gap report show.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import trio

from mediation import pdu
from mediation.lea.files import HashedFile
from mediation.lea.outputs import GAPS_FILE, CaseOutputs, safe_handle
from mediation.lea.report import StreamStats, case_report, unavailable_from_report
from mediation.protocol import (
    CheckpointReceived,
    EnvelopeReceived,
    Event,
    GapDetected,
    ReplayFinished,
    SequenceTracker,
    UnknownMessage,
)
from mediation.protocol.keepalive import UtcNow, system_utc_now

log = logging.getLogger("mediation.lea")

StreamPair = tuple[SequenceTracker, StreamStats]

MAX_VERDICTS = 4096  # handles whose acceptance is remembered (then it starts afresh)

RawFor = Callable[[Event], bytes]
"""The octets, exactly as received, of the message behind an event."""


class AcceptedStreams:
    """The streams this receiver stores: safe handles, and only the chosen ones if any.

    Given to the machines as their ``streams``: anything else is a protocol
    error there (a UDP datagram is dropped, a TLS connection closed).
    """

    def __init__(self, handles: Iterable[str] | None = None) -> None:
        self.handles = None if handles is None else frozenset(handles)
        self._verdicts: dict[str, bool] = {}  # asked for every envelope: remembered per handle

    def __contains__(self, stream: object) -> bool:
        if not isinstance(stream, pdu.StreamId):
            return False
        handle = stream.warrant_handle
        verdict = self._verdicts.get(handle)
        if verdict is None:
            verdict = safe_handle(handle) and (self.handles is None or handle in self.handles)
            if len(self._verdicts) >= MAX_VERDICTS:  # bounded whatever a peer sends
                self._verdicts.clear()
            self._verdicts[handle] = verdict
        return verdict


@dataclasses.dataclass
class Counters:
    """Things that went wrong, for the view and the summary (never fatal)."""

    bad_datagrams: int = 0  # authentic, but not a delivery message for us
    refused_connections: int = 0
    refused_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    protocol_errors: int = 0
    unknown_messages: int = 0
    # UDP datagrams that did not open (forged, altered, replayed, stale), by reason.
    unauthenticated: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    # Datagrams the kernel dropped at our UDP socket, its buffer full (SO_RXQ_OVFL).
    socket_drops: int = 0
    udp_buffer: int | None = None  # the receive buffer the kernel granted, bytes


class ReceiverState:
    """Trackers, counters and outputs of one ``mediate receive`` run."""

    def __init__(
        self,
        out_dir: Path,
        *,
        handles: Iterable[str] | None = None,
        utc_now: UtcNow = system_utc_now,
    ) -> None:
        self.out_dir = out_dir
        self.accepted = AcceptedStreams(handles)
        self.trackers: dict[pdu.StreamId, SequenceTracker] = {}
        self.stats: dict[pdu.StreamId, StreamStats] = {}
        self.cases: dict[str, CaseOutputs] = {}
        self.counters = Counters()
        self.last_arrival: float | None = None  # trio clock
        self.utc_now = utc_now
        # The wall clock read once per wake-up (per value of the trio clock):
        # everything a wake-up takes in arrived by then.
        self._arrived: tuple[float | None, dt.datetime | None] = (None, None)
        self._sync_lock = trio.Lock()

    def tracker(self, stream: pdu.StreamId) -> SequenceTracker:
        if stream not in self.trackers:
            self.trackers[stream] = SequenceTracker()
        return self.trackers[stream]

    def stream_stats(self, stream: pdu.StreamId) -> StreamStats:
        if stream not in self.stats:
            self.stats[stream] = StreamStats()
        return self.stats[stream]

    def case(self, handle: str) -> CaseOutputs:
        if handle not in self.cases:
            self.cases[handle] = CaseOutputs(self.out_dir, handle)
        return self.cases[handle]

    def resume(self) -> int:
        """Learn what earlier runs stored in ``out_dir``, so it is neither stored nor fetched again.

        Returns:
            How many envelopes were found.

        Raises:
            rawfile.RawFileError: a raw file is corrupt before its end.
        """
        found = 0
        if not self.out_dir.is_dir():
            return 0
        for directory in sorted(self.out_dir.iterdir()):
            if not directory.is_dir() or not safe_handle(directory.name):
                continue
            if self.accepted.handles is not None and directory.name not in self.accepted.handles:
                continue
            case = self.case(directory.name)
            for kind, sequences in case.resume().items():
                stream = pdu.StreamId(directory.name, kind)
                tracker = self.tracker(stream)
                for seq in sequences:
                    tracker.add(seq)
                self.stream_stats(stream).resumed = len(sequences)
                found += len(sequences)
            self._restore_unavailable(directory)
        return found

    def _restore_unavailable(self, directory: Path) -> None:
        try:
            report = json.loads((directory / GAPS_FILE).read_text())
        except (OSError, ValueError):
            return
        for kind, ranges in unavailable_from_report(report).items():
            try:
                stream = pdu.StreamId(directory.name, pdu.StreamKind(kind))
            except ValueError:
                continue
            for first, last, reason in ranges:
                self.tracker(stream).mark_unavailable(first, last, reason)

    def on_events(self, events: list[Event], raw_for: RawFor, transport: str, now: float) -> None:
        """Store and count what a machine reported.

        Args:
            events: as returned by the machine, in order.
            raw_for: the octets of an envelope's or checkpoint's message.
            transport: ``udp``, ``tls`` or ``retrieval``, for the counters.
            now: the trio clock.
        """
        received: list[EnvelopeReceived] = []  # stored together, below
        for event in events:
            if event.__class__ is EnvelopeReceived or isinstance(event, EnvelopeReceived):
                received.append(event)
            elif isinstance(event, CheckpointReceived):
                self.case(event.checkpoint.stream.warrant_handle).store_checkpoint(raw_for(event))
            elif isinstance(event, GapDetected):
                self.stream_stats(event.stream).gaps_opened += 1
            elif isinstance(event, ReplayFinished):
                self._replay_finished(event)
            elif isinstance(event, UnknownMessage):
                self.counters.unknown_messages += 1
        if received:  # (the checkpoints' file and the envelopes' are not the same)
            self.envelopes(received, raw_for, transport, now)

    def envelopes(
        self, received: list[EnvelopeReceived], raw_for: RawFor, transport: str, now: float
    ) -> None:
        """Count each ``EnvelopeReceived`` and store the new ones, a handle's in one call.

        What a read or a wake-up brings is stored together
        (``CaseOutputs.store_all``): each file appended once, in order.

        Args:
            received: the machine's envelope events, in order.
            raw_for: an envelope's octets, exactly as received.
            transport: ``udp``, ``tls`` or ``retrieval``, for the counters.
            now: the trio clock.
        """
        self.last_arrival = now
        new: dict[str, list[tuple[pdu.Envelope, bytes, bool]]] = {}
        stats_of = self.stats
        stream = stats = items = last = None
        # A run of one stream's envelopes counted here, added to its stats at the run's end.
        live = fetched = duplicates = redelivered = octets = 0
        for event in received:
            envelope = event.envelope
            if envelope.stream is not stream:
                if stats is not None:  # the run before ends (two streams may alternate)
                    stats.last_sequence = last.sequence_number  # type: ignore[union-attr]
                    _count(stats, live, fetched, duplicates, redelivered, octets)
                    live = fetched = duplicates = redelivered = octets = 0
                stream = envelope.stream
                stats = stats_of.get(stream)
                if stats is None:
                    stats = self.stream_stats(stream)
                stats.transports.add(transport)
                items = new.setdefault(stream.warrant_handle, [])
            last = envelope
            if event.duplicate:
                duplicates += 1
                continue
            retrieved = event.retrieved
            raw = raw_for(event)
            items.append((envelope, raw, retrieved))  # type: ignore[union-attr]
            if retrieved:
                fetched += 1
            else:
                live += 1
            redelivered += envelope.redelivered
            octets += len(raw)
        if stats is not None:
            stats.last_sequence = last.sequence_number  # type: ignore[union-attr]
            _count(stats, live, fetched, duplicates, redelivered, octets)
        at = None
        for handle, items in new.items():
            if not items:
                continue  # duplicates only: nothing written, no directory made
            if at is None:
                seen, at = self._arrived
                if seen != now or at is None:
                    at = self.utc_now()
                    self._arrived = (now, at)
            case = self.cases.get(handle)
            if case is None:
                case = self.case(handle)
            case.store_all(items, at)

    def _replay_finished(self, event: ReplayFinished) -> None:
        for first, last in event.unavailable:
            log.warning(
                "retrieval: %s %d..%d never available: %s", event.stream, first, last, event.reason
            )
        if event.not_yet:
            first, last = event.not_yet[0][0], event.not_yet[-1][1]
            log.info(
                "retrieval: %s %d..%d (%d ranges) not yet: %s; asking again later",
                event.stream,
                first,
                last,
                len(event.not_yet),
                event.reason,
            )
        elif event.still_missing:
            log.info(
                "retrieval: %s: %d asked for still missing; asking again later",
                event.stream,
                event.still_missing,
            )

    def flush(self) -> None:
        """Hand everything written to the kernel (survives a crash of this process)."""
        for case in self.cases.values():
            case.flush()

    async def make_durable(self) -> None:
        """Flush and fsync every file written since the last time.

        Serialised: a caller that finds a sync under way waits for it, so
        when this returns, everything written before the call is on disk.
        An acknowledgement is sent only after this (it means "stored").
        """
        async with self._sync_lock:
            dirty = [f for f in self._files() if f.dirty]
            if not dirty:
                return
            fds = [f.begin_sync() for f in dirty]
            await trio.to_thread.run_sync(_fsync_all, fds)

    def unsynced(self) -> int:
        """Octets written since the last sync began, over every file."""
        return sum(f.unsynced for case in self.cases.values() for f in case.files)

    def _files(self) -> list[HashedFile]:
        return [f for case in self.cases.values() for f in case.files]

    def case_streams(self, handle: str) -> dict[pdu.StreamKind, StreamPair]:
        return {
            stream.kind: (tracker, self.stream_stats(stream))
            for stream, tracker in self.trackers.items()
            if stream.warrant_handle == handle
        }

    def write_gap_reports(self, *, final: bool = False) -> None:
        """Write every handle's ``gaps.json`` (with ``final``, its ``.sha256`` too)."""
        now = self.utc_now()
        for handle, case in self.cases.items():
            notes = {"notIpPackets": {"count": case.not_ip, "sequences": case.not_ip_sequences}}
            if case.torn:
                notes["tornTailsCut"] = dict(case.torn)
            if case.unviewable_count:
                notes["notInPcapOrJson"] = {
                    "count": case.unviewable_count,
                    "envelopes": case.unviewable,
                }
            report = case_report(handle, self.case_streams(handle), notes, now, final=final)
            case.write_gaps(report, final=final)

    def close(self, *, sort: bool = False) -> dict[str, dict[str, str]]:
        """Close every file, write the hashes and the final gap reports.

        Returns:
            Per handle, file name -> SHA-256 of every file written.
        """
        digests = {handle: case.close(sort=sort) for handle, case in self.cases.items()}
        self.write_gap_reports(final=True)
        for handle, case in self.cases.items():
            digests[handle] = dict(case.digests)
        return digests


def _count(
    stats: StreamStats, live: int, fetched: int, duplicates: int, redelivered: int, octets: int
) -> None:
    """Add a run's counts to its stream's stats (:meth:`ReceiverState.envelopes`)."""
    stats.received += live
    stats.retrieved += fetched
    stats.duplicates += duplicates
    stats.redelivered += redelivered
    stats.octets += octets


def _fsync_all(fds: list[int]) -> None:
    for fd in fds:
        os.fsync(fd)
