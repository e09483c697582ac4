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
from mediation.pdu.jsonview import iso_time
from mediation.protocol import SequenceTracker

MISSING_LISTED = 10_000  # ranges listed in gaps.json; the count is always exact


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
    ``unavailable`` repeats those the server cannot supply, with its reason.
    """
    ranges = tracker.missing(MISSING_LISTED)
    total_ranges = tracker.missing_range_count
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

    The server said they cannot be had, so a restarted receiver does not
    ask again. Anything malformed is ignored (the report is a convenience,
    the raw files are the evidence).
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
            if 0 <= first <= last and (reason is None or isinstance(reason, str)):
                out.setdefault(kind, []).append((first, last, reason))
    return out
