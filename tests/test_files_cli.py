"""``mediate agency add --files DIR`` and the ``[files]`` configuration: accepted and refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_warrants_support import AGENCY, Carrier, error_line

from mediation.errors import UsageError
from mediation.server.config import FilesConfig
from mediation.server.config_file import parse_config


@pytest.fixture
def carrier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Carrier:
    carrier = Carrier(tmp_path, monkeypatch)
    carrier.setup()
    return carrier


def test_files_endpoint_is_registered_and_its_directory_made_private(carrier: Carrier) -> None:
    target = carrier.tmp / "capture" / "lea-1"
    out = carrier.ok("agency", "add", AGENCY, "--files", str(target) + "/", "--streams", "cmcc")
    assert f"endpoint 3: files {target} streams=cmcc" in out
    assert target.is_dir() and target.stat().st_mode & 0o777 == 0o700
    shown = json.loads(carrier.ok("agency", "show", AGENCY, "--json"))
    assert shown["endpoints"][-1] == f"files {target} streams=cmcc"
    # A directory is no case data: the warning names the agency's name only.
    err = carrier("agency", "add", AGENCY, "--files", str(target / "b")).err
    assert "case data on the command line (NAME):" in err
    carrier.ok("agency", "remove", AGENCY, "--endpoint", "4")
    assert len(json.loads(carrier.ok("agency", "show", AGENCY, "--json"))["endpoints"]) == 3


def test_each_refusal_is_one_line_naming_the_field_and_nothing_is_written(
    carrier: Carrier,
) -> None:
    loose = carrier.tmp / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    a_file = carrier.tmp / "a-file"
    a_file.write_text("x")
    taken = carrier.tmp / "taken"
    carrier.ok("agency", "add", "AGENCY-TEST-2", "--files", str(taken))
    cases = [
        (["--files", "capture"], "--files: must be an absolute path (starting with /)"),
        (["--files", "  "], "--files: must be a directory"),
        (["--files", str(a_file)], f"--files: {a_file} exists and is not a directory"),
        (["--files", str(loose)], f"--files: {loose} is open to others (mode 755); chmod 700 it"),
        (["--files", str(carrier.tmp / "x"), "--udp", "203.0.113.5:5555"], "--udp/--tls/--files"),
        (
            ["--files", str(carrier.tmp / "x"), "--fingerprint", "ab" * 32],
            "--fingerprint: only for --tls endpoints",
        ),
        (["--files", str(taken)], "--files: agency a-"),
    ]
    for extra, expected in cases:
        before = carrier.files()
        run = carrier("agency", "add", AGENCY, *extra)
        assert run.code == 2, (extra, run)
        assert expected in error_line(run), (extra, run.err)
        assert carrier.files() == before
    assert not (carrier.tmp / "x").exists()  # refused before the directory is made


def test_files_from_a_case_file(carrier: Carrier) -> None:
    target = carrier.tmp / "from-file"
    spec = carrier.tmp / "agency.toml"
    spec.write_text(f'name = "{AGENCY}"\nfiles = "{target}"\n')
    assert "files " in carrier.ok("agency", "add", "--from", str(spec))
    spec.write_text(f'name = "{AGENCY}"\nfiles = "relative"\n')
    assert f"{spec}: files: must be an absolute path" in error_line(
        carrier("agency", "add", "--from", str(spec))
    )


def test_files_config_defaults_and_limits() -> None:
    assert parse_config({}).files == FilesConfig(rotate_seconds=3600.0, rotate_bytes=64 * 2**20)
    config = parse_config({"files": {"rotate_seconds": 60, "rotate_bytes": 1 << 20}})
    assert config.files == FilesConfig(60.0, 1 << 20)
    for table, message in (
        (
            {"rotate_bytes": 100},
            "config [files] rotate_bytes: must be a whole number from 1024 to 1099511627776, "
            "got 100",
        ),
        (
            {"rotate_seconds": 0},
            "config [files] rotate_seconds: must be a number above 0 and at most 86400, got 0",
        ),
        ({"rotate": 1}, "config [files] rotate: unknown key (known: rotate_seconds, rotate_bytes)"),
    ):
        with pytest.raises(UsageError) as caught:
            parse_config({"files": table})
        assert str(caught.value) == message
