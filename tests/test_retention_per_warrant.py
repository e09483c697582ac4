"""Each warrant's own retention: `--retention YEARS`, used by the pass, records and purge.

Three warrants end on the same day and are seen six years and a day later
(the clock is injected): one kept 5 years (past), one 7 (inside), one with
no period of its own, which follows the server's ``[retention] years``.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest
import trio
from test_warrants_support import AGENCY, Carrier, error_line

from mediation.log import LOG_KEY_PURPOSE, EvidenceLog, LogKey
from mediation.log.evidence_log import stream_dir
from mediation.log.format import ContentKind
from mediation.log.segments import list_segments
from mediation.pdu import StreamKind
from mediation.server.app import MediationServer
from mediation.server.config_file import parse_config
from mediation.warrants.access import KeyNeed, KeyOptions, open_registry
from mediation.warrants.model import format_time
from mediation.warrants.retention import years_after
from mediation.warrants.rows import case_from_json, case_to_json

DAY = dt.timedelta(days=1)


class Periods:
    """A data directory with warrants of 5 years, 7 years and the server's default."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.carrier = c = Carrier(tmp_path, monkeypatch)
        c.setup()
        t0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
        self.end = t0 + DAY
        end = format_time(self.end)
        self.five = c.add("--end", end, "--retention", "5", case="CASE-TEST-0001")
        self.seven = c.add("--end", end, "--retention", "7", case="CASE-TEST-0002")
        self.default = c.add("--end", end, case="CASE-TEST-0003")
        self.handles = (self.five, self.seven, self.default)
        options = KeyOptions(str(c.key))
        with open_registry(c.data, options, KeyNeed.REQUIRED) as registry:
            self.key = registry.key
        trio.run(self._write)
        self.now = years_after(self.end, 6) + DAY
        monkeypatch.setattr("mediation.warrants.model.utc_now", lambda: self.now)
        self.config = tmp_path / "mediate.toml"
        self.config.write_text("[retention]\nyears = 8\n")

    async def _write(self) -> None:
        assert self.key is not None
        log_key = LogKey(self.key.derive(LOG_KEY_PURPOSE))
        async with EvidenceLog.open(self.carrier.data, key=log_key) as evidence:
            for handle in self.handles:
                for kind, content in (
                    (StreamKind.CMII, ContentKind.CMII),
                    (StreamKind.CMCC, ContentKind.CMCC),
                ):
                    stream = await evidence.stream(handle, kind)
                    await stream.append(b"record", content)

    def kept(self, handle: str) -> bool:
        return any(
            list_segments(stream_dir(self.carrier.data, handle, kind)) for kind in StreamKind
        )

    def audit(self, command: str) -> list[dict]:
        lines = (self.carrier.data / "audit" / "audit.log").read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["command"] == command]


