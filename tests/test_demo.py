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
    [case_dir] = (work / "agency" / "intercepts").iterdir()
    assert case_dir.name.startswith("w-")  # the opaque handle, never the case id

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
