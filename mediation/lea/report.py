"""Per-stream counters, and the gap report they make with the stream's tracker.

The :class:`~mediation.protocol.SequenceTracker` is the truth about what is
held and missing (live, retrieved, or read back from an earlier run's raw
file); :class:`StreamStats` counts what happened in this run. The gap
report (``gaps.json``) puts the two together per stream.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from mediation import pdu
from mediation.pdu.delivery import MAX_SEQUENCE
from mediation.pdu.jsonview import iso_time
from mediation.protocol import SequenceTracker

MISSING_LISTED = 10_000  # ranges listed in gaps.json; the count is always exact
# What servers before the notYet field said of ranges past a stream's end:
# that was "not yet", so a restarted receiver asks for them again.
LEGACY_NOT_YET_REASON = "not stored"


@dataclasses.dataclass
class StreamStats:
    """What one stream did in this run (mutable: it counts as it goes)."""

    received: int = 0  # new envelopes stored, live
    retrieved: int = 0  # new envelopes stored, fetched by retrieval
    duplicates: int = 0  # arrivals of what was held already: not stored again
    redelivered: int = 0  # new envelopes the server marked as sent before
    octets: int = 0  # of the envelopes stored
    resumed: int = 0  # held from an earlier run (read back at start)
    gaps_opened: int = 0  # times a UDP datagram jumped ahead
    last_sequence: int | None = None  # of the latest arrival
    transports: set[str] = dataclasses.field(default_factory=set)

    @property
    def stored(self) -> int:
        """Envelopes written in this run."""
        return self.received + self.retrieved


def stream_report(tracker: SequenceTracker, stats: StreamStats) -> dict[str, Any]:
    """One stream's entry of ``gaps.json``.

    ``missing`` lists the ranges from 0 to the highest held that are not
    held (unavailable ones included: they stay missing), lowest first;
    ``unavailable`` repeats those the server can *never* supply (past
    retention, lost), with its reason; ``notYet`` those it answered "not
    yet" (past the stream's end, or over a limit) and that are still not
    held: they are asked for again. ``notAsked`` lists gaps too wide to be
    real (:data:`~mediation.protocol.gaps.MAX_GAP_SPAN`), never requested.
    """
    ranges = tracker.missing(MISSING_LISTED)
    total_ranges = tracker.missing_range_count
    not_yet = tracker.not_yet(MISSING_LISTED)
    out: dict[str, Any] = {
        "highestSequence": tracker.highest,
        "held": tracker.received_count,
        "received": stats.received,
        "retrieved": stats.retrieved,
        "duplicates": stats.duplicates,
        "redelivered": stats.redelivered,
        "resumed": stats.resumed,
        "missingCount": tracker.missing_count,
        "missing": [[first, last] for first, last in ranges],
        "unavailable": [
            {"first": first, "last": last, "reason": reason}
            for (first, last), reason in tracker.unavailable
        ],
        "notYet": [
            {"first": first, "last": last, "reason": tracker.not_yet_reason}
            for first, last in not_yet
        ],
        "notAsked": [[first, last] for first, last in tracker.implausible(MISSING_LISTED)],
        "transports": sorted(stats.transports),
    }
    if total_ranges > len(ranges):
        out["missingRangesOmitted"] = total_ranges - len(ranges)
    return out


def case_report(
    handle: str,
    streams: dict[pdu.StreamKind, tuple[SequenceTracker, StreamStats]],
    notes: dict[str, Any],
    now: dt.datetime,
    *,
    final: bool,
) -> dict[str, Any]:
    """The whole ``gaps.json`` of one warrant handle.

    Args:
        handle: the warrant handle.
        streams: per stream kind, its tracker and counters.
        notes: other findings (non-IP payloads, torn tails cut at start).
        now: the report time (UTC).
        final: written at exit (files closed, hashes written).
    """
    return {
        "warrantHandle": handle,
        "reportTime": iso_time(now),
        "final": final,
        "streams": {
            kind.value: stream_report(tracker, stats)
            for kind, (tracker, stats) in sorted(streams.items(), key=lambda i: i[0].value)
        },
        **notes,
    }


def unavailable_from_report(report: dict[str, Any]) -> dict[str, list[tuple[int, int, str | None]]]:
    """Unavailable ranges of an earlier ``gaps.json``, per stream kind value.

    The server said they can never be had, so a restarted receiver does
    not ask again. "Not yet" ranges are not read back: a restarted receiver
    asks for them again, and so for "unavailable" ranges an older receiver
    wrote with the reason ``not stored`` (that was "not yet" before the
    two were told apart). Anything malformed is ignored (the report is a
    convenience, the raw files are the evidence).
    """
    out: dict[str, list[tuple[int, int, str | None]]] = {}
    streams = report.get("streams") if isinstance(report, dict) else None
    for kind, entry in (streams or {}).items():
        items = entry.get("unavailable", []) if isinstance(entry, dict) else []
        for item in items:
            try:
                first, last, reason = int(item["first"]), int(item["last"]), item.get("reason")
            except (KeyError, TypeError, ValueError):
                continue
            if reason == LEGACY_NOT_YET_REASON:
                continue
            if 0 <= first <= last <= MAX_SEQUENCE and (reason is None or isinstance(reason, str)):
                out.setdefault(kind, []).append((first, last, reason))
    return out