@pytest.fixture
def periods(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Periods:
    return Periods(tmp_path, monkeypatch)


@pytest.mark.parametrize(("server_years", "purged"), [(8, {"five"}), (5, {"five", "default"})])
async def test_the_scheduled_pass_uses_each_warrants_period(
    periods: Periods, server_years: int, purged: set[str]
) -> None:
    config = parse_config({"retention": {"years": server_years}})
    server = MediationServer(
        periods.carrier.data, periods.key, clock=lambda: periods.now, config=config
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        while server.retention_passes < 1:
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    names = {"five": periods.five, "seven": periods.seven, "default": periods.default}
    for name, handle in names.items():
        assert periods.kept(handle) == (name not in purged), name
    entries = {e["handle"]: e["detail"] for e in periods.audit("purge")}
    assert set(entries) == {names[n] for n in purged}
    assert entries[periods.five]["retention_years"] == 5
    assert entries[periods.five]["retention_until"] == format_time(years_after(periods.end, 5))
    if "default" in purged:
        assert entries[periods.default]["retention_years"] == server_years


def test_records_shows_each_period_and_date(periods: Periods) -> None:
    c = periods.carrier
    rows = {r["handle"]: r for r in json.loads(c.ok("records", "--json"))}
    for handle, years, default in ((periods.five, 5, False), (periods.seven, 7, False)):
        assert rows[handle]["retention_years"] == years
        assert rows[handle]["retention_default"] is default
        assert rows[handle]["retention_until"] == format_time(years_after(periods.end, years))
    assert rows[periods.default]["retention_years"] == 5  # no config: the server's default
    assert rows[periods.default]["retention_default"] is True
    config = ("--config", str(periods.config))
    rows = {r["handle"]: r for r in json.loads(c.ok("records", "--json", *config))}
    assert rows[periods.default]["retention_years"] == 8
    assert rows[periods.default]["retention_until"] == format_time(years_after(periods.end, 8))
    text = c.ok("records", "--config", str(periods.config))
    line = next(x for x in text.splitlines() if x.startswith(periods.seven))
    assert "7y " in line and format_time(years_after(periods.end, 7)) in line
    line = next(x for x in text.splitlines() if x.startswith(periods.default))
    assert "8y (default)" in line


def test_records_without_the_key_gives_no_date_it_cannot_know(periods: Periods) -> None:
    periods.carrier.without_key_env()
    rows = json.loads(periods.carrier.ok("records", "--json"))
    assert all(r["retention_years"] is None and r["retention_until"] is None for r in rows)
    assert "(needs the key)" in periods.carrier.ok("records")


def test_purge_uses_the_warrants_own_period(periods: Periods) -> None:
    c = periods.carrier
    config = ("--config", str(periods.config))
    inside = c("purge", periods.seven, *config)
    assert inside.code == 2
    until = format_time(years_after(periods.end, 7))
    assert f"kept until {until} (7 years after it ended)" in error_line(inside)
    inside = c("purge", periods.default, *config)
    assert inside.code == 2 and "(8 years after it ended)" in error_line(inside)
    assert periods.kept(periods.seven) and periods.kept(periods.default)
    out = c.ok("purge", periods.five, *config)  # 5 < the server's 8: its own period wins
    assert f"{periods.five}: purged cmii 0..0" in out and not periods.kept(periods.five)
    [entry] = periods.audit("purge")
    assert entry["detail"]["by"] == "mediate purge" and entry["detail"]["retention_years"] == 5
    c.ok("audit", "verify")


@pytest.mark.parametrize("value", ["4", "0", "101", "5.5", "seven", "-7", " ", "1e1"])
def test_retention_out_of_range_or_not_whole_is_refused(periods: Periods, value: str) -> None:
    before = periods.carrier.files()
    add = ("add", "--case-id", "CASE-TEST-0009", "--agency", AGENCY, "--target", "192.0.2.10")
    for argv in (add, ("modify", periods.seven)):
        run = periods.carrier(*argv, "--retention", value)
        assert run.code == 2
        assert error_line(run) == (
            "mediate: error: --retention: must be a whole number of years from 5 "
            "(the legal floor) to 100, e.g. 7"
        )
    assert periods.carrier.files() == before


def test_retention_from_a_case_file_as_a_number(periods: Periods, tmp_path: Path) -> None:
    case = tmp_path / "case.toml"
    case.write_text("retention = 9.5\n")
    run = periods.carrier("modify", periods.seven, "--from", str(case))
    assert run.code == 2 and f"{case}: retention: must be a whole number" in error_line(run)
    case.write_text("retention = true\n")
    run = periods.carrier("modify", periods.seven, "--from", str(case))
    assert run.code == 2 and f"{case}: retention: must be a number (7)" in error_line(run)
    case.write_text("retention = 9\n")
    out = periods.carrier.ok("modify", periods.seven, "--from", str(case))
    assert "modified: retention" in out and "retention: 9 years after it ends" in out
    show = json.loads(periods.carrier.ok("show", periods.seven, "--json"))
    assert show["retention_years"] == 9


def test_shortening_after_the_end_is_refused_lengthening_is_audited(periods: Periods) -> None:
    c = periods.carrier
    before = c.files()
    run = c("modify", periods.seven, "--retention", "6")
    line = error_line(run)
    assert run.code == 2 and line.startswith("mediate: error: --retention: ")
    assert f"promised until {format_time(years_after(periods.end, 7))} (7 years)" in line
    # The server's default (8 by the config) is the promise of one without its own period.
    run = c("modify", periods.default, "--retention", "7", "--config", str(periods.config))
    assert run.code == 2 and "(8 years)" in error_line(run)
    # An earlier end shortens the promise just as well.
    run = c("modify", periods.seven, "--end", format_time(periods.end - DAY))
    assert run.code == 2 and error_line(run).startswith("mediate: error: --end: ")
    assert c.files() == before
    c.ok("modify", periods.seven, "--retention", "10")
    c.ok("modify", periods.default, "--retention", "8", "--config", str(periods.config))
    entries = [e for e in periods.audit("modify") if e["handle"] == periods.seven]
    assert entries[-1]["detail"] == {"fields": ["retention"], "retention_years": 10}
    c.ok("audit", "verify")


def test_before_the_end_retention_may_be_shortened_to_the_floor(
    periods: Periods, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mediation.warrants.model.utc_now", lambda: periods.end - DAY / 2)
    out = periods.carrier.ok("modify", periods.seven, "--retention", "5")
    assert "modified: retention" in out


def test_a_removed_warrant_may_only_have_its_retention_lengthened(periods: Periods) -> None:
    c = periods.carrier
    handle = c.add("--retention", "6", case="CASE-TEST-0004")  # active at the patched now
    c.ok("remove", handle)
    run = c("modify", handle, "--note", "NOTE-TEST")
    assert run.code == 2 and "only --retention can change" in error_line(run)
    run = c("modify", handle, "--retention", "5")
    assert run.code == 2 and "never shortened" in error_line(run)
    assert "modified: retention" in c.ok("modify", handle, "--retention", "12")
    rows = {r["handle"]: r for r in json.loads(c.ok("records", "--json"))}
    assert rows[handle]["retention_until"] == format_time(years_after(periods.now, 12))


def test_rows_without_a_period_load_and_are_written_as_before(periods: Periods) -> None:
    """A registry written before per-warrant retention has no ``retention`` in its rows."""
    old = {
        "case_id": "CASE-TEST-0005",
        "targets": [["address", "192.0.2.10"]],
        "sources": [],
        "iap": None,
        "court_ref": None,
        "notes": None,
    }
    details = case_from_json(old)
    assert details.retention is None
    assert case_to_json(details) == old  # a warrant without its own period: bytes as before
    # A row sealed in the old form, in a real registry, loads and follows the default.
    assert periods.key is not None
    db = periods.carrier.data / "registry.db"
    sealed = periods.key.seal_json(f"warrants/{periods.seven}/details", old)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE warrants SET details = ? WHERE handle = ?", (sealed, periods.seven))
    rows = {r["handle"]: r for r in json.loads(periods.carrier.ok("records", "--json"))}
    assert rows[periods.seven]["retention_years"] == 5
    assert rows[periods.seven]["retention_default"] is True


def test_add_and_show_say_the_period(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = Carrier(tmp_path, monkeypatch)
    c.setup()
    argv = (
        "add",
        "--case-id",
        "CASE-TEST-0006",
        "--agency",
        AGENCY,
        "--target",
        "192.0.2.10",
        "--content",
        "full",
    )
    out = c.ok(*argv, "--retention", "12")
    handle = out.splitlines()[0]
    assert "retention: 12 years after it ends" in out
    assert "retention years: 12" in c.ok("show", handle)
    [entry] = [
        e
        for e in map(json.loads, (c.data / "audit" / "audit.log").read_text().splitlines())
        if e["command"] == "add"
    ]
    assert entry["detail"]["retention_years"] == 12
    other = c.ok(
        "add",
        "--case-id",
        "CASE-TEST-0007",
        "--agency",
        AGENCY,
        "--target",
        "192.0.2.11",
        "--content",
        "full",
    )
    assert "retention:" not in other
    shown = c.ok("show", other.splitlines()[0])
    assert "retention years: the server's [retention] years" in shown


def test_purge_leaves_the_agencys_capture_files(periods: Periods, tmp_path: Path) -> None:
    """Capture files (agency add --files) are the agency's copy: retention never touches them."""
    c = periods.carrier
    files = tmp_path / "agency-files"
    files.mkdir(mode=0o700)
    c.ok("agency", "add", AGENCY, "--files", str(files))
    capture = files / periods.five
    capture.mkdir()
    (capture / "cmcc-000000.pcap").write_bytes(b"\xd4\xc3\xb2\xa1 capture")
    (capture / "cmcc-000000.pcap.sha256").write_text("0" * 64 + "  cmcc-000000.pcap\n")
    (capture / "manifest.jsonl").write_text('{"file": "cmcc-000000.pcap"}\n')
    before = {p: p.read_bytes() for p in sorted(files.rglob("*")) if p.is_file()}
    c.ok("purge", periods.five)
    assert not periods.kept(periods.five)
    assert {p: p.read_bytes() for p in sorted(files.rglob("*")) if p.is_file()} == before
