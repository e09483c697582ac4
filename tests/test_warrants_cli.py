"""The carrier's commands end to end, in-process, on a real data directory.

Each refusal is checked to be one line naming the field, exit 2, and to
leave every file of the data directory byte for byte as it was.
"""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from test_warrants_support import (
    AGENCY,
    CASE,
    COURT_REF,
    TARGET_MAC,
    TARGET_V4,
    Carrier,
    error_line,
)

from mediation.lea.tls import make_agency_certificate
from mediation.warrants.authority import read_bundle


@pytest.fixture
def carrier(tmp_path, monkeypatch) -> Carrier:
    c = Carrier(tmp_path, monkeypatch)
    c.setup()
    return c


def test_add_prints_the_handle_first_then_state_and_server(carrier: Carrier) -> None:
    out = carrier.ok(
        "add", "--case-id", CASE, "--agency", AGENCY, "--target", TARGET_V4, "--content", "full"
    )
    lines = out.splitlines()
    assert lines[0].startswith("w-") and len(lines[0]) == 8
    assert lines[1].startswith("state: active, from ")
    assert "30 days after the start" in lines[2]
    assert lines[-1] == "server: not running; the change applies when it starts"
    quiet = carrier.ok(
        "add",
        "-q",
        "--case-id",
        "CASE-0002",
        "--agency",
        AGENCY,
        "--target",
        TARGET_V4,
        "--content",
        "headers",
        "--end",
        "2999-01-01",
    )
    assert len(quiet.splitlines()) == 1


def test_list_show_modify_remove(carrier: Carrier) -> None:
    handle = carrier.add("--tap", "edge-1", "--iap", "IAP-1")
    listing = carrier.ok("list")
    assert handle in listing and CASE in listing and AGENCY in listing and "active" in listing
    shown = json.loads(carrier.ok("show", handle, "--json"))
    assert shown["case_id"] == CASE and shown["court_ref"] == COURT_REF
    assert shown["targets"] == [TARGET_V4, "2001:db8::10", TARGET_MAC]
    assert shown["sources"] == ["tap:edge-1"] and shown["iap"] == "IAP-1"

    out = carrier.ok(
        "modify",
        handle,
        "--end",
        "2999-01-01T00:00:00Z",
        "--add-target",
        "198.51.100.0/24",
        "--remove-target",
        "02-00-5E-00-53-01",
    )
    assert out.splitlines()[0] == f"{handle} modified: end, targets"
    shown = json.loads(carrier.ok("show", handle, "--json"))
    assert shown["end"] == "2999-01-01T00:00:00Z"
    assert shown["targets"] == [TARGET_V4, "2001:db8::10", "198.51.100.0/24"]

    assert carrier.ok("remove", handle).startswith(f"{handle} removed")
    assert handle not in carrier.ok("list")
    assert f"{handle}  removed" in carrier.ok("list", "--all")
    assert json.loads(carrier.ok("show", handle, "--json"))["state"] == "removed"
    commands = [
        e["command"] for e in map(json.loads, carrier.ok("audit", "show", "--json").splitlines())
    ]
    assert commands == [
        "init",
        "agency add",
        "agency add",
        "tap register",
        "add",
        "list",
        "show",
        "modify",
        "show",
        "remove",
        "list",
        "list",
        "show",
    ]


def test_pending_warrant_and_an_agency_per_warrant(carrier: Carrier) -> None:
    carrier.ok("agency", "add", "AGENCY-TEST-2", "--udp", "[2001:db8::5]:5555")
    first = carrier.add("--start", "2999-01-01", "--end", "2999-02-01")
    # The same case identity and target for another agency is another warrant.
    second = carrier.ok(
        "add",
        "--case-id",
        CASE,
        "--agency",
        "AGENCY-TEST-2",
        "--target",
        TARGET_V4,
        "--content",
        "headers",
    ).splitlines()[0]
    assert first != second
    listing = carrier.ok("list", "--json")
    states = {w["handle"]: w["state"] for w in json.loads(listing)}
    assert states == {first: "pending", second: "active"}


def test_without_the_key_list_shows_handles_and_states_only(carrier: Carrier) -> None:
    handle = carrier.add()
    carrier.without_key_env()
    out = carrier.ok("list")
    assert handle in out and "active" in out
    assert CASE not in out and TARGET_V4 not in out and AGENCY not in out
    assert "no registry key" in out
    assert carrier.ok("agency", "list").split()[:2] == ["HANDLE", "WARRANTS"]
    assert "--key-file: no key file at" in error_line(carrier("show", handle))


