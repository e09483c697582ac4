"""The server's warrant table: snapshots in, changes out, windows kept on time."""

from __future__ import annotations

import dataclasses
import datetime as dt

from mediation.server.warrant_table import TableChange, WarrantTable
from mediation.warrants.model import (
    CaseDetails,
    ContentLevel,
    RegistrySnapshot,
    Source,
    Stream,
    Tap,
    Target,
    TargetKind,
    Warrant,
    WarrantState,
)

T0 = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def warrant(
    handle: str, start: dt.datetime, end: dt.datetime, taps: tuple[str, ...] = ()
) -> Warrant:
    details = CaseDetails(
        case_id="CASE-0001",
        targets=(Target(TargetKind.ADDRESS, "192.0.2.10"),),
        sources=tuple(Source("tap", t) for t in taps),
    )
    return Warrant(handle, "a-000001", ContentLevel.FULL, start, end, T0, T0, None, details)


def snapshot(generation: int, *warrants: Warrant, taps: tuple[Tap, ...] = ()) -> RegistrySnapshot:
    return RegistrySnapshot(generation, tuple(warrants), (), taps)


def test_apply_reports_added_modified_removed_and_activations() -> None:
    table = WarrantTable()
    now_active = warrant("w-000001", T0 - HOUR, T0 + HOUR)
    later = warrant("w-000002", T0 + HOUR, T0 + 2 * HOUR)
    change = table.apply(snapshot(1, now_active, later), T0)
    assert change == TableChange(added=("w-000001", "w-000002"), activated=("w-000001",))
    assert table.state("w-000002") is WarrantState.PENDING
    assert table.generation == 1

    ended = dataclasses.replace(now_active, end=T0)
    change = table.apply(snapshot(2, ended, later), T0)
    assert change == TableChange(modified=("w-000001",), deactivated=("w-000001",))
    assert table.state("w-000001") is WarrantState.EXPIRED

    change = table.apply(snapshot(3, later), T0)
    assert change == TableChange(removed=("w-000001",))
    assert table.status("w-000001") is None and table.state("w-000001") is WarrantState.REMOVED
    assert not table.apply(snapshot(3, later), T0)


def test_tick_starts_and_ends_warrants_on_time() -> None:
    table = WarrantTable()
    table.apply(snapshot(1, warrant("w-000001", T0 + HOUR, T0 + 2 * HOUR)), T0)
    assert not table.tick(T0 + HOUR - dt.timedelta(seconds=1))
    assert table.tick(T0 + HOUR) == TableChange(activated=("w-000001",))
    assert not table.tick(T0 + HOUR + dt.timedelta(seconds=1))
    change = table.tick(T0 + 2 * HOUR)
    assert change == TableChange(deactivated=("w-000001",))
    assert change.log_lines(table.states()) == ["warrant w-000001 inactive (expired)"]


def test_status_taps_and_counters() -> None:
    table = WarrantTable()
    tap = Tap("edge-1", T0, "ab" * 32, 1)
    table.apply(
        snapshot(
            1,
            warrant("w-000001", T0, T0 + HOUR, ("edge-1",)),
            warrant("w-000002", T0, T0 + HOUR),
            taps=(tap,),
        ),
        T0,
    )
    assert [w.handle for w in table.warrants_for_tap("edge-1")] == ["w-000001", "w-000002"]
    assert [w.handle for w in table.warrants_for_tap("edge-2")] == ["w-000002"]
    table.tap_accepted("w-000001", "edge-1")
    table.count("w-000001", Stream.CMCC, 3)
    status = table.statuses()["w-000001"]
    assert status == {
        "state": "active",
        "since": "2026-11-23T00:00:00Z",
        "start": "2026-11-23T00:00:00Z",
        "end": "2026-11-23T01:00:00Z",
        "taps_accepted": ["edge-1"],
        "counters": {"cmii": 0, "cmcc": 3},
    }
    assert "CASE-0001" not in repr(table.statuses()) and "192.0.2.10" not in repr(table.statuses())
    table.tap_dropped("edge-1")
    assert table.statuses()["w-000001"]["taps_accepted"] == []
    assert table.tap_allowed("edge-1")
    revoked = dataclasses.replace(tap, revoked=T0)
    change = table.apply(snapshot(2, *table.active(), taps=(revoked,)), T0)
    assert change == TableChange(taps_revoked=("edge-1",))
    assert not table.tap_allowed("edge-1")
