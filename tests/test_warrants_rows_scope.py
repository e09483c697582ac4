"""mediation/warrants/rows.py: case details to JSON and back, scoped targets included."""

from __future__ import annotations

from mediation.warrants.model import CaseDetails, Target, TargetKind
from mediation.warrants.rows import case_from_json, case_to_json


def test_unscoped_targets_keep_the_two_element_form() -> None:
    details = CaseDetails("CASE-TEST-0001", (Target(TargetKind.ADDRESS, "192.0.2.10"),))
    data = case_to_json(details)
    assert data["targets"] == [["address", "192.0.2.10"]]
    assert case_from_json(data) == details


def test_scoped_targets_round_trip() -> None:
    targets = (
        Target(TargetKind.ADDRESS, "192.0.2.10", vlan=100),
        Target(TargetKind.MAC, "02:00:5e:00:53:01", interface="eth1"),
        Target(TargetKind.PREFIX, "198.51.100.0/24", vlan=0, interface="eth1"),
    )
    details = CaseDetails("CASE-TEST-0001", targets)
    assert case_from_json(case_to_json(details)) == details


def test_details_written_before_scoping_still_load() -> None:
    old = {
        "case_id": "CASE-TEST-0001",
        "targets": [["address", "192.0.2.10"], ["mac", "02:00:5e:00:53:01"]],
        "sources": [],
        "iap": None,
        "court_ref": None,
        "notes": None,
    }
    details = case_from_json(old)
    assert [t.scoped for t in details.targets] == [False, False]
    assert str(details.targets[0]) == "192.0.2.10"


def test_scoped_targets_through_mediate_add_modify_and_show(tmp_path, monkeypatch) -> None:
    import json

    from test_warrants_support import AGENCY, Carrier

    carrier = Carrier(tmp_path, monkeypatch)
    carrier.setup()
    handle = carrier.add("--target", "192.0.2.20@vlan:100@iface:eth1")
    shown = json.loads(carrier.ok("show", handle, "--json"))
    assert "192.0.2.20@vlan:100@iface:eth1" in shown["targets"]
    carrier.ok("modify", handle, "--remove-target", "192.0.2.20@vlan:100@iface:eth1",
               "--add-target", "192.0.2.20@vlan:200")  # fmt: skip
    shown = json.loads(carrier.ok("show", handle, "--json"))
    assert "192.0.2.20@vlan:200" in shown["targets"]
    assert not any("vlan:100" in t for t in shown["targets"])
    refused = carrier("add", "--case-id", "CASE-TEST-0002", "--agency", AGENCY,
                      "--target", "192.0.2.20@vlan:5000")  # fmt: skip
    assert refused.code == 2 and "--target #1: @vlan: must be a VLAN id" in refused.err
