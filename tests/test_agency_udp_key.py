"""The UDP endpoint's key: created at `agency add --udp`, handed over as a file, written again.

In-process on a real data directory (``Carrier``). Each refusal is one
line naming the field, and leaves the data directory as it was.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from test_warrants_support import AGENCY, AGENCY_HOST, Carrier, error_line

from mediation.warrants.keys import read_key_file as read_registry_key
from mediation.warrants.registry import WarrantRegistry
from mediation.warrants.udpkey import read_key_file


@pytest.fixture
def carrier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Carrier:
    c = Carrier(tmp_path, monkeypatch)
    c.ok("init")
    return c


def stored_key(carrier: Carrier, port: int) -> tuple[int | None, bytes | None]:
    """The key the registry holds for the agency's UDP endpoint on ``port``."""
    with WarrantRegistry.open(carrier.data) as registry:
        registry.unlock(read_registry_key(carrier.key))
        [agency] = registry.agencies()
    assert agency.details is not None
    [endpoint] = [e for e in agency.details.endpoints if e.port == port]
    return endpoint.udp_key_id, endpoint.udp_key


def test_add_creates_the_key_and_writes_it_for_the_agency(carrier: Carrier, tmp_path) -> None:
    out_file = tmp_path / "lea" / "udp.toml"
    out_file.parent.mkdir()
    out = carrier.ok(
        "agency", "add", AGENCY, "--udp", f"{AGENCY_HOST}:5555", "--udp-key-out", str(out_file)
    )
    assert f"udp key: {out_file} (mode 0600)" in out
    assert out_file.stat().st_mode & 0o777 == 0o600
    text = out_file.read_text()
    assert text.startswith("# mediation UDP delivery key")
    key_id, key = read_key_file(out_file)
    assert (key_id, key) == stored_key(carrier, 5555)
    assert tomllib.loads(text)["agency"].startswith("a-")
    assert f"key={key_id:08x}" in out  # the id is shown, never the key
    assert key.hex() not in carrier.ok("agency", "show", AGENCY)
    assert key.hex() not in carrier.ok("agency", "list")
    for content in carrier.files().values():  # sealed in the registry, like tap keys
        assert key not in content and key.hex().encode() not in content


def test_add_writes_the_key_by_default_beside_the_command(carrier: Carrier) -> None:
    out = carrier.ok("agency", "add", AGENCY, "--udp", f"{AGENCY_HOST}:5555")
    key_id, key = stored_key(carrier, 5555)
    [written] = list(Path.cwd().glob("udp-key-a-*.toml"))
    assert written.name.endswith(f"-{key_id:08x}.toml") and str(written.name) in out
    assert read_key_file(written) == (key_id, key)


def test_add_refuses_an_existing_key_file_before_registering(carrier: Carrier, tmp_path) -> None:
    existing = tmp_path / "taken.toml"
    existing.write_text("keep me")
    before = carrier.files()
    run = carrier(
        "agency", "add", AGENCY, "--udp", f"{AGENCY_HOST}:5555", "--udp-key-out", str(existing)
    )
    assert run.code == 2
    assert error_line(run).startswith("mediate: error: --udp-key-out: ")
    assert "exists" in error_line(run)
    assert carrier.files() == before and existing.read_text() == "keep me"
    fingerprint = "ab" * 32
    run = carrier(
        "agency", "add", AGENCY, "--tls", f"{AGENCY_HOST}:6543", "--fingerprint", fingerprint,
        "--udp-key-out", str(tmp_path / "k.toml"),
    )  # fmt: skip
    assert error_line(run) == "mediate: error: --udp-key-out: only with --udp"


def test_udp_key_writes_the_same_key_again_or_a_new_one(carrier: Carrier, tmp_path) -> None:
    carrier.ok("agency", "add", AGENCY, "--udp", f"{AGENCY_HOST}:5555")
    first = stored_key(carrier, 5555)
    again = tmp_path / "again.toml"
    out = carrier.ok("agency", "udp-key", AGENCY, "--out", str(again))
    assert read_key_file(again) == first and "new UDP key" not in out
    run = carrier("agency", "udp-key", AGENCY, "--out", str(again))
    assert error_line(run).startswith("mediate: error: --out: ") and "exists" in run.err
    renewed = tmp_path / "renewed.toml"
    out = carrier.ok("agency", "udp-key", AGENCY, "--out", str(renewed), "--new")
    assert "new UDP key" in out
    assert read_key_file(renewed) == stored_key(carrier, 5555) != first
    trail = (carrier.data / "audit" / "audit.log").read_text()
    assert trail.count('"agency udp-key"') == 2  # handing a key out is audited too
    assert first[1].hex() not in trail  # type: ignore[union-attr]


def test_udp_key_refuses_what_it_cannot_choose(carrier: Carrier, tmp_path) -> None:
    carrier.ok("agency", "add", AGENCY, "--tls", f"{AGENCY_HOST}:6543", "--fingerprint", "ab" * 32)
    out = str(tmp_path / "k.toml")
    run = carrier("agency", "udp-key", AGENCY, "--out", out)
    assert error_line(run).startswith("mediate: error: --endpoint: ")
    assert "no UDP endpoint" in run.err
    carrier.ok("agency", "add", AGENCY, "--udp", f"{AGENCY_HOST}:5555")
    carrier.ok("agency", "add", AGENCY, "--udp", f"{AGENCY_HOST}:5556")
    run = carrier("agency", "udp-key", AGENCY, "--out", out)
    assert "several UDP endpoints" in error_line(run)
    carrier.ok("agency", "udp-key", AGENCY, "--out", out, "--endpoint", f"{AGENCY_HOST}:5556")
    assert read_key_file(Path(out)) == stored_key(carrier, 5556) != stored_key(carrier, 5555)
    run = carrier("agency", "udp-key", "AGENCY-NOBODY", "--out", str(tmp_path / "x.toml"))
    assert error_line(run).startswith("mediate: error: NAME: no such agency")
