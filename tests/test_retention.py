"""Retention that runs: the server's scheduled pass, ``mediate records`` and ``mediate purge``.

Times are injected (the server's clock, ``utc_now`` for the CLI), never
waited for: a warrant ended five years and a day ago is purged, one ended
four years ago and the active and pending ones are never touched.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import trio
from test_warrants_support import CASE, Carrier, error_line

from mediation.log import LOG_KEY_PURPOSE, EvidenceLog, LogKey
from mediation.log.evidence_log import stream_dir
from mediation.log.format import ContentKind
from mediation.log.segments import list_segments
from mediation.pdu import StreamKind
from mediation.server.app import MediationServer
from mediation.server.config_file import parse_config
from mediation.server.control import request
from mediation.warrants.access import KeyNeed, KeyOptions, open_registry
from mediation.warrants.keys import RegistryKey
from mediation.warrants.model import CaseDetails, ContentLevel, Target, TargetKind, format_time
from mediation.warrants.operations import add_warrant, remove_warrant

DAY = dt.timedelta(days=1)
RECORDS = 5


class World:
    """A data directory with four warrants and records in their streams, seen at ``now``."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.carrier = Carrier(tmp_path, monkeypatch)
        self.carrier.setup()
        t0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
        self.old_end = t0 + DAY
        # "now" as the tests see it: the old warrant ended five years and a day ago.
        self.now = self.old_end.replace(year=self.old_end.year + 5) + DAY
        recent_end = self.now.replace(year=self.now.year - 4)
        options = KeyOptions(str(self.carrier.key))
        with open_registry(self.carrier.data, options, KeyNeed.REQUIRED, lock=True) as registry:
            self.old = self._add(registry, "CASE-TEST-0001", t0, t0, self.old_end)
            self.recent = self._add(registry, "CASE-TEST-0002", t0, t0, recent_end)
            self.active = self._add(registry, "CASE-TEST-0003", t0, t0, self.now + 30 * DAY)
            self.pending = self._add(
                registry, "CASE-TEST-0004", t0, self.now + DAY, self.now + 2 * DAY
            )
            # Removed long ago, before its end: retention runs from the removal.
            self.removed = self._add(registry, "CASE-TEST-0005", t0, t0, self.now + 99 * DAY)
            remove_warrant(registry, self.removed, t0 + DAY)
            self.key: RegistryKey = registry.key  # type: ignore[assignment]
        self.handles = [self.old, self.recent, self.active, self.pending, self.removed]
        trio.run(self._write)
        monkeypatch.setattr("mediation.warrants.model.utc_now", lambda: self.now)

    @staticmethod
    def _add(registry, case: str, now, start, end) -> str:  # type: ignore[no-untyped-def]
        details = CaseDetails(case, (Target(TargetKind.ADDRESS, "192.0.2.10"),))
        warrant = add_warrant(
            registry, "AGENCY-TEST-1", details, ContentLevel.FULL, start, end, now
        )
        return warrant.handle

    async def _write(self) -> None:
        log_key = LogKey(self.key.derive(LOG_KEY_PURPOSE))
        async with EvidenceLog.open(self.carrier.data, key=log_key) as evidence:
            for handle in self.handles:
                for kind, content in (
                    (StreamKind.CMII, ContentKind.CMII),
                    (StreamKind.CMCC, ContentKind.CMCC),
                ):
                    stream = await evidence.stream(handle, kind)
                    for n in range(RECORDS):
                        await stream.append(b"record %d" % n, content)

    def segments(self, handle: str) -> list[Path]:
        return [
            p
            for kind in StreamKind
            for _, p in list_segments(stream_dir(self.carrier.data, handle, kind))
        ]

    def log_files(self, handle: str) -> dict[str, bytes]:
        root = self.carrier.data / "log" / handle
        return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    def purge_entries(self) -> list[dict]:
        lines = (self.carrier.data / "audit" / "audit.log").read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["command"] == "purge"]


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    return World(tmp_path, monkeypatch)


async def run_server(world: World, body) -> None:  # type: ignore[no-untyped-def]
    server = MediationServer(world.carrier.data, world.key, clock=lambda: world.now)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        while server.retention_passes < 1:
            await trio.sleep(0.01)
        await body(server)
        nursery.cancel_scope.cancel()


async def test_the_scheduled_pass_purges_only_what_is_past_retention(world: World) -> None:
    kept = {h: world.log_files(h) for h in (world.recent, world.active, world.pending)}

    async def purged_streams_are_not_watched(server: MediationServer) -> None:
        watched = {sid.warrant_handle for sid in server._watchers}
        assert world.old not in watched and world.removed not in watched  # watchers ended
        assert world.active in watched

    await run_server(world, purged_streams_are_not_watched)
    assert world.segments(world.old) == [] and world.segments(world.removed) == []
    for handle, files in kept.items():  # every file as it was (the active one grows)
        now = world.log_files(handle)
        assert {name: now.get(name) for name in files} == files, handle
    journal = stream_dir(world.carrier.data, world.old, StreamKind.CMII) / "retention.jsonl"
    [entry] = [json.loads(line) for line in journal.read_text().splitlines()]
    assert (entry["first"], entry["last"]) == (0, RECORDS - 1)
    entries = world.purge_entries()
    assert sorted(e["handle"] for e in entries) == sorted([world.old, world.removed])
    old = next(e for e in entries if e["handle"] == world.old)
    assert old["detail"]["by"] == "server"
    assert old["detail"]["retention_until"] == format_time(
        world.old_end.replace(year=world.old_end.year + 5)
    )
    for kind in ("cmii", "cmcc"):
        stream = old["detail"]["streams"][kind]
        assert (stream["first"], stream["last"], stream["segments"]) == (0, RECORDS - 1, 1)
        assert stream["bytes"] > 0
    audit = (world.carrier.data / "audit" / "audit.log").read_text()
    assert CASE not in audit and "CASE-TEST" not in audit
    world.carrier.ok("audit", "verify")
    assert world.carrier("log", "verify").code == 0


