"""The main job (`./dev demo`) end to end: what the agency ends up holding."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mediation import pdu as P
from mediation.evidence.pcap import PcapReader

SAMPLE_TARGET_FRAMES = 22  # fixtures/sample/sample.json: target_indices


def test_demo_delivers_the_whole_intercept(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    env = {**os.environ, "MEDIATION_DEMO_DIR": str(work)}
    done = subprocess.run(
        [sys.executable, "-m", "mediation.demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The carrier gave its case data in files: never in argv, so never warned about.
    commands = [line for line in done.stdout.splitlines() if line.startswith("$ mediate ")]
    assert any("add --from" in c for c in commands)
    assert not any("DEMO-CASE-0001" in c or "02:00:5e:00:53:01" in c for c in commands)
    assert "mediate: warning" not in done.stdout
    assert not list((work / "carrier").iterdir())  # the case files are removed after use
    intercepts = work / "agency" / "intercepts"
    [case_dir] = [p for p in intercepts.iterdir() if p.is_dir()]
    assert case_dir.name.startswith("w-")  # the opaque handle, never the case id
    # UDP went sealed under the key the carrier handed over (mode 0600, as tap bundles);
    # the receiver kept its replay state beside the cases.
    assert (work / "agency" / "udp-key.toml").stat().st_mode & 0o777 == 0o600
    sessions = json.loads((intercepts / "udp-sessions.json").read_text())
    assert sessions["sessions"] and sessions["sessions"][0]["highest"] > 0

    gaps = json.loads((case_dir / "gaps.json").read_text())
    text = json.dumps(gaps)
    assert "DEMO-CASE-0001" not in text
    for stream in ("cmII", "cmCC"):
        [entry] = [v for k, v in gaps["streams"].items() if k.endswith(stream)]
        assert entry["missing"] == [] and entry["held"] > 0, entry

    # Every envelope the agency stored decodes; CC is all the target's IP packets.
    cc = [m for _o, m in P.decode_all((case_dir / "cmcc.raw").read_bytes())]
    assert len(cc) == SAMPLE_TARGET_FRAMES
    assert [m.sequence_number for m in cc] == list(range(SAMPLE_TARGET_FRAMES))
    assert {m.content.header.correlation_info.case_id for m in cc} == {"DEMO-CASE-0001"}
    cmii = [m for _o, m in P.decode_all((case_dir / "cmii.raw").read_bytes())]
    notices = [m.content.event for m in cmii if isinstance(m.content, P.CompletenessNotice)]
    assert P.CompletenessEvent.WARRANT_ACTIVE in notices
    reports = [m for m in cmii if isinstance(m.content, P.HeaderReport)]
    assert len(reports) == SAMPLE_TARGET_FRAMES

    # A real receiver reads the content; the hashes check.
    if shutil.which("tcpdump"):
        read = subprocess.run(
            ["tcpdump", "-nn", "-r", str(case_dir / "cmcc.pcap")],
            capture_output=True,
            text=True,
            check=True,
        )
        assert len(read.stdout.splitlines()) == SAMPLE_TARGET_FRAMES
    else:
        pytest.skip("tcpdump is not installed")
    for sums in case_dir.glob("*.sha256"):
        subprocess.run(["sha256sum", "-c", sums.name], cwd=case_dir, check=True)
    assert "ok" in done.stdout.split("mediate log verify")[-1]
    # The agency's own check against the checkpoints the server sent in-band.
    verified = done.stdout.split("$ mediate receive verify")[-1]
    for stream in ("cmii", "cmcc"):
        assert f"{case_dir.name}/{stream}: " in verified
    assert verified.count("ok: all verified") == 2, verified
    assert_exported_for_court(work, case_dir, tmp_path / "bundle")
    assert_nothing_in_clear(work / "mediation")


def assert_exported_for_court(work: Path, case_dir: Path, bundle: Path) -> None:
    """The carrier's export of the warrant verifies with the agency's copy of the key,
    and holds exactly the packets the agency received (docs/evidence-log.md)."""
    env = {
        **os.environ,
        "MEDIATION_DATA_DIR": str(work / "mediation"),
        "MEDIATION_KEY_FILE": str(work / "registry.key"),
    }

    def mediate(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "mediation", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    key = bundle.parent / "server-log.pub"
    key.write_text(mediate("log", "key").stdout)
    done = mediate("export", case_dir.name, "--out", str(bundle))
    assert done.returncode == 0, done.stderr
    done = mediate("verify", str(bundle), "--key", str(key))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "COMPLETE" in done.stdout
    exported = PcapReader.open(bundle / case_dir.name / "cmcc.pcap")
    received = PcapReader.open(case_dir / "cmcc.pcap")
    with exported, received:
        assert [p.data for p in exported] == [p.data for p in received]


# What the demo's warrant and traffic identify (mediation/demo.py, fixtures/sample).
CASE_SECRETS = {
    "case id": [b"DEMO-CASE-0001"],
    "IAP id": [b"DEMO-IAP"],
    "court reference": [b"DEMO-ORDER-1"],
    "target MAC": [b"02:00:5e:00:53:01", b"02-00-5e-00-53-01", b"02005e005301"],
    "target MAC (binary)": [bytes.fromhex("02005e005301")],
    "target address": [b"192.0.2.10"],
}


def assert_nothing_in_clear(data_dir: Path) -> None:
    """No file of a copy of the data directory reveals the case (docs/confidentiality.md)."""
    files = [path for path in data_dir.rglob("*") if path.is_file()]
    assert any(path.suffix == ".seg" for path in files)  # the evidence log is there
    for path in files:
        data = path.read_bytes()
        for what, needles in CASE_SECRETS.items():
            for needle in needles:
                found = needle in data or (needle.isascii() and needle.lower() in data.lower())
                assert not found, f"{path.relative_to(data_dir)} holds the {what} in clear"