def test_agency_and_tap_commands(carrier: Carrier) -> None:
    ca = make_agency_certificate(carrier.tmp / "agency").cert_path  # self-signed: its own CA
    out = carrier.ok(
        "agency", "add", "AGENCY-TEST-3", "--tls", "lea.example.net:6543", "--ca", str(ca)
    )
    assert "added: endpoint 1: tls lea.example.net:6543 streams=cmii,cmcc ca=" in out
    shown = json.loads(carrier.ok("agency", "show", AGENCY, "--json"))
    assert len(shown["endpoints"]) == 2
    carrier.ok("agency", "remove", AGENCY, "--endpoint", "203.0.113.5:5555")
    assert len(json.loads(carrier.ok("agency", "show", AGENCY, "--json"))["endpoints"]) == 1
    carrier.ok("agency", "remove", "AGENCY-TEST-3")
    assert "AGENCY-TEST-3" not in carrier.ok("agency", "list")

    bundle_path = carrier.tmp / "edge-1.tap"
    assert stat.S_IMODE(bundle_path.stat().st_mode) == 0o600
    bundle = read_bundle(bundle_path)
    cert = x509.load_pem_x509_certificate(bundle.certificate_pem.encode())
    ca_cert = x509.load_pem_x509_certificate((carrier.data / "ca" / "ca.pem").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=edge-1,OU=mediation-tap"
    assert isinstance(ca_cert.public_key(), ec.EllipticCurvePublicKey)
    cert.verify_directly_issued_by(ca_cert)
    # The tap verifies the server by the server CA, never by its own tap CA.
    assert bundle.server_ca_pem == (carrier.data / "ca" / "server-ca.pem").read_text()
    assert len(bundle.hmac_key) == 32 and bundle.server == "SET-ME:37002"
    assert "edge-1  registered" in carrier.ok("tap", "list")
    carrier.ok("tap", "revoke", "edge-1")
    assert "edge-1  revoked" in carrier.ok("tap", "list")


# Refusals -------------------------------------------------------------------

ADD = ["add", "--agency", AGENCY, "--content", "full"]
REFUSALS = [
    ([*ADD, "--case-id", "X" * 26, "--target", TARGET_V4], "--case-id: must be 1 to 25"),
    ([*ADD, "--target", TARGET_V4], "--case-id: required"),
    ([*ADD, "--case-id", "CASE-0009", "--target", "192.0.2.256"], "--target #1: is not an IPv4"),
    (
        [*ADD, "--case-id", "CASE-0009", "--target", "198.51.100.1/24"],
        "--target #1: prefix has host",
    ),
    ([*ADD, "--case-id", "CASE-0009"], "--target: required"),
    (
        [
            *ADD,
            "--case-id",
            "CASE-0009",
            "--target",
            TARGET_V4,
            "--start",
            "2999-02-01",
            "--end",
            "2999-01-01",
        ],
        "--end: must be after --start",
    ),
    (
        [*ADD, "--case-id", "CASE-0009", "--target", TARGET_V4, "--end", "2000-01-01"],
        "--end: is in the past",
    ),
    (
        [*ADD, "--case-id", "CASE-0009", "--target", TARGET_V4, "--end", "2999-01-01T00:00"],
        "--end: has no time zone",
    ),
    (
        [
            "add",
            "--agency",
            "NO-SUCH-AGENCY",
            "--case-id",
            "CASE-0009",
            "--target",
            TARGET_V4,
            "--content",
            "full",
        ],
        "--agency: no such agency",
    ),
    (
        [*ADD, "--case-id", "CASE-0009", "--target", TARGET_V4, "--tap", "edge-9"],
        "--tap #1: no tap",
    ),
    (
        [
            "add",
            "--agency",
            AGENCY,
            "--case-id",
            "CASE-0009",
            "--target",
            TARGET_V4,
            "--content",
            "all",
        ],
        "--content: must be headers",
    ),
    (
        [*ADD, "--case-id", "CASE-0009", "--target", TARGET_V4, "--iap", "X" * 16],
        "--iap: must be 1 to 15",
    ),
    (
        [*ADD, "--case-id", "CASE-0009", "--target", TARGET_V4, "--source", "udp:192.0.2.1"],
        "--source #1: must",
    ),
    (["agency", "add", "AGENCY-X", "--udp", "203.0.113.5:70000"], "--udp: port must be 1 to 65535"),
    (
        ["agency", "add", "AGENCY-X", "--tls", "203.0.113.5:0", "--fingerprint", "ab" * 32],
        "--tls: port must",
    ),
    (["agency", "add", "AGENCY-X", "--tls", "203.0.113.5:6543"], "--tls: needs the agency's CA"),
    (
        ["agency", "add", "AGENCY-X", "--tls", "203.0.113.5:6543", "--ca", "/nonexistent/ca.pem"],
        "--ca: cannot read",
    ),
    (
        ["agency", "add", "AGENCY-X", "--tls", "203.0.113.5:6543", "--fingerprint", "abc"],
        "--fingerprint: must be",
    ),
    (
        ["agency", "add", "AGENCY-X", "--udp", "203.0.113.5:5555", "--tls", "203.0.113.5:6543"],
        "--udp/--tls",
    ),
    (["agency", "add", AGENCY, "--udp", "203.0.113.5:5555"], "--udp: agency a-"),
    (["agency", "remove", AGENCY], "NAME: still named by w-"),
    (
        ["tap", "register", "edge-1", "--out", "/tmp/never-written.tap"],
        "NAME: a tap by that name exists",
    ),
    (["tap", "register", "bad name"], "NAME: must be 1 to 63"),
    (["tap", "revoke", "edge-9"], "NAME: no tap by that name"),
    (["show", "w-000000"], "HANDLE: no warrant w-000000"),
    (["show", "CASE-0001"], "HANDLE: must be a handle"),
    (["modify", "w-000000", "--end", "2999-01-01"], "HANDLE: no warrant w-000000"),
    (["init"], "--data-dir: "),
    (
        ["list", "--data-dir", "/nonexistent/mediation"],
        "--data-dir: /nonexistent/mediation holds no",
    ),
]


@pytest.mark.parametrize(("argv", "expected"), REFUSALS, ids=[r[1] for r in REFUSALS])
def test_refusals_name_the_field_and_write_nothing(
    carrier: Carrier, argv: list[str], expected: str
) -> None:
    carrier.add()  # so that duplicates, removal of a used agency, ... have something to hit
    before = carrier.files()
    run = carrier(*argv)
    assert run.code == 2, run
    assert expected in error_line(run)
    assert CASE not in run.err and "192.0.2.256" not in run.err
    assert carrier.files() == before
    assert not Path("/tmp/never-written.tap").exists()


def test_refusals_that_need_an_existing_warrant(carrier: Carrier) -> None:
    handle = carrier.add()
    cases = [
        (
            [*ADD, "--case-id", CASE, "--target", "192.0.2.99"],
            f"--case-id: already used for this agency by {handle}",
        ),
        (["modify", handle], "modify: nothing would change"),
        (["modify", handle, "--end", "2000-01-01"], "--end: must be after --start"),
        (
            ["modify", handle, "--remove-target", "192.0.2.99"],
            "--remove-target #1: is not a target",
        ),
        (
            ["modify", handle, "--target", "192.0.2.99", "--remove-target", "192.0.2.99"],
            "would leave no target",
        ),
    ]
    for argv, expected in cases:
        before = carrier.files()
        run = carrier(*argv)
        assert (run.code, expected in error_line(run)) == (2, True), (argv, run.err)
        assert carrier.files() == before
    carrier.ok("remove", handle)
    before = carrier.files()
    for argv in (["remove", handle], ["modify", handle, "--end", "2999-01-01"]):
        assert "HANDLE: " in error_line(carrier(*argv))
    assert carrier.files() == before
    # Once removed, the case identity is free for a new warrant.
    assert carrier.add().startswith("w-")


def test_wrong_key_and_loose_key_file_are_refused(carrier: Carrier, tmp_path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    other_key = other / "other.key"
    carrier.ok("init", "--data-dir", str(other / "data"), "--key-file", str(other_key))
    run = carrier("list", "--key-file", str(other_key))
    assert "--key-file: this key file does not open the registry in" in error_line(run)
    carrier.key.chmod(0o644)
    run = carrier("list")
    assert "is readable by others (mode 0644); run: chmod 600" in error_line(run)


def test_refused_times_relative_to_now(carrier: Carrier) -> None:
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    handle = carrier.add("--start", soon)
    assert json.loads(carrier.ok("show", handle, "--json"))["state"] == "pending"
