"""The audit trail: every case-data command is recorded, and any tampering is found."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import sqlite3
import subprocess
import sys

import pytest
from test_warrants_support import AGENCY, Carrier, error_line

from mediation.warrants.audit import GENESIS, Anchor, AuditEvent, AuditTrail, entry_hash


@pytest.fixture
def carrier(tmp_path, monkeypatch) -> Carrier:
    c = Carrier(tmp_path, monkeypatch)
    c.setup()
    handle = c.add()
    c.ok("show", handle)
    c.ok("modify", handle, "--end", "2999-01-01")
    c.ok("remove", handle)
    return c


def _log(carrier: Carrier):
    return carrier.data / "audit" / "audit.log"


def _lines(carrier: Carrier) -> list[bytes]:
    return _log(carrier).read_bytes().splitlines(keepends=True)


def _verify(carrier: Carrier) -> str:
    run = carrier("audit", "verify")
    if run.code == 0:
        return run.out
    assert run.code == 1
    return error_line(run)


def test_entries_record_who_when_what_and_which_handle(carrier: Carrier) -> None:
    entries = [json.loads(line) for line in _lines(carrier)]
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert entries[0]["prev"] == GENESIS and entries[0]["command"] == "init"
    for before, entry in itertools.pairwise(entries):
        assert entry["prev"] == before["hash"] == entry_hash(before)
    add = next(e for e in entries if e["command"] == "add")
    assert add["handle"].startswith("w-") and add["outcome"] == "ok"
    assert add["detail"] == {"content": "full", "state": "active", "targets": 3}
    assert isinstance(add["uid"], int) and add["user"] and add["time"].endswith("Z")
    shown = carrier.ok("audit", "show", "--handle", add["handle"])
    assert [line.split()[3] for line in shown.splitlines()[1:]] == [
        "add",
        "show",
        "modify",
        "remove",
    ]
    assert f"intact: {len(entries)} entries" in _verify(carrier)
    assert "authenticated with the registry key" in _verify(carrier)


def test_an_edited_entry_is_named(carrier: Carrier) -> None:
    lines = _lines(carrier)
    entry = json.loads(lines[4])
    entry["user"] = "somebody-else"
    lines[4] = (json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n").encode()
    _log(carrier).write_bytes(b"".join(lines))
    assert "audit: entry 5: hash does not match its contents" in _verify(carrier)


def test_an_edited_entry_with_a_recomputed_hash_breaks_the_next_link(carrier: Carrier) -> None:
    lines = _lines(carrier)
    entry = json.loads(lines[4])
    entry["handle"] = "w-000000"
    entry["hash"] = entry_hash(entry)
    lines[4] = (json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n").encode()
    _log(carrier).write_bytes(b"".join(lines))
    assert "audit: entry 6: does not link to the entry before it" in _verify(carrier)


def test_a_deleted_entry_is_named(carrier: Carrier) -> None:
    lines = _lines(carrier)
    del lines[2]
    _log(carrier).write_bytes(b"".join(lines))
    assert "audit: entry 3: sequence number is 4, expected 3" in _verify(carrier)


def test_a_cut_tail_is_caught_by_the_registry_anchor(carrier: Carrier) -> None:
    lines = _lines(carrier)
    _log(carrier).write_bytes(b"".join(lines[:-2]))
    count = len(lines)
    assert f"audit: entry {count - 1}: missing; the trail ends at entry {count - 2}" in _verify(
        carrier
    )


def test_a_torn_last_line_is_reported(carrier: Carrier) -> None:
    data = _log(carrier).read_bytes()
    _log(carrier).write_bytes(data[:-1])
    assert "incomplete last line" in _verify(carrier)


def test_a_forged_extra_entry_is_not_anchored(carrier: Carrier) -> None:
    trail = AuditTrail(_log(carrier))
    entries = trail.entries()
    anchor = Anchor(len(entries), entries[-1]["hash"])
    trail.append(trail.build(AuditEvent("show", "w-000000"), anchor, dt.datetime.now(dt.UTC)))
    assert f"audit: entry {len(entries) + 1}: not anchored in the registry" in _verify(carrier)


def test_rewriting_trail_and_anchor_without_the_key_is_caught(carrier: Carrier) -> None:
    lines = _lines(carrier)
    kept = lines[:-2]
    _log(carrier).write_bytes(b"".join(kept))
    last = json.loads(kept[-1])
    db = sqlite3.connect(carrier.data / "registry.db")
    with db:
        db.execute("UPDATE meta SET value = ? WHERE name = 'audit_count'", (str(last["seq"]),))
        db.execute("UPDATE meta SET value = ? WHERE name = 'audit_head'", (last["hash"],))
    db.close()
    assert "the registry's anchor is not authentic" in _verify(carrier)
    carrier.without_key_env()  # without the key only the chain and the anchor's values are checked
    assert "not authenticated: no registry key" in _verify(carrier)


def test_refused_commands_and_keyless_reads_append_nothing(carrier: Carrier) -> None:
    before = _log(carrier).read_bytes()
    assert carrier("add", "--case-id", "X" * 30).code == 2
    assert carrier("show", "w-000000").code == 2
    carrier.ok("audit", "show")
    carrier.ok("audit", "verify")
    carrier.ok("tap", "list")
    carrier.without_key_env()
    carrier.ok("list")
    assert _log(carrier).read_bytes() == before


def test_concurrent_commands_keep_one_chain(carrier: Carrier) -> None:
    """Real processes at once: the registry lock serialises them into one intact chain."""
    before = len(_lines(carrier))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mediation", "add", "-q", "--case-id", f"CASE-010{i}",
             "--agency", AGENCY, "--target", f"192.0.2.{100 + i}", "--content", "headers"],
            env={**os.environ, **carrier.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]  # fmt: skip
    handles = set()
    for proc in procs:
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        handles.add(out.strip())
    assert len(handles) == 4
    assert len(_lines(carrier)) == before + 4
    assert "intact" in _verify(carrier)
