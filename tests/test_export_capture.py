"""An export of a real intercept: the sample capture through the tap core into a server.

The in-process server (``delivery_support.Site``) stores the warrant's PDUs
and writes its agency's capture files (``agency add --files``); then
``mediate export`` bundles both, and ``mediate verify`` finds it complete:
the bundle's pcap holds exactly the packets the tap sent, as the capture
files do.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
from pathlib import Path

import pytest
from delivery_support import TARGET, Site
from log_support import key_file
from taplink_support import SAMPLE, START
from test_delivery_files import config, files_endpoint, written

from mediation import pdu as P
from mediation.cli.main import main
from mediation.evidence.pcap import PcapReader
from mediation.log.keys import public_key_path
from mediation.tap.replay import Tap
from mediation.warrants.model import CaseDetails, ContentLevel, Target, TargetKind
from mediation.warrants.operations import add_warrant


def mediate(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue() + err.getvalue()


async def test_a_served_intercept_exports_with_its_capture_files_and_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = Site(tmp_path)
    capture = tmp_path / "capture"
    agency = site.agency("AGENCY-TEST-FILES", files_endpoint(capture))
    now = dt.datetime.now(dt.UTC)
    details = CaseDetails("CASE-TEST-0001", (Target(TargetKind.ADDRESS, TARGET),), (), "IAP-TEST")
    with site._registry() as registry:
        warrant = add_warrant(
            registry, agency, details, ContentLevel.FULL, START, now + dt.timedelta(days=1), now
        )
    tap = Tap.for_warrant(warrant)
    sent: list[bytes] = []
    async with site.server(config()) as server:
        with PcapReader.open(SAMPLE) as packets:
            for packet in packets:
                for item in tap.process(packet.data, packet.time):
                    assert await server.ingest(warrant.handle, item.kind, item.der, item.time)
                    if item.kind == "cmCC":
                        sent.append(P.decode(item.der).payload)
        await written(server)
    monkeypatch.setenv("MEDIATION_DATA_DIR", str(site.data))
    monkeypatch.setenv("MEDIATION_KEY_FILE", str(key_file(tmp_path, site.key)))
    bundle = tmp_path / "bundle"
    code, text = mediate("export", warrant.handle, "--out", str(bundle))
    assert code == 0, text
    copied = sorted(p.name for p in (bundle / "files" / "1").iterdir())
    assert "manifest.jsonl" in copied and "cmcc-00000000000000000000.pcap" in copied
    code, text = mediate("verify", str(bundle), "--key", str(public_key_path(site.data)))
    assert code == 0, text
    assert "COMPLETE" in text
    for pcap in (
        bundle / warrant.handle / "cmcc.pcap",
        bundle / "files" / "1" / "cmcc-00000000000000000000.pcap",
    ):
        with PcapReader.open(pcap) as reader:
            assert [p.data for p in reader] == sent and len(sent) > 10
