"""Retention that runs: a warrant's records removed once its retention has passed.

A warrant's records are kept its own retention period (``mediate add
--retention YEARS``), else ``[retention] years`` (default five), after it
ended: its end, or its removal if that came first (``warrants/retention.py``;
below, ``years`` is always that server default). A warrant still pending
or active is never touched. Past that date every segment of its streams
is removed by the log's one mechanism
(:meth:`EvidenceLog.apply_retention`: each segment journalled, signed,
before it is deleted), then one audit entry says what went: the handle,
the period, and per stream the sequence range, segments and bytes; never
case data. Capture files written for an agency (``agency add --files
DIR``) are the agency's copy: retention never touches them.

The server runs :func:`purge_due` at start and every
``[retention] check_interval`` seconds (an hour by default); ``mediate
purge HANDLE`` runs :func:`purge_warrant` for one warrant, through the
server when one runs, else itself while holding ``server.lock``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from mediation.errors import UsageError
from mediation.log import EvidenceLog, RetentionResult
from mediation.log.evidence_log import stream_dir
from mediation.log.segments import list_segments
from mediation.pdu import StreamKind
from mediation.warrants.audit import AuditEvent
from mediation.warrants.keys import RegistryKey
from mediation.warrants.model import Warrant, format_time
from mediation.warrants.registry import WarrantRegistry
from mediation.warrants.retention import kept_until, period

log = logging.getLogger("mediation.server.retention")
# Called with a handle before its streams are removed: the server stops
# delivering from them and forgets them.
Detach = Callable[[str], Awaitable[None]]


class InsideRetention(UsageError):
    """A purge asked for a warrant whose records must still be kept."""


def has_segments(data_dir: Path, handle: str) -> bool:
    """Whether any record of the warrant is still on disk."""
    return any(list_segments(stream_dir(data_dir, handle, kind)) for kind in StreamKind)


@dataclasses.dataclass(frozen=True)
class PurgeReport:
    """What a purge removed (or, in a dry run, would remove) of one warrant."""

    handle: str
    until: dt.datetime
    streams: dict[str, dict[str, int]]  # cmii/cmcc -> first, last, segments, bytes
    years: int | None = None  # the warrant's retention period

    def to_json(self) -> dict[str, Any]:
        return {
            "handle": self.handle,
            "retention_years": self.years,
            "retention_until": format_time(self.until),
            "streams": self.streams,
        }

    def line(self, verb: str = "purged") -> str:
        """``w-3f9a1c: purged cmii 0..4710 (3 segments, 12345 bytes); retention ended ...``."""
        parts = [
            f"{kind} {s['first']}..{s['last']} ({s['segments']} segments, {s['bytes']} bytes)"
            for kind, s in self.streams.items()
        ]
        what = ", ".join(parts) or "nothing"
        return f"{self.handle}: {verb} {what}; retention ended {format_time(self.until)}"


def check_due(warrant: Warrant, now: dt.datetime, years: int) -> dt.datetime:
    """The warrant's retention date, if it has passed.

    Args:
        years: the server's ``[retention] years``, for a warrant without its own period.

    Raises:
        InsideRetention: the warrant is pending or active, or its retention
            runs still (the message names the date).
    """
    until = kept_until(warrant, now, years)
    if until is None:
        state = warrant.state(now).value
        raise InsideRetention(
            "purge", f"{warrant.handle} is {state}: its records are kept; nothing removed"
        )
    if now < until:
        raise InsideRetention(
            "purge",
            f"{warrant.handle}: records kept until {format_time(until)} "
            f"({period(warrant, years)} years after it ended); nothing removed",
        )
    return until


def planned(
    data_dir: Path, handle: str, until: dt.datetime, years: int | None = None
) -> PurgeReport:
    """What a purge would remove now (a dry run): the ranges from file names, sizes on disk."""
    from mediation.log.segments import scan_segment

    streams = {}
    for kind in StreamKind:
        segments = list_segments(stream_dir(data_dir, handle, kind))
        if not segments:
            continue
        last = scan_segment(segments[-1][1], 1 << 30, chain=False).next_seq - 1
        size = sum(p.stat().st_size for _, p in segments)
        streams[kind.name.lower()] = {
            "first": segments[0][0],
            "last": last,
            "segments": len(segments),
            "bytes": size,
        }
    return PurgeReport(handle, until, streams, years)


async def purge_warrant(
    evidence: EvidenceLog,
    key: RegistryKey,
    warrant: Warrant,
    now: dt.datetime,
    years: int,
    by: str,
    detach: Detach | None = None,
) -> PurgeReport:
    """Remove a warrant's records if its retention has passed; audited.

    Args:
        by: who asked (``server`` for the schedule, ``mediate purge``), for the audit.
        detach: called first, so nothing reads the streams while they go.

    Raises:
        InsideRetention: nothing is past retention (nothing is touched).
    """
    until = check_due(warrant, now, years)
    if detach is not None:
        await detach(warrant.handle)
    results = await evidence.apply_retention(warrant.handle, now, until)
    report = PurgeReport(warrant.handle, until, _streams(results), period(warrant, years))
    if report.streams:
        await trio.to_thread.run_sync(_audit, evidence.data_dir, key, report, by)
        log.info("%s", report.line())
    return report


def _streams(results: list[RetentionResult]) -> dict[str, dict[str, int]]:
    out = {}
    for r in results:
        if r.first is not None and r.last is not None:
            kind = r.stream.rsplit("/", 1)[1].lower()
            out[kind] = {"first": r.first, "last": r.last, "segments": r.segments, "bytes": r.bytes}
    return out


def _audit(data_dir: Path, key: RegistryKey, report: PurgeReport, by: str) -> None:
    """One audit entry: the handle, ranges and sizes; never case data."""
    with WarrantRegistry.open(data_dir) as registry:
        registry.unlock(key)
        with registry.locked():
            detail = {"by": by, **report.to_json()}
            del detail["handle"]
            registry.record(AuditEvent("purge", report.handle, detail=detail))


def all_warrants(data_dir: Path, key: RegistryKey) -> list[Warrant]:
    """Every warrant the registry holds, removed ones too (their records are kept)."""
    with WarrantRegistry.open(data_dir) as registry:
        registry.unlock(key)
        return registry.warrants(include_removed=True)


async def purge_due(
    evidence: EvidenceLog,
    key: RegistryKey,
    now: dt.datetime,
    years: int,
    detach: Detach | None = None,
) -> list[PurgeReport]:
    """The scheduled pass: purge every warrant past retention that still has records.

    One warrant that cannot be purged (a damaged stream) is logged and
    skipped; the others go on.
    """
    warrants = await trio.to_thread.run_sync(all_warrants, evidence.data_dir, key)
    reports = []
    for warrant in warrants:
        until = kept_until(warrant, now, years)
        if until is None or now < until or not has_segments(evidence.data_dir, warrant.handle):
            continue
        try:
            reports.append(
                await purge_warrant(evidence, key, warrant, now, years, "server", detach)
            )
        except Exception:  # one warrant's damage must not stop the others
            log.exception("%s: retention could not purge its records", warrant.handle)
    return reports


def find_warrant(data_dir: Path, key: RegistryKey, handle: str) -> Warrant:
    """The registered warrant ``handle`` (removed ones too).

    Raises:
        UsageError: no such warrant.
    """
    with WarrantRegistry.open(data_dir) as registry:
        registry.unlock(key)
        warrant = registry.warrant(handle)
    if warrant is None:
        raise UsageError("HANDLE", f"no warrant {handle} (see `mediate list --all`)")
    return warrant


async def purge_request(
    evidence: EvidenceLog,
    key: RegistryKey,
    request: dict[str, Any],
    now: dt.datetime,
    years: int,
    detach: Detach | None = None,
) -> PurgeReport:
    """``{"handle": "w-3f9a1c", "dry_run": false}``: purge one warrant, or say what would go.

    Raises:
        InsideRetention: nothing of it is past retention (nothing touched).
        UsageError: the handle is malformed or unknown.
    """
    from mediation.warrants.validate import parse_handle

    handle = request.get("handle")
    handle = parse_handle(handle if isinstance(handle, str) else None)
    dry_run = request.get("dry_run") is True
    warrant = await trio.to_thread.run_sync(find_warrant, evidence.data_dir, key, handle)
    if dry_run:
        until = check_due(warrant, now, years)
        own = period(warrant, years)
        return await trio.to_thread.run_sync(planned, evidence.data_dir, handle, until, own)
    return await purge_warrant(evidence, key, warrant, now, years, "mediate purge", detach)