async def test_a_second_pass_purges_nothing_more(world: World) -> None:
    async def again(server: MediationServer) -> None:
        await server.retention_pass()

    await run_server(world, again)
    assert len(world.purge_entries()) == 2  # old and removed, once each


async def test_purge_through_a_running_server(world: World) -> None:
    before = world.log_files(world.recent)

    async def purge(server: MediationServer) -> None:
        path = world.carrier.data / "run" / "control.sock"
        # The scheduled pass ran; a warrant past retention with nothing left says so.
        inside = await trio.to_thread.run_sync(world.carrier, "purge", world.recent)
        assert inside.code == 2
        line = error_line(inside)
        until = format_time(world.now.replace(year=world.now.year - 4 + 5))
        assert f"kept until {until}" in line and world.recent in line
        active = await trio.to_thread.run_sync(world.carrier, "purge", world.active)
        assert "is active" in error_line(active)
        done = await trio.to_thread.run_sync(world.carrier, "purge", world.old)
        assert done.code == 0 and "nothing" in done.out
        bad = await trio.to_thread.run_sync(request, path, {"op": "purge", "handle": "CASE"})
        assert bad is not None and not bad["ok"] and "HANDLE" in bad["error"]

    await run_server(world, purge)
    assert world.log_files(world.recent) == before


def test_purge_without_a_server_refuses_inside_retention_byte_identical(world: World) -> None:
    before = world.carrier.files()
    for handle in (world.recent, world.active, world.pending):
        run = world.carrier("purge", handle)
        assert run.code == 2
        error_line(run)
    assert world.carrier.files() == before
    run = world.carrier("purge", "w-000000")
    assert run.code == 2 and "no warrant w-000000" in error_line(run)
    run = world.carrier("purge", "CASE-TEST-0002")
    assert run.code == 2 and error_line(run).startswith("mediate: error: HANDLE: must be")
    run = world.carrier("purge", world.recent, "--dry-run")
    assert run.code == 2 and "kept until" in error_line(run)
    assert world.carrier.files() == before


def test_purge_without_a_server_removes_what_is_past_retention(world: World) -> None:
    dry = world.carrier.ok("purge", world.old, "--dry-run")
    assert f"would purge cmii 0..{RECORDS - 1}" in dry
    assert len(world.segments(world.old)) == 2
    out = world.carrier.ok("purge", world.old)
    assert f"{world.old}: purged cmii 0..{RECORDS - 1}" in out
    assert world.segments(world.old) == []
    [entry] = world.purge_entries()
    assert entry["detail"]["by"] == "mediate purge"
    world.carrier.ok("audit", "verify")
    assert world.carrier("log", "verify").code == 0
    assert "nothing" in world.carrier.ok("purge", world.old)  # again: nothing left
    assert len(world.purge_entries()) == 1


def test_records_lists_ranges_dates_and_purges(world: World) -> None:
    world.carrier.ok("purge", world.old)
    rows = {r["handle"]: r for r in json.loads(world.carrier.ok("records", "--json"))}
    recent = rows[world.recent]
    assert recent["case_id"] == "CASE-TEST-0002"
    assert recent["retention_until"] == format_time(world.now.replace(year=world.now.year + 1))
    cmii = recent["streams"]["cmii"]
    assert (cmii["first"], cmii["last"], cmii["segments"]) == (0, RECORDS - 1, 1)
    assert cmii["bytes"] > 0 and "purged" not in cmii
    assert rows[world.active]["retention_until"] is None
    old = rows[world.old]["streams"]["cmcc"]
    assert old["first"] is None and old["segments"] == 0
    assert (old["purged"]["first"], old["purged"]["last"]) == (0, RECORDS - 1)
    text = world.carrier.ok("records")
    line = next(x for x in text.splitlines() if x.startswith(world.recent) and "cmii" in x)
    assert f"0..{RECORDS - 1}" in line and recent["retention_until"] in line
    old_line = next(x for x in text.splitlines() if x.startswith(world.old) and "cmcc" in x)
    assert "none" in old_line and f"0..{RECORDS - 1} at" in old_line
    assert "(active: kept)" in text


def test_records_without_the_key_shows_no_case_id(world: World) -> None:
    world.carrier.without_key_env()
    rows = json.loads(world.carrier.ok("records", "--json"))
    assert rows and all("case_id" not in r for r in rows)
    assert "CASE-TEST" not in world.carrier.ok("records")


def test_retention_years_below_five_are_refused() -> None:
    assert parse_config({"retention": {"years": 7}}).retention.years == 7
    with pytest.raises(
        Exception, match=r"\[retention\] years: must be a whole number from 5 to 100"
    ):
        parse_config({"retention": {"years": 4}})


def test_a_longer_configured_retention_keeps_the_old_warrant(world: World, tmp_path: Path) -> None:
    config = tmp_path / "mediate.toml"
    config.write_text("[retention]\nyears = 6\n")
    run = world.carrier("purge", world.old, "--config", str(config))
    assert run.code == 2 and "6 years after it ended" in error_line(run)
    assert len(world.segments(world.old)) == 2
